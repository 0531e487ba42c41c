"""Scheduled deployments of the ``retrain`` and ``forecast`` flows on a real Prefect server (each
scheduled forecast also scores the matured forecasts and raises alerts: :mod:`pipelines.monitor`).

A temporary (ephemeral) Prefect server cannot run schedules, so :func:`prefect_server` starts
``prefect server start --host 127.0.0.1`` (state under the workspace) unless ``PREFECT_API_URL``
already names one, and :func:`serve_deployments` serves both deployments with the config's
crons until interrupted. No Prefect retries: downloads already retry inside the library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from prefect import flow, serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings

from pipelines._server import ServerError, drain_prefect_workers, prefect_server, stop_process_group
from pipelines.automation import retrain_triggers
from pipelines.forecast import forecast_flow
from pipelines.retrain import retrain_flow, run_retrain
from supsup_fin.config import Config, config_from_dict
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = ["ServerError", "bounded_interrupt", "deployments", "prefect_server", "serve_deployments",
           "stop_process_group"]

STOP_GRACE_S = 15.0
"""Seconds a served process gets to shut down after Ctrl-C before the interrupt is repeated."""


@flow(name="retrain-dask")
def retrain_dask_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    """The retrain flow as a subflow on the configured Dask task runner (deployments load flows
    by name, so the runner is chosen here rather than with ``with_options``)."""
    return run_retrain(config_from_dict(config), workspace)


def deployments(cfg: Config, workspace: Workspace) -> list[RunnerDeployment]:
    """The ``retrain`` and ``forecast`` deployments with the config's crons and time zone; with
    ``monitor.retrain_on_alert`` the retrain deployment also runs on the monitoring pass's alert
    events (:func:`pipelines.automation.retrain_triggers`)."""
    params = {"config": cfg.model_dump(mode="json"), "workspace": str(workspace.root)}
    sched = cfg.schedule
    retrain = retrain_dask_flow if cfg.runtime.task_runner == "dask" else retrain_flow
    return [
        f.to_deployment(name=f"{cfg.name}-{kind}", schedules=[Cron(cron, timezone=sched.timezone)],
                        parameters=params, tags=["supsup-fin", kind], entrypoint_type=EntrypointType.MODULE_PATH,
                        triggers=retrain_triggers(cfg) if kind == "retrain" else None)
        for f, kind, cron in ((retrain, "retrain", sched.retrain_cron), (forecast_flow, "forecast", sched.forecast_cron))
    ]


@contextlib.contextmanager
def bounded_interrupt(grace_s: float = STOP_GRACE_S) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) stops the body within about ``grace_s`` seconds.

    The first signal raises ``KeyboardInterrupt`` as usual and starts a timer; if the body is
    still running ``grace_s`` later, SIGINT is sent again. Prefect's ``serve`` runs its runner
    under ``asyncio.run``, whose shutdown waits for every task to finish cancelling: a task that
    swallows the cancellation (seen once in a while right after a flow run ends) keeps the
    process alive until a second interrupt. Signal handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    timer: threading.Timer | None = None

    def interrupted(signum: int, frame: Any) -> None:
        nonlocal timer
        if timer is None:
            log.info("interrupted (signal %d): stopping; interrupting again in %.0f s if still running",
                     signum, grace_s)
            timer = threading.Timer(grace_s, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_deployments(cfg: Config, workspace: Workspace, api_url: str) -> None:
    """Serve both deployments against ``api_url`` until interrupted (Ctrl-C; see
    :func:`bounded_interrupt`)."""
    os.environ["PREFECT_API_URL"] = api_url  # flow-run subprocesses inherit it
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            with bounded_interrupt():
                serve(*deployments(cfg, workspace), print_starting_message=False)
        finally:
            drain_prefect_workers()
