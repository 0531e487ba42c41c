"""Headless Chromium for the tests that check what a person sees (tearsheet, MLflow UI).

Playwright drives the system's Chromium (``/usr/bin/chromium`` or ``$SUPSUP_FIN_CHROMIUM``): its own
browser download is not used. Without a browser the tests are skipped, unless
``SUPSUP_FIN_REQUIRE_BROWSER=1`` (set by CI, which installs one), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
"""Flags for a machine with a closed network: without the background-networking ones Chromium
keeps opening connections that are refused."""


def chromium_path() -> str | None:
    """The Chromium executable, or None."""
    return os.environ.get("SUPSUP_FIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_missing() -> str | None:
    if chromium_path() is None:
        return "no Chromium (install Debian's chromium, or set SUPSUP_FIN_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


_MISSING = _browser_missing()
if _MISSING and os.environ.get("SUPSUP_FIN_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"SUPSUP_FIN_REQUIRE_BROWSER=1 but {_MISSING}")

skip_without_browser = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
"""Marks a test that needs the headless browser."""


@contextmanager
def open_page(url: str, timeout_s: float = 30.0, wait_until: str = "load") -> Iterator[Any]:
    """A Playwright ``Page`` on ``url`` in a fresh headless Chromium profile, closed afterwards.

    ``wait_until``: Playwright's load state to wait for (``load``, ``domcontentloaded``, ``networkidle``).
    """
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url, wait_until=wait_until)
            yield page
        finally:
            context.close()


def images_loaded(page: Any) -> tuple[int, int]:
    """``(loaded, total)``: how many of the page's ``<img>`` elements decoded to a non-empty image."""
    return tuple(page.evaluate(
        "() => { const imgs = Array.from(document.images);"
        " return [imgs.filter(i => i.complete && i.naturalWidth > 0).length, imgs.length]; }"))
