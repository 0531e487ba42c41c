"""Progress of long work, reported by the library and shown by whoever listens.

The library calls :func:`report`; the CLI installs a listener (a progress bar on stderr) with
:func:`listening`. With no listener, progress goes to the debug log only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Listener = Callable[[str, int, int, str], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def report(stage: str, done: int, total: int, info: str = "") -> None:
    """Say that ``done`` of ``total`` units of ``stage`` are finished."""
    log.debug("%s: %d/%d %s", stage, done, total, info)
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        fn(stage, done, total, info)


@contextmanager
def listening(fn: Listener) -> Iterator[None]:
    """Send every :func:`report` to ``fn`` while the block runs."""
    with _lock:
        _listeners.append(fn)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(fn)
