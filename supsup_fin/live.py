"""Live forecasts from the registered champion on the latest data."""

from __future__ import annotations

import json
import logging
from typing import Any

from supsup_fin.config import Config
from supsup_fin.data import load_prices
from supsup_fin.tracking import connect, load_champion, payload
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)


def forecast_markets(cfg: Config, workspace: Workspace, markets: list[str] | None = None) -> list[dict[str, Any]]:
    """One forecast per market from ``models:/<model_name>@champion`` (nothing in memory).

    Each row: market, as_of, horizon, class probabilities, signal, regime, regime posterior,
    mask(s) used, gate mode, model version, and the data's source and staleness.
    """
    connect(cfg.tracking, workspace)
    model, version = load_champion(cfg.tracking.model_name)
    meta = model.metadata.metadata or {}
    min_rows = int(meta["min_rows"])
    known = set(meta.get("markets", []))
    names = markets or [m.name for m in cfg.markets]
    rows = []
    for name in names:
        market = cfg.market(name)
        if known and name not in known:
            log.warning("market %r is configured but the champion v%d has no masks for it", name, version)
            continue
        lp = load_prices(market, cfg.data, workspace.cache_dir)
        out = model.predict(payload(name, lp.frame, min_rows)).iloc[0].to_dict()
        out["regime_posterior"] = json.loads(out["regime_posterior"])
        out["masks"] = json.loads(out["masks"])
        out |= {"model_version": version, "source": lp.source, "data_as_of": str(lp.as_of.date()),
                "stale_days": lp.stale_days}
        rows.append(out)
    return rows
