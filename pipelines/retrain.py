"""The ``retrain`` flow: ingest -> features -> regimes -> tasks -> train masks -> evaluate ->
log -> register -> promote. Each task is one library call; markets fan out as tasks. A retrain
whose data, config and code equal the champion's is logged but registers nothing.

One retrain at a time per workspace: the flow holds the workspace's ``retrain`` lock (a second
one waits up to ``RETRAIN_LOCK_TIMEOUT_S``, then fails naming the holder). Holding it, it first
closes what a killed retrain left (runs marked FAILED / Crashed, undecided versions marked
incomplete) and reports it in the summary under ``recovered``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pipelines._recovery import crash_abandoned_flow_runs, process_tagged
from pipelines._server import prefect_server
from supsup_fin.config import Config, MarketConfig, RuntimeConfig, config_from_dict
from supsup_fin.data import LoadedPrices, load_prices
from supsup_fin.errors import DataError
from supsup_fin.forecaster.evaluate import Evaluation, evaluate
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank
from supsup_fin.monitor.reference import attach_references
from supsup_fin.progress import report
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit, build_features, fit_regimes, lineage_of
from supsup_fin.regimes import RegimeModel
from supsup_fin.forecaster.summary import retrain_summary
from supsup_fin.forecaster.mask_tasks import Task, make_tasks
from supsup_fin.tracking import RunRecord, connect, log_retrain
from supsup_fin.tracking.recovery import recover_store
from supsup_fin.tracking.registry import champion_bank, champion_regimes
from supsup_fin.forecaster.training import (
    MaskBits,
    build_forecaster,
    build_network,
    merge_banks,
    resolve_device,
    reusable_masks,
    to_bits,
    train_group,
    training_groups,
)
from supsup_fin.workspace import Workspace


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(market: MarketConfig, cfg: Config, cache_dir: Path) -> LoadedPrices:
    return load_prices(market, cfg.data, cache_dir)


def ingest_all(cfg: Config, cache_dir: Path, names: list[str] | None = None) -> dict[str, LoadedPrices]:
    """Ingest every configured market (or those named) in parallel and wait for all of them.

    Raises
    ------
    DataError
        One market failed: its own error; several: one error naming each, with its reason.
    """
    markets = [cfg.market(n) for n in names] if names is not None else list(cfg.markets)
    futures = {m.name: ingest.submit(m, cfg, cache_dir) for m in markets}
    loaded: dict[str, LoadedPrices] = {}
    failed: list[DataError] = []
    for name, future in futures.items():
        try:
            loaded[name] = future.result()
        except DataError as err:
            failed.append(err)
    if len(failed) == 1:
        raise failed[0]
    if failed:
        reasons = "; ".join(f"({i}) {err}" for i, err in enumerate(failed, 1))
        raise DataError(f"{len(failed)} of {len(futures)} markets could not be loaded: {reasons}")
    return loaded


@task(name="features", cache_policy=NO_CACHE)
def features(lp: LoadedPrices, cfg: Config) -> FeatureSet:
    return build_features(lp.market, lp.frame, cfg)


@task(name="champion-regimes", cache_policy=NO_CACHE)
def champion_hmms(cfg: Config, ws: Workspace) -> dict[str, RegimeModel]:
    """The champion's HMM per market, which refits align to (empty without lineage or champion)."""
    return champion_regimes(cfg.tracking, ws)[0] if cfg.regimes.lineage else {}


@task(name="regimes", cache_policy=NO_CACHE)
def regimes(lp: LoadedPrices, cfg: Config, previous: RegimeModel | None = None) -> RegimeFit:
    return fit_regimes(lp.market, lp.frame, cfg.regimes, cfg.segments, previous=lineage_of(previous, cfg))


@task(name="tasks", cache_policy=NO_CACHE)
def tasks(fs: dict[str, FeatureSet], rf: dict[str, RegimeFit], cfg: Config) -> list[Task]:
    return make_tasks(fs, rf, cfg)


@task(name="champion-masks", cache_policy=NO_CACHE)
def champion_masks(task_list: list[Task], cfg: Config, ws: Workspace) -> MaskBank:
    """The champion's masks that are still valid for these tasks (empty when carry-over is off)."""
    net = build_network(cfg, task_list[0].X.shape[1])
    previous, label = champion_bank(cfg.tracking, ws, net) if cfg.tracking.carry_over else (None, "")
    return reusable_masks(task_list, previous, net, label)


@task(name="train-masks", cache_policy=NO_CACHE)
def train(group: list[Task], cfg: Config) -> MaskBits:
    """One batched training group (on a Dask worker: base rebuilt from its seed; only masks return)."""
    return to_bits(train_group(group, cfg))


@task(name="forecaster", cache_policy=NO_CACHE)
def assemble(fs: dict[str, FeatureSet], rf: dict[str, RegimeFit], net: FrozenNet, bank: MaskBank, cfg: Config,
             prices: dict[str, pd.DataFrame]) -> RegimeGatedForecaster:
    """The forecaster, each market with its monitoring reference on its training rows."""
    forecaster = build_forecaster(fs, rf, net, bank, cfg)
    attach_references(forecaster, fs, rf, prices, cfg)
    return forecaster


@task(name="evaluate", cache_policy=NO_CACHE)
def score(forecaster: RegimeGatedForecaster, fs: dict[str, FeatureSet], rf: dict[str, RegimeFit],
          prices: dict[str, pd.DataFrame], cfg: Config) -> Evaluation:
    return evaluate(forecaster, fs, rf, prices, device=resolve_device(cfg.runtime))


