"""The JSON-able summary of a backtest (what the flow returns and ``backtest --json`` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from supsup_fin.backtest.artifacts import TEARSHEET
from supsup_fin.backtest.report import BacktestResult
from supsup_fin.config import Config
from supsup_fin.forecaster.summary import plain_number

if TYPE_CHECKING:  # the tracking layer (MLflow) stays out of this module's imports
    from supsup_fin.tracking.backtests import BacktestRun


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a (multi-)indexed frame as plain dicts, NaN as ``None``."""
    if frame.empty:
        return []
    return [{k: plain_number(v) for k, v in r.items()} for r in frame.reset_index().to_dict("records")]


def backtest_summary(cfg: Config, result: BacktestResult, *, artifacts_dir: Path, artifacts: Sequence[Path],
                     run: BacktestRun | None, elapsed_s: float, timings: dict[str, float]) -> dict[str, Any]:
    """Comparison table, continual scores, storage and windows, plus where its files were written
    (``artifacts``: their paths; ``tearsheet``: the tearsheet's, None if not written) and where
    the run was recorded (``run_id``, ``experiment_id``, ``tracking_uri``; None when not tracked)."""
    tearsheet = next((str(p) for p in artifacts if p.name == TEARSHEET), None)
    return {
        "name": cfg.name,
        "markets": sorted(result.forecasts.closes),
        "windows": records(result.windows.set_index("window")) if not result.windows.empty else [],
        "table": records(result.table),
        "continual": records(result.continual),
        "storage": records(result.storage),
        "costs_bps": cfg.backtest.cost_bps + cfg.backtest.slippage_bps,
        "artifacts_dir": str(artifacts_dir), "artifacts": [str(p) for p in artifacts], "tearsheet": tearsheet,
        "run_id": run.run_id if run else None, "experiment_id": run.experiment_id if run else None,
        "tracking_uri": run.tracking_uri if run else None,
        "elapsed_s": round(elapsed_s, 2), "timings": timings,
    }
