"""Live forecasts from the registered champion on the latest data, and their storage."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from supsup_fin.config import Config
from supsup_fin.data import LoadedPrices, load_prices
from supsup_fin.errors import RegistryError
from supsup_fin.live.table import append_forecasts, table_path
from supsup_fin.tracking import connect, load_champion, log_forecasts, payload
from supsup_fin.tracking.model import predict_payload
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)


def champion(cfg: Config, workspace: Workspace) -> tuple[Any, int]:
    """The pyfunc model behind ``models:/<model_name>@champion`` and its version."""
    connect(cfg.tracking, workspace)
    return load_champion(cfg.tracking.model_name)


def forecast_one(model: Any, version: int, lp: LoadedPrices) -> dict[str, Any]:
    """One forecast row for ``lp``'s market made at its last date.

    Keys: market, as_of, target_date, horizon, ``p_<class>``, ``prior_<class>`` (the training
    class frequencies: knowing nothing), signal, expected_return (of the horizon's log return),
    position (the decision layer's recommendation), regime, regime_posterior (dict), masks (dict),
    mode (the gate mode that ran), model_version, source, data_as_of, stale_days.
    """
    min_rows = int((model.metadata.metadata or {})["min_rows"])
    out = predict_payload(model, payload(lp.market, lp.frame, min_rows)).iloc[0].to_dict()
    out |= {"model_version": version, "source": lp.source, "data_as_of": str(lp.as_of.date()),
            "stale_days": lp.stale_days}
    return out


def known_markets(model: Any, version: int, names: list[str]) -> list[str]:
    """``names`` the champion has masks for (a warning for each other one)."""
    known = set((model.metadata.metadata or {}).get("markets", []))
    keep = [n for n in names if not known or n in known]
    for name in sorted(set(names) - set(keep)):
        log.warning("market %r is configured but the champion v%d has no masks for it", name, version)
    return keep


def forecast_markets(cfg: Config, workspace: Workspace, markets: list[str] | None = None) -> list[dict[str, Any]]:
    """One forecast per market from ``models:/<model_name>@champion`` (nothing in memory).

    ``markets`` asked for by name must be configured (:class:`~supsup_fin.errors.ConfigError`
    listing the configured ones) and known to the champion (:class:`RegistryError` listing its
    markets); without ``markets``, configured markets the champion lacks are skipped with a warning.
    """
    for name in markets or []:
        cfg.market(name)
    model, version = champion(cfg, workspace)
    known = sorted((model.metadata.metadata or {}).get("markets", []))
    lacking = [n for n in markets or [] if known and n not in known]
    if lacking:
        raise RegistryError(f"champion v{version} has no masks for market(s) {lacking}; it knows {known}")
    names = known_markets(model, version, markets or [m.name for m in cfg.markets])
    return [forecast_one(model, version, load_prices(cfg.market(n), cfg.data, workspace.cache_dir)) for n in names]


def store_forecasts(cfg: Config, workspace: Workspace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Append ``rows`` to the forecasts table and log the new ones in an MLflow run (idempotent).

    Returns ``{"table", "added", "skipped", "run_id"}``; no run is logged when nothing is new.
    """
    added: pd.DataFrame = append_forecasts(workspace, rows)
    run_id = log_forecasts(cfg.tracking, workspace, added) if len(added) else None
    return {"table": str(table_path(workspace)), "added": len(added), "skipped": len(rows) - len(added),
            "run_id": run_id}