@task(name="log-register-promote", cache_policy=NO_CACHE)
def record(cfg: Config, ws: Workspace, loaded: dict[str, LoadedPrices], rf: dict[str, RegimeFit],
           ev: Evaluation, forecaster: RegimeGatedForecaster, timings: dict[str, float], force: bool) -> RunRecord:
    return log_retrain(cfg, ws, loaded=loaded, regimes=rf, evaluation=ev, forecaster=forecaster, timings=timings,
                       force=force)


@task(name="recover", cache_policy=NO_CACHE)
def recover(cfg: Config, ws: Workspace) -> str:
    """Close what killed retrains left (runs, flow runs, undecided versions); '' when nothing."""
    rec = recover_store(connect(cfg.tracking, ws), cfg.tracking.experiment, cfg.tracking.model_name)
    crashed = crash_abandoned_flow_runs("retrain")
    parts = [rec.describe()] if rec else []
    if crashed:
        parts.append(f"{len(crashed)} Prefect flow run(s) left running by a killed process marked Crashed")
    return "; ".join(parts)


RETRAIN_LOCK_TIMEOUT_S = 3600.0
"""Seconds a retrain waits for another retrain of the same workspace before it fails."""


@flow(name="retrain")
def retrain_flow(config: dict[str, Any], workspace: str | None = None, force: bool = False) -> dict[str, Any]:
    """Retrain every configured market's masks and register the forecaster, unless the champion was
    made from the same data, config and code (the summary's ``registered_model.unchanged_since``).
    ``force``: register even then, and promote even when an HMM fell back to fewer regimes than
    asked, if the scores allow."""
    cfg = config_from_dict(config)
    ws = Workspace.resolve(workspace)
    with ws.lock("retrain", timeout=RETRAIN_LOCK_TIMEOUT_S, what=f"retrain {cfg.name}"):
        recovered = recover(cfg, ws)
        summary = _retrain(cfg, ws, force)
    return {**summary, "recovered": recovered}


_STAGES = ("ingest", "features and regimes", "train masks", "evaluate", "log and register")
"""The retrain's stages as its progress bar names them (its timings: ``ingest``, ``features_regimes``...)."""


def _retrain(cfg: Config, ws: Workspace, force: bool) -> dict[str, Any]:
    start = time.perf_counter()
    clock: dict[str, float] = {}

    def lap(stage: str, t0: float) -> float:
        now = time.perf_counter()
        clock[stage] = round(now - t0, 3)
        report("retrain", len(clock), len(_STAGES), _STAGES[len(clock)] if len(clock) < len(_STAGES) else "done")
        return now

    report("retrain", 0, len(_STAGES), _STAGES[0])
    t = start
    loaded = ingest_all(cfg, ws.cache_dir)
    t = lap("ingest", t)
    f_fs = {n: features.submit(lp, cfg) for n, lp in loaded.items()}
    previous = champion_hmms(cfg, ws)
    f_rf = {n: regimes.submit(lp, cfg, previous.get(n)) for n, lp in loaded.items()}
    fs = {n: f.result() for n, f in f_fs.items()}
    rf = {n: f.result() for n, f in f_rf.items()}
    t = lap("features_regimes", t)
    task_list = tasks(fs, rf, cfg)
    carried = champion_masks(task_list, cfg, ws)
    todo = [tk for tk in task_list if tk.name not in carried]
    groups = [train.submit(g, cfg) for g in training_groups(todo, cfg.runtime)]
    net = build_network(cfg, task_list[0].X.shape[1])
    bank = merge_banks(net, [carried, *[g.result() for g in groups]])
    t = lap("train_masks", t)
    prices = {n: lp.frame for n, lp in loaded.items()}
    forecaster = assemble(fs, rf, net, bank, cfg, prices)
    ev = score(forecaster, fs, rf, prices, cfg)
    t = lap("evaluate", t)
    run = record(cfg, ws, loaded, rf, ev, forecaster, dict(clock), force)
    lap("log_register", t)
    return retrain_summary(cfg, ev, run, elapsed_s=time.perf_counter() - start, timings=clock)


def task_runner(runtime: RuntimeConfig) -> TaskRunner:
    """Threads (default), or Dask: the scheduler at ``dask_address`` or a local process cluster."""
    if runtime.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
    from prefect_dask import DaskTaskRunner

    if runtime.dask_address:
        return DaskTaskRunner(address=runtime.dask_address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": runtime.n_workers, "threads_per_worker": runtime.threads_per_worker,
        "processes": True, "host": "127.0.0.1", "dashboard_address": None,
    })


def run_retrain(cfg: Config, workspace: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run the flow with the configured task runner (``runtime.task_runner``).

    Dask process workers need a real Prefect server: without ``PREFECT_API_URL`` one is started
    on 127.0.0.1 (``schedule.prefect_port``) for the run and stopped after it.
    """
    flow_ = retrain_flow.with_options(task_runner=task_runner(cfg.runtime))
    params = {"config": cfg.model_dump(mode="json"), "workspace": str(workspace) if workspace else None,
              "force": force}
    if cfg.runtime.task_runner != "dask" or os.environ.get("PREFECT_API_URL"):
        with process_tagged():
            return flow_(**params)
    with prefect_server(Workspace.resolve(workspace), cfg.schedule.prefect_port) as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # local cluster workers inherit it
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}), process_tagged():
                return flow_(**params)
        finally:
            del os.environ["PREFECT_API_URL"]
