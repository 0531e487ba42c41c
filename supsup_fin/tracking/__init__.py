"""MLflow tracking and registry: the only part of supsup-fin that imports MLflow."""

from __future__ import annotations

from supsup_fin.tracking.model import forecasts_from_payload, payload
from supsup_fin.tracking.registry import CHALLENGER, CHAMPION, Decision, load_champion
from supsup_fin.tracking.runs import RunRecord, log_forecasts, log_retrain
from supsup_fin.tracking.store import connect, tracking_uri

__all__ = [
    "CHALLENGER", "CHAMPION", "Decision", "RunRecord", "connect", "forecasts_from_payload",
    "load_champion", "log_forecasts", "log_retrain", "payload", "tracking_uri",
]
