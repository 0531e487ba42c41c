"""Retrain on alert: the retrain deployment's trigger matches the monitoring pass's alert events."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from conftest import free_port, small_config_dict

from supsup_fin.config import config_from_dict


def _deployment(cfg, triggers, workspace: str = "ws"):
    """The retrain deployment as ``schedule`` builds it, with ``triggers``."""
    from prefect.deployments.runner import EntrypointType

    from pipelines.retrain import retrain_flow

    return retrain_flow.to_deployment(name=f"{cfg.name}-retrain", triggers=triggers, entrypoint_type=EntrypointType.MODULE_PATH,
                                      parameters={"config": cfg.model_dump(mode="json"), "workspace": workspace})


def _alert(event: str, resource: str):
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.types._datetime import now

    return ReceivedEvent(id=uuid.uuid4(), occurred=now("UTC"), event=event, resource={"prefect.resource.id": resource})


def test_retrain_deployment_is_triggered_by_alert_events_only_when_configured() -> None:
    from prefect.server.events.schemas.automations import EventTrigger

    from pipelines.automation import RETRAIN_COOLDOWN, retrain_triggers

    assert retrain_triggers(config_from_dict(small_config_dict())) == []  # retrain_on_alert is off by default
    from pipelines.schedule import deployments
    from supsup_fin.workspace import Workspace

    cfg = config_from_dict(small_config_dict(monitor={"retrain_on_alert": True}))
    retrain, forecast = deployments(cfg, Workspace.resolve("ws"))  # what `schedule` serves
    assert retrain.triggers == retrain_triggers(cfg) and forecast.triggers == []
    [trigger] = retrain.triggers
    assert (trigger.name, trigger.expect, trigger.threshold, trigger.within) == (
        "small-retrain-on-alert", {"supsup-fin.alert.*"}, 1, RETRAIN_COOLDOWN)
    trigger.set_deployment_id(uuid.uuid4())
    automation = trigger.as_automation()  # what the server stores when the deployment is applied
    [action] = automation.actions
    assert (action.type, action.deployment_id, action.parameters) == ("run-deployment", trigger._deployment_id, None)
    served = EventTrigger.model_validate(automation.trigger.model_dump())  # the server's matching rules
    assert served.covers(_alert("supsup-fin.alert.feature_drift", "supsup-fin.market.syn_a"))
    assert served.covers(_alert("supsup-fin.alert.hmm_drift", "supsup-fin.market.wti"))
    assert not served.covers(_alert("prefect.flow-run.Completed", "supsup-fin.market.syn_a"))
    assert not served.covers(_alert("supsup-fin.alert.feature_drift", "prefect.flow-run.123"))


@pytest.mark.slow  # a real Prefect server with its triggers service: ~60 s
def test_alert_events_on_a_real_server_schedule_one_retrain_run(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines._server import drain_prefect_workers, prefect_server
    from pipelines.automation import retrain_triggers
    from supsup_fin.workspace import Workspace

    cfg = config_from_dict(small_config_dict(monitor={"retrain_on_alert": True}))
    ws = Workspace.resolve(tmp_path / "ws")

    async def runs(deployment_id: uuid.UUID, at_least: int, timeout_s: float) -> list:
        async with get_client() as client:
            deadline = time.monotonic() + timeout_s
            while True:
                found = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
                if len(found) >= at_least or time.monotonic() > deadline:
                    return found
                await asyncio.sleep(0.5)

    with prefect_server(ws, free_port()) as api, temporary_settings(updates={PREFECT_API_URL: api}):
        deployment_id = _deployment(cfg, retrain_triggers(cfg), str(ws.root)).apply()
        for market in ("syn_a", "syn_b", "syn_a"):  # one monitoring pass's burst of alerts
            emit_event(event="supsup-fin.alert.feature_drift", resource={"prefect.resource.id": f"supsup-fin.market.{market}"})
        drain_prefect_workers()
        [run] = asyncio.run(runs(deployment_id, 1, 60))
        assert run.state_name == "Scheduled" and run.parameters["workspace"] == str(ws.root)
        assert len(asyncio.run(runs(deployment_id, 2, 3))) == 1  # the cooldown keeps it to one retrain
