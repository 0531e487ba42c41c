"""Scheduled deployments of the ``retrain`` and ``forecast`` flows on a real Prefect server.

A temporary (ephemeral) Prefect server cannot run schedules, so :func:`prefect_server` starts
``prefect server start --host 127.0.0.1`` (state under the workspace) unless ``PREFECT_API_URL``
already names one, and :func:`serve_deployments` serves both deployments with the config's
crons until interrupted. No Prefect retries: downloads already retry inside the library.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import flow, serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings

from pipelines._server import ServerError, prefect_server, stop_process_group
from pipelines.forecast import forecast_flow
from pipelines.retrain import retrain_flow, run_retrain
from supsup_fin.config import Config, config_from_dict
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = ["ServerError", "deployments", "prefect_server", "serve_deployments", "stop_process_group"]


@flow(name="retrain-dask")
def retrain_dask_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    """The retrain flow as a subflow on the configured Dask task runner (deployments load flows
    by name, so the runner is chosen here rather than with ``with_options``)."""
    return run_retrain(config_from_dict(config), workspace)


def deployments(cfg: Config, workspace: Workspace) -> list[RunnerDeployment]:
    """The ``retrain`` and ``forecast`` deployments with the config's crons and time zone."""
    params = {"config": cfg.model_dump(mode="json"), "workspace": str(workspace.root)}
    sched = cfg.schedule
    retrain = retrain_dask_flow if cfg.runtime.task_runner == "dask" else retrain_flow
    return [
        f.to_deployment(name=f"{cfg.name}-{kind}", schedules=[Cron(cron, timezone=sched.timezone)],
                        parameters=params, tags=["supsup-fin", kind], entrypoint_type=EntrypointType.MODULE_PATH)
        for f, kind, cron in ((retrain, "retrain", sched.retrain_cron), (forecast_flow, "forecast", sched.forecast_cron))
    ]


def serve_deployments(cfg: Config, workspace: Workspace, api_url: str) -> None:
    """Serve both deployments against ``api_url`` until interrupted (Ctrl-C)."""
    os.environ["PREFECT_API_URL"] = api_url  # flow-run subprocesses inherit it
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        serve(*deployments(cfg, workspace), print_starting_message=False)
