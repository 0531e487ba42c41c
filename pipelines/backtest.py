"""The ``backtest`` flow: ingest -> walk forward (refit, train new masks, forecast) -> score ->
write artifacts -> log.

Each task is one library call; markets are ingested in parallel. Every table, plot and the
tearsheet go to ``<workspace>/backtests/<config name>-<UTC time>/``; the run is recorded in
MLflow (metrics per market and strategy, that folder as its artifacts); nothing is registered.
Progress is reported per stage (``backtest``) and per window (``walk-forward``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.retrain import ingest_all
from supsup_fin import progress
from supsup_fin.backtest.artifacts import backtest_folder, write_artifacts
from supsup_fin.backtest.engine import Forecasts, run_walk_forward
from supsup_fin.backtest.report import BacktestResult, summarise
from supsup_fin.backtest.summary import backtest_summary
from supsup_fin.config import Config, config_from_dict
from supsup_fin.data import LoadedPrices
from supsup_fin.tracking.backtests import BacktestRun, log_backtest
from supsup_fin.workspace import Workspace


@task(name="walk-forward", cache_policy=NO_CACHE)
def walk_forward(cfg: Config, prices: dict[str, pd.DataFrame]) -> Forecasts:
    return run_walk_forward(cfg, prices)


@task(name="score", cache_policy=NO_CACHE)
def score(fc: Forecasts, cfg: Config, prices: dict[str, pd.DataFrame]) -> BacktestResult:
    return summarise(fc, cfg, prices)


@task(name="write-artifacts", cache_policy=NO_CACHE)
def write(result: BacktestResult, cfg: Config, folder: Path) -> list[Path]:
    return write_artifacts(result, cfg, folder)


@task(name="log-backtest", cache_policy=NO_CACHE)
def record(cfg: Config, ws: Workspace, result: BacktestResult, loaded: dict[str, LoadedPrices], folder: Path,
           timings: dict[str, float]) -> BacktestRun:
    return log_backtest(cfg, ws, result, loaded, folder, timings)


STAGES = ("ingest", "walk-forward", "score", "write artifacts", "log")


def _stage(name: str) -> None:
    """Report that the flow starts stage ``name`` of :data:`STAGES` (``done``: it has finished)."""
    done = STAGES.index(name) if name in STAGES else len(STAGES)
    progress.report("backtest", done, len(STAGES), name)


@flow(name="backtest")
def backtest_flow(config: dict[str, Any], workspace: str | None = None, track: bool = True) -> dict[str, Any]:
    """Walk-forward backtest of every configured market against the baselines."""
    start = time.perf_counter()
    cfg = config_from_dict(config)
    ws = Workspace.resolve(workspace)
    _stage("ingest")
    loaded = ingest_all(cfg, ws.cache_dir)
    prices = {n: lp.frame for n, lp in loaded.items()}
    _stage("walk-forward")
    fc = walk_forward(cfg, prices)
    _stage("score")
    result = score(fc, cfg, prices)
    _stage("write artifacts")
    folder = backtest_folder(ws.backtests_dir, cfg.name)
    artifacts = write(result, cfg, folder)
    timings = {**fc.timings, "total": round(time.perf_counter() - start, 2)}
    run = None
    if track:
        _stage("log")
        run = record(cfg, ws, result, loaded, folder, timings)
    _stage("done")
    return backtest_summary(cfg, result, artifacts_dir=folder, artifacts=artifacts, run=run,
                            elapsed_s=time.perf_counter() - start, timings=timings)
