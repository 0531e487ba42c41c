"""One MLflow run per backtest: config, data hashes, metrics, the comparison tables and plots."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from supsup_fin._figures import save_png
from supsup_fin.backtest.plots import equity_figure, reliability_figure
from supsup_fin.backtest.report import PORTFOLIO, BacktestResult
from supsup_fin.config import Config
from supsup_fin.data import LoadedPrices
from supsup_fin.tracking.store import connect, run_tags, tracking_uri
from supsup_fin.workspace import Workspace

_LOGGED = ("sharpe", "sortino", "ann_return", "ann_vol", "max_drawdown", "calmar", "hit_rate", "turnover",
           "accuracy", "log_loss", "brier", "psr", "dsr", "flat_missing")


def _key(*parts: str) -> str:
    """An MLflow metric name (letters, digits, ``_ - . /`` and spaces only)."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", ".".join(parts))


def log_backtest(cfg: Config, workspace: Workspace, result: BacktestResult, loaded: dict[str, LoadedPrices],
                 timings: dict[str, float] | None = None) -> tuple[str, str]:
    """Record a backtest as one run; returns ``(run_id, tracking_uri)``. Registers no model."""
    connect(cfg.tracking, workspace)
    with mlflow.start_run(run_name=f"backtest-{cfg.name}") as run, tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        tags = {"supsup_fin.flow": "backtest", **run_tags()}
        for m, lp in loaded.items():
            tags |= {f"data.{m}.hash": lp.data_hash, f"data.{m}.source": lp.source, f"data.{m}.as_of": str(lp.as_of.date())}
        mlflow.set_tags(tags)
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
            metrics |= {f"time.{k}_s": float(v) for k, v in timings.items()}
        mlflow.log_metrics(metrics)
        result.table.to_csv(tmp_path / "comparison.csv")
        (tmp_path / "comparison.txt").write_text(result.table.round(4).to_string())
        for name in ("per_regime", "calibration", "continual", "storage", "windows"):
            getattr(result, name).to_csv(tmp_path / f"{name}.csv")
        (tmp_path / "windows.json").write_text(json.dumps(result.forecasts.window_log, indent=1, default=str))
        for market in [*sorted(result.forecasts.closes), PORTFOLIO]:
            if market == PORTFOLIO and result.portfolio.empty:
                continue
            save_png(equity_figure(result, market), tmp_path / f"equity_{market}.png")
        if not result.calibration.empty:  # empty when no strategy gives probabilities
            save_png(reliability_figure(result.calibration), tmp_path / "reliability.png")
        mlflow.log_artifacts(tmp, artifact_path="backtest")
        result.daily.to_parquet(tmp_path / "daily.parquet")
        mlflow.log_artifact(str(tmp_path / "daily.parquet"), artifact_path="backtest")
    return run.info.run_id, tracking_uri(cfg.tracking, workspace)
