"""The alerts table: what the monitoring checks found, each finding stored once.

An alert is a dict ``{"kind", "market", "model_version", "as_of", "value", "threshold",
"message"}`` (``kind`` names the check, e.g. ``worse_than_prior``; ``as_of`` the last date the
check read; ``value`` what it measured against ``threshold``), with an optional ``check`` naming
the item of a check that looks at several (an input feature of a drift check).

``<workspace>/monitor/alerts.parquet`` keeps one row per (kind, market, model_version, as_of,
check), with the UTC time it was raised: a check that fires again on the same data raises
nothing new. Appending is idempotent, atomic and serialised across processes by a lock file beside
the table, like the forecasts table's. :func:`raise_alerts` hands the new alerts to a ``notify``
callable (the flows publish them as Prefect events and a table artifact).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from supsup_fin.errors import DataError
from supsup_fin.live.table import append_keyed
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

TABLE = "alerts.parquet"
FIELDS = ("kind", "market", "model_version", "as_of", "value", "threshold", "message")
"""The keys of an alert dict."""
KEY = ("kind", "market", "model_version", "as_of", "check")
"""An alert is stored once per key (``check``: ``""`` for a check that looks at one thing)."""
COLUMNS = (*FIELDS, "check", "raised_at")

Notify = Callable[[list[dict[str, Any]]], None]
"""Told the alerts a call of :func:`raise_alerts` added, when it added any."""


def alerts_path(ws: Workspace) -> Path:
    """``<workspace>/monitor/alerts.parquet``."""
    return ws.monitor_dir / TABLE


def read_alerts(ws: Workspace) -> pd.DataFrame:
    """The whole alerts table (an empty frame with its :data:`COLUMNS` when nothing was raised yet)."""
    path = alerts_path(ws)
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=list(COLUMNS))


def raise_alerts(ws: Workspace, alerts: list[dict[str, Any]], notify: Notify | None = None) -> list[dict[str, Any]]:
    """Store ``alerts`` in the alerts table; return the ones it did not hold yet (and tell ``notify``).

    Parameters
    ----------
    alerts : list of dict
        Alert dicts (:data:`FIELDS`, optionally ``check``).
    notify : callable, optional
        Called once with the new alerts, after they are stored, when there are any.

    Returns
    -------
    list of dict
        The new alerts as given (``check`` included when it was), in their order.

    Raises
    ------
    DataError
        An alert lacks one of :data:`FIELDS`.
    """
    for a in alerts:
        missing = [f for f in FIELDS if f not in a]
        if missing:
            raise DataError(f"alert {a.get('kind', '?')!r} of market {a.get('market', '?')!r} lacks {missing}; "
                            f"expected the keys {list(FIELDS)}")
    if not alerts:
        return []
    raised_at = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame([{**{f: a[f] for f in FIELDS}, "check": str(a.get("check", "")), "raised_at": raised_at}
                         for a in alerts], columns=list(COLUMNS))
    rows = rows.astype({"model_version": "int64", "as_of": str, "value": "float64", "threshold": "float64"})
    added = append_keyed(alerts_path(ws), rows, KEY, "alerts table")
    keys = set(added[list(KEY)].itertuples(index=False, name=None))
    new = [a for a, k in zip(alerts, rows[list(KEY)].itertuples(index=False, name=None)) if k in keys]
    new = list({alert_key(a): a for a in new}.values())  # the same alert twice in one call: once
    for a in new:
        log.info("alert: %s", a["message"])
    if new and notify is not None:
        notify(new)
    return new


def alert_key(alert: dict[str, Any]) -> tuple[Any, ...]:
    """An alert dict's :data:`KEY` values, as the table holds them."""
    return (alert["kind"], alert["market"], int(alert["model_version"]), str(alert["as_of"]), str(alert.get("check", "")))

