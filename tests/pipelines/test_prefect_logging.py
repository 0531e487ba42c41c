"""The temporary Prefect server's shutdown traceback stays off the terminal; nothing else does."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pipelines
from pipelines import ServerShutdownNoise


def _record(name: str, exc: BaseException | None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, "Exception during reset or similar", None, info)


def test_only_the_pools_cancelled_reset_is_dropped() -> None:
    noise = ServerShutdownNoise()
    assert not noise.filter(_record("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", asyncio.CancelledError()))
    assert noise.filter(_record("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", ValueError("disk full")))
    assert noise.filter(_record("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", None))
    assert noise.filter(_record("prefect.server", asyncio.CancelledError()))


def test_a_process_on_prefects_logging_settings_prints_every_error_but_the_shutdown_noise(tmp_path: Path) -> None:
    """What the temporary server does: a fresh process, no handlers of its own, Prefect's logging
    from PREFECT_LOGGING_SETTINGS_PATH. Its stderr keeps a real pool error and loses the cancel."""
    settings = pipelines._logging_settings()
    assert settings is not None and settings.exists()
    script = textwrap.dedent("""
        import asyncio, logging
        from prefect.logging.configuration import setup_logging
        setup_logging()  # what the server's app factory does first: Prefect's logging from the settings path
        pool = logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool")
        for exc in (asyncio.CancelledError(), ValueError("a real pool error")):
            try:
                raise exc
            except BaseException:
                pool.error("Exception during reset or similar", exc_info=True)
    """)
    env = {**os.environ, pipelines.LOGGING_SETTINGS: str(settings), "PREFECT_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "a real pool error" in proc.stderr
    assert "CancelledError" not in proc.stderr


def test_the_users_own_logging_configuration_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert pipelines._logging_settings() is not None
    (tmp_path / "logging.yml").write_text("version: 1\n")
    assert pipelines._logging_settings() is None
    monkeypatch.setenv(pipelines.LOGGING_SETTINGS, str(tmp_path / "logging.yml"))
    for key in pipelines.PREFECT_DEFAULTS:
        monkeypatch.setenv(key, os.environ.get(key, "x"))
    assert pipelines.LOGGING_SETTINGS not in pipelines.prefect_defaults()
