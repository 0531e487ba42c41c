"""Prefect flows around the supsup_fin library: with the CLI, the only place that imports Prefect.

Importing this package changes nothing. Whatever starts a flow (the CLI, a script, a test
session) calls :func:`prefect_defaults` first, *before* Prefect is imported: Prefect 3 reads its
settings from the environment once, when ``prefect`` is first imported (``prefect.context``
builds its global settings then), so a variable set afterwards reaches only subprocesses.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

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


LOGGING_SETTINGS = "PREFECT_LOGGING_SETTINGS_PATH"
"""Set by :func:`prefect_defaults` to Prefect's logging configuration plus :class:`ServerShutdownNoise`."""


class ServerShutdownNoise(logging.Filter):
    """Drops the traceback a temporary Prefect server prints when it is stopped mid-query.

    A flow run without ``PREFECT_API_URL`` talks to a temporary server, a subprocess that shares
    the terminal's stderr and is stopped (SIGTERM) when the process exits. Stopped while its
    services hold a database connection, it cancels them and SQLAlchemy's pool logs "Exception
    during reset or similar" with the ``CancelledError`` as an error: a page of traceback after a
    command that succeeded. Only that record is dropped; every other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.name.startswith("sqlalchemy.pool") and type(exc).__name__ == "CancelledError")


def prefect_defaults() -> dict[str, str]:
    """Set quiet, offline-friendly Prefect settings in ``os.environ`` unless already chosen.

    Call it where a flow is started, before anything imports ``prefect``; subprocesses (a
    Prefect server, Dask workers, deployment runs) inherit the variables. Besides
    :data:`PREFECT_DEFAULTS` it points ``PREFECT_LOGGING_SETTINGS_PATH`` at Prefect's own logging
    configuration with :class:`ServerShutdownNoise` on its console handler, unless the user has
    a logging configuration of their own (that variable, or ``$PREFECT_HOME/logging.yml``).

    Returns
    -------
    The variables this call set (name -> value); those the user had set are left alone.
    """
    applied = {k: v for k, v in PREFECT_DEFAULTS.items() if k not in os.environ}
    if LOGGING_SETTINGS not in os.environ:
        quiet = _logging_settings()
        if quiet is not None:
            applied[LOGGING_SETTINGS] = str(quiet)
    if applied and "prefect" in sys.modules:
        log.warning("Prefect was imported before prefect_defaults(): this process keeps the settings it read "
                    "then; only subprocesses see %s", sorted(applied))
    os.environ.update(applied)
    return applied


def _logging_settings() -> Path | None:
    """Prefect's default logging configuration with :class:`ServerShutdownNoise` on the console
    handler, written once to the temporary directory (named by its content); ``None`` where the
    user has their own, or it cannot be read or written. Prefect is located, not imported."""
    import yaml

    spec = importlib.util.find_spec("prefect")
    prefect_home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    if spec is None or not spec.submodule_search_locations or (prefect_home / "logging.yml").exists():
        return None
    try:
        config = yaml.safe_load((Path(spec.submodule_search_locations[0]) / "logging" / "logging.yml").read_text())
        console = config["handlers"]["console"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    config.setdefault("filters", {})["supsup_fin_server_shutdown"] = {"()": f"{__name__}.ServerShutdownNoise"}
    console["filters"] = [*console.get("filters", []), "supsup_fin_server_shutdown"]
    text = yaml.safe_dump(config, sort_keys=False)
    user = getattr(os, "getuid", lambda: "user")()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"supsup_fin-{user}" / f"prefect-logging-{digest}.yml"
    if not path.exists():
        from supsup_fin._atomic import atomic_write_bytes

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, text.encode())
        except OSError:
            return None
    return path
