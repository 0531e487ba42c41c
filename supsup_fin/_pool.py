"""A process pool whose workers behave like the parent: their log records reach the parent's
handlers and their warnings obey the parent's filters.

Spawned workers start with an unconfigured ``logging`` (their warnings would go to stderr, past
the log file and ``--verbose``) and default warning filters (a warning the parent treats as an
error would pass). Each worker here sends every record at the parent's level through a queue; a
thread of the parent hands it to the logger of the same name, where the parent's own handlers,
levels and filters decide. The workers copy the parent's warning filters when they start.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


class _ToNamedLogger(logging.Handler):
    """Hands a worker's record to the parent's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _start_worker(queue: Any, level: int, filters: list) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(level)
    warnings.filters[:] = filters


def _parent_level() -> int:
    """The most verbose level any of the parent's handlers would see from this package."""
    return min(logging.getLogger("supsup_fin").getEffectiveLevel(), logging.getLogger().getEffectiveLevel())


def worker_count(wanted: int | None, tasks: int) -> int:
    """``wanted`` processes (``None``: one per CPU), never more than ``tasks``, at least 1."""
    return max(1, min(wanted or os.cpu_count() or 1, tasks))


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A ``spawn`` pool of ``workers`` processes that log and warn as this process does."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    listener = logging.handlers.QueueListener(queue, _ToNamedLogger(), respect_handler_level=False)
    listener.start()
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                 initargs=(queue, _parent_level(), list(warnings.filters))) as pool:
            yield pool
    finally:
        listener.stop()
        queue.close()
        queue.join_thread()
