"""Run hmmlearn fits on any thread without changing state a fit on another thread can see.

The retrain flow fits its markets' HMMs on a thread pool. Two things a fit would naturally do
are process-wide: Python's warning filters (``warnings.catch_warnings`` swaps them for the
whole process and is not thread-safe before Python 3.14) and BLAS thread pools. So:

- hmmlearn's log lines ("Model is not converging", ...) go to the fitting thread's own list
  through a log filter installed once, and numpy's floating-point errors through numpy's
  per-thread error state; no warning filter is touched. (scikit-learn's one k-means warning,
  fewer distinct rows than clusters, is prevented by the fit refusing such data.)
- BLAS is held at one thread by a counted limit: set when the first fit starts, restored when
  the last one ends. OpenMP's count is per thread, so each fitting thread limits its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

T = TypeVar("T")


class _HmmlearnCapture(logging.Filter):
    """Diverts hmmlearn log records of threads currently inside :func:`captured` to a list."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        sink: list[str] | None = getattr(self.local, "sink", None)
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


_CAPTURE = _HmmlearnCapture()
_HMMLEARN_LOGGERS = ("hmmlearn.base", "hmmlearn.hmm", "hmmlearn._emissions", "hmmlearn._utils")
_install_lock = threading.Lock()
_installed = False


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Collect the hmmlearn log messages and numpy floating-point errors of this thread inside the block.

    Other threads are unaffected: the log filter diverts only the records of threads inside a
    block, and numpy's error state (``np.errstate``) is per thread.
    """
    global _installed
    with _install_lock:
        if not _installed:
            for name in _HMMLEARN_LOGGERS:
                logging.getLogger(name).addFilter(_CAPTURE)
            _installed = True
    sink: list[str] = []

    def numpy_error(kind: str, _flag: int) -> None:
        sink.append(f"numpy: {kind} encountered")

    previous = getattr(_CAPTURE.local, "sink", None)
    _CAPTURE.local.sink = sink
    try:
        with np.errstate(divide="call", over="call", invalid="call", call=numpy_error):
            yield sink
    finally:
        _CAPTURE.local.sink = previous


def _in_own_thread(fn: Callable[[], T]) -> T:
    """``fn()``, run in a thread that ends when it returns.

    threadpoolctl lets only the thread that set an OpenBLAS limit change it while that thread
    lives (other threads' calls do nothing); a thread that has ended holds nothing, so the last
    fit to end can restore what the first one set, whichever threads they ran on.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


class _CountedBlasLimit:
    """BLAS at one thread while at least one fit runs in the process, restored when the last ends.

    BLAS thread pools are process-wide: fits that each limited and restored them on their own
    restored in the wrong order when they interleaved (A starts, B starts, A ends, B ends left
    one thread for good). Here the first fit to start sets the limit and the last to end
    restores the counts found then, under a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._limit: threadpool_limits | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._limit = _in_own_thread(lambda: threadpool_limits(limits=1, user_api="blas"))
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._limit is not None:
                _in_own_thread(self._limit.restore_original_limits)
                self._limit = None


_BLAS_LIMIT = _CountedBlasLimit()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS (process-wide, counted) and this thread's OpenMP at one thread for the block.

    EM on [n, 2] data gains nothing from threads, and the OpenMP threads of hmmlearn's k-means
    initialisation contending with BLAS threads made fits 10-30x slower on a 2-core machine
    (measured: 11 s instead of 0.4 s).
    """
    with _BLAS_LIMIT, threadpool_limits(limits=1, user_api="openmp"):
        yield
