"""One MLflow run per backtest: config, data hashes, metrics, and the backtest's artifacts folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from supsup_fin.backtest.report import BacktestResult
from supsup_fin.config import Config
from supsup_fin.data import LoadedPrices
from supsup_fin.tracking.describe import log_prices
from supsup_fin.tracking.store import connect, run_tags, tracking_uri
from supsup_fin.workspace import Workspace

_LOGGED = ("sharpe", "sortino", "ann_return", "ann_vol", "max_drawdown", "calmar", "hit_rate", "turnover",
           "accuracy", "log_loss", "brier", "psr", "dsr", "flat_missing")


def _key(*parts: str) -> str:
    """An MLflow metric name by path (``bt/<market>/<strategy>/<metric>``: the UI makes a chart section
    per prefix), with letters, digits, ``_ - .`` and spaces only in each part."""
    return "/".join(re.sub(r"[^0-9A-Za-z_\-. ]", "_", p) for p in parts)


@dataclass(frozen=True)
class BacktestRun:
    """Where a backtest was recorded."""

    run_id: str
    experiment_id: str
    tracking_uri: str


def log_backtest(cfg: Config, workspace: Workspace, result: BacktestResult, loaded: dict[str, LoadedPrices],
                 artifacts_dir: str | Path, timings: dict[str, float] | None = None) -> BacktestRun:
    """Record a backtest as one run, with ``artifacts_dir``'s files (see
    :func:`~supsup_fin.backtest.artifacts.write_artifacts`) as its ``backtest/`` artifacts.
    Registers no model."""
    connect(cfg.tracking, workspace)
    with mlflow.start_run(run_name=f"backtest-{cfg.name}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        tags = {"supsup_fin.flow": "backtest", "supsup_fin.artifacts_dir": str(artifacts_dir), **run_tags()}
        for m, lp in loaded.items():
            tags |= {f"data.{m}.hash": lp.data_hash, f"data.{m}.source": lp.source, f"data.{m}.as_of": str(lp.as_of.date())}
        mlflow.set_tags(tags)
        log_prices(loaded, cfg.markets, workspace.cache_dir, context="backtest")
        metrics = {}
        for (market, strategy), row in result.table.iterrows():
            for k in _LOGGED:
                if k in row and pd.notna(row[k]):
                    metrics[_key("bt", str(market), str(strategy), k)] = float(row[k])
        for (market, strategy), row in result.continual.iterrows():
            for k, v in row.items():
                if pd.notna(v):
                    metrics[_key("continual", str(market), str(strategy), str(k))] = float(v)
        if timings:
            metrics |= {f"time/{k}_s": float(v) for k, v in timings.items()}
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(artifacts_dir), artifact_path="backtest")
    return BacktestRun(run.info.run_id, run.info.experiment_id, tracking_uri(cfg.tracking, workspace))
