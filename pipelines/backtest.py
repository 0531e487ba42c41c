"""The ``backtest`` flow: ingest -> walk forward (refit, train new masks, forecast) -> score -> log.

Each task is one library call; markets are ingested in parallel. The run is recorded in MLflow
(metrics per market and strategy, the comparison tables, equity plots); nothing is registered.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.retrain import ingest
from supsup_fin.backtest.engine import Forecasts, run_walk_forward
from supsup_fin.backtest.report import BacktestResult, summarise
from supsup_fin.backtest.summary import backtest_summary
from supsup_fin.config import Config, config_from_dict
from supsup_fin.data import LoadedPrices
from supsup_fin.tracking.backtests import log_backtest
from supsup_fin.workspace import Workspace


@task(name="walk-forward", cache_policy=NO_CACHE)
def walk_forward(cfg: Config, prices: dict[str, pd.DataFrame]) -> Forecasts:
    return run_walk_forward(cfg, prices)


@task(name="score", cache_policy=NO_CACHE)
def score(fc: Forecasts, cfg: Config, prices: dict[str, pd.DataFrame]) -> BacktestResult:
    return summarise(fc, cfg, prices)


@task(name="log-backtest", cache_policy=NO_CACHE)
def record(cfg: Config, ws: Workspace, result: BacktestResult, loaded: dict[str, LoadedPrices],
           timings: dict[str, float]) -> tuple[str, str]:
    return log_backtest(cfg, ws, result, loaded, timings)


@flow(name="backtest")
def backtest_flow(config: dict[str, Any], workspace: str | None = None, track: bool = True) -> dict[str, Any]:
    """Walk-forward backtest of every configured market against the baselines."""
    start = time.perf_counter()
    cfg = config_from_dict(config)
    ws = Workspace.resolve(workspace)
    futures = {m.name: ingest.submit(m, cfg, ws.cache_dir) for m in cfg.markets}
    loaded = {n: f.result() for n, f in futures.items()}
    prices = {n: lp.frame for n, lp in loaded.items()}
    fc = walk_forward(cfg, prices)
    result = score(fc, cfg, prices)
    timings = {**fc.timings, "total": round(time.perf_counter() - start, 2)}
    run_id, uri = record(cfg, ws, result, loaded, timings) if track else (None, None)
    return backtest_summary(cfg, result, run_id=run_id, tracking_uri=uri,
                            elapsed_s=time.perf_counter() - start, timings=timings)
