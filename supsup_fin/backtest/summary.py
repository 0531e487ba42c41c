"""The JSON-able summary of a backtest (what the flow returns and ``backtest --json`` prints)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from supsup_fin.backtest.report import BacktestResult
from supsup_fin.config import Config
from supsup_fin.forecaster.summary import plain_number


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a (multi-)indexed frame as plain dicts, NaN as ``None``."""
    if frame.empty:
        return []
    return [{k: plain_number(v) for k, v in r.items()} for r in frame.reset_index().to_dict("records")]


def backtest_summary(cfg: Config, result: BacktestResult, *, run_id: str | None, tracking_uri: str | None,
                     elapsed_s: float, timings: dict[str, float]) -> dict[str, Any]:
    """Comparison table, continual scores, storage and windows, plus where the run was recorded."""
    return {
        "name": cfg.name,
        "markets": sorted(result.forecasts.closes),
        "windows": records(result.windows.set_index("window")) if not result.windows.empty else [],
        "table": records(result.table),
        "continual": records(result.continual),
        "storage": records(result.storage),
        "costs_bps": cfg.backtest.cost_bps + cfg.backtest.slippage_bps,
        "run_id": run_id, "tracking_uri": tracking_uri,
        "elapsed_s": round(elapsed_s, 2), "timings": timings,
    }
