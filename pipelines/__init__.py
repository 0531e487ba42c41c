"""Prefect flows around the supsup_fin library: with the CLI, the only place that imports Prefect.

Importing this package changes nothing. Whatever starts a flow (the CLI, a script, a test
session) calls :func:`prefect_defaults` first, *before* Prefect is imported: Prefect 3 reads its
settings from the environment once, when ``prefect`` is first imported (``prefect.context``
builds its global settings then), so a variable set afterwards reaches only subprocesses.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

PREFECT_DEFAULTS: dict[str, str] = {
    # offline: no telemetry from the temporary local server (otherwise it logs errors)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # ...and none from the client either (it also prints a notice on a terminal's first run)
    "DO_NOT_TRACK": "1",
    # the temporary server's first start (database migrations) can take ~15 s of Prefect's default 20
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # library log records go through Prefect's handlers too (and so into the flow-run logs)
    "PREFECT_LOGGING_EXTRA_LOGGERS": "supsup_fin",
    # ...and the library also logs outside flow runs (CLI commands, notebooks): no API warning then
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def prefect_defaults() -> dict[str, str]:
    """Set quiet, offline-friendly Prefect settings in ``os.environ`` unless already chosen.

    Call it where a flow is started, before anything imports ``prefect``; subprocesses (a
    Prefect server, Dask workers, deployment runs) inherit the variables.

    Returns
    -------
    The variables this call set (name -> value); those the user had set are left alone.
    """
    applied = {k: v for k, v in PREFECT_DEFAULTS.items() if k not in os.environ}
    if applied and "prefect" in sys.modules:
        log.warning("Prefect was imported before prefect_defaults(): this process keeps the settings it read "
                    "then; only subprocesses see %s", sorted(applied))
    os.environ.update(applied)
    return applied
