"""The ``monitor`` flow: ingest -> one monitoring pass of the champion (score, check, alert, log).

New alerts leave the workspace as Prefect events, ``supsup-fin.alert.<kind>`` about the resource
``supsup-fin.market.<market>`` with the alert as payload (an automation can act on them), and, in
a flow run, as a table artifact keyed ``monitor-alerts``. Re-running the flow on the same data
raises, and publishes, nothing new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines._recovery import crash_abandoned_flow_runs, process_tagged
from pipelines.retrain import ingest_all
from supsup_fin.config import Config, config_from_dict
from supsup_fin.data import LoadedPrices
from supsup_fin.monitor.run import monitor_pass
from supsup_fin.workspace import Workspace

EVENT_PREFIX = "supsup-fin.alert."
"""An alert's event is this followed by its kind."""
ARTIFACT_KEY = "monitor-alerts"


def alert_event(alert: dict[str, Any]) -> dict[str, Any]:
    """The Prefect event (as :func:`prefect.events.emit_event` arguments) an alert becomes."""
    return {"event": f"{EVENT_PREFIX}{alert['kind']}",
            "resource": {"prefect.resource.id": f"supsup-fin.market.{alert['market']}",
                         "prefect.resource.name": str(alert["market"])},
            "payload": json.loads(json.dumps(alert, default=str))}


def publish_alerts(alerts: list[dict[str, Any]]) -> None:
    """Emit one event per alert and, inside a flow or task run, a table artifact of them all."""
    for a in alerts:
        emit_event(**alert_event(a))
    if FlowRunContext.get() or TaskRunContext.get():
        create_table_artifact(table=[alert_event(a)["payload"] for a in alerts], key=ARTIFACT_KEY,
                              description=f"{len(alerts)} new monitoring alert(s)")


@task(name="monitor", cache_policy=NO_CACHE)
def monitor(cfg: Config, ws: Workspace, backfill: int | None, loaded: dict[str, LoadedPrices]) -> dict[str, Any]:
    return monitor_pass(cfg, ws, backfill, loaded, notify=publish_alerts)


@flow(name="monitor")
def monitor_flow(config: dict[str, Any], workspace: str | None = None, backfill: int | None = None) -> dict[str, Any]:
    """Load every configured market, then score, check and log the champion's forecasts."""
    cfg = config_from_dict(config)
    ws = Workspace.resolve(workspace)
    crash_abandoned_flow_runs("monitor")
    loaded = ingest_all(cfg, ws.cache_dir)
    return monitor(cfg, ws, backfill, loaded)


def run_monitor(cfg: Config, workspace: str | Path | None = None, backfill: int | None = None) -> dict[str, Any]:
    """Run the flow on threads (``backfill`` None: the config's ``monitor.backfill``)."""
    flow_ = monitor_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.runtime.max_workers))
    with process_tagged():
        return flow_(config=cfg.model_dump(mode="json"), workspace=str(workspace) if workspace else None,
                     backfill=backfill)
