"""MLflow tracking and registry: the only part of supsup-fin that imports MLflow."""

from __future__ import annotations

import logging

from mlflow.environment_variables import MLFLOW_CONFIGURE_LOGGING
from mlflow.utils import logging_utils

from supsup_fin.tracking.model import forecasts_from_payload, payload
from supsup_fin.tracking.registry import CHALLENGER, CHAMPION, Decision, load_champion
from supsup_fin.tracking.runs import RunRecord, log_forecasts, log_retrain
from supsup_fin.tracking.store import connect, tracking_uri

__all__ = [
    "CHALLENGER", "CHAMPION", "Decision", "RunRecord", "connect", "forecasts_from_payload",
    "load_champion", "log_forecasts", "log_retrain", "payload", "tracking_uri",
]


class _EventLog:
    """A stream for MLflow's event lines ("Created version ...") that writes them to the ``mlflow`` logger."""

    def write(self, text: str) -> None:
        if text.strip():
            logging.getLogger("mlflow").info(text.strip())

    def flush(self) -> None:
        pass


def mlflow_logs_to_handlers() -> None:
    """Send MLflow's records and its printed event lines through logging's root handlers (the
    command line's log file) instead of MLflow's own stderr handler. Done on import when
    ``MLFLOW_CONFIGURE_LOGGING`` is off (the command line turns it off before MLflow is imported)."""
    own = logging.getLogger("mlflow")
    own.handlers.clear()
    own.propagate = True
    logging_utils.MLFLOW_LOGGING_STREAM = _EventLog()


if not MLFLOW_CONFIGURE_LOGGING.get():
    mlflow_logs_to_handlers()
