"""The ``forecast`` flow: champion -> latest data per market -> forecasts table + MLflow run ->
the monitoring pass (score what matured, check, alert: :mod:`pipelines.monitor`).

Re-running it for a date adds nothing: the table is keyed by (as_of, market, model_version), and
the scores and alerts tables likewise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines._recovery import crash_abandoned_flow_runs, process_tagged
from pipelines.monitor import monitor
from pipelines.retrain import ingest_all
from supsup_fin.config import Config, config_from_dict
from supsup_fin.data import LoadedPrices
from supsup_fin.live.forecast import champion, forecast_one, known_markets, store_forecasts
from supsup_fin.workspace import Workspace


@task(name="champion", cache_policy=NO_CACHE)
def load_model(cfg: Config, ws: Workspace) -> tuple[Any, int]:
    return champion(cfg, ws)


@task(name="predict", cache_policy=NO_CACHE)
def predict(model: Any, version: int, lp: LoadedPrices, cfg: Config) -> dict[str, Any]:
    return forecast_one(model, version, lp, monitor=cfg.monitor)


@task(name="store", cache_policy=NO_CACHE)
def store(cfg: Config, ws: Workspace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return store_forecasts(cfg, ws, rows)


@flow(name="forecast")
def forecast_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    """Forecast every configured market's latest date with the champion, store the rows, then
    monitor the champion (``monitor``: the pass's report)."""
    cfg = config_from_dict(config)
    ws = Workspace.resolve(workspace)
    crash_abandoned_flow_runs("forecast")
    model, version = load_model(cfg, ws)
    names = known_markets(model, version, [m.name for m in cfg.markets])
    loaded = ingest_all(cfg, ws.cache_dir, names)
    predicted = [predict.submit(model, version, lp, cfg) for lp in loaded.values()]  # all markets at once
    rows = [f.result() for f in predicted]
    stored = store(cfg, ws, rows)
    return {"model_version": version, "forecasts": rows, **stored, "monitor": monitor(cfg, ws, None, loaded)}


def run_forecast(cfg: Config, workspace: str | Path | None = None) -> dict[str, Any]:
    """Run the flow on threads."""
    flow_ = forecast_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.runtime.max_workers))
    with process_tagged():
        return flow_(config=cfg.model_dump(mode="json"), workspace=str(workspace) if workspace else None)
