"""Prefect's side of a killed run: flow runs left ``RUNNING`` by a process that is gone.

Every flow started through :func:`process_tagged` carries its process's ``pid:<n>`` and
``host:<name>`` tags. :func:`crash_abandoned_flow_runs` sets each ``RUNNING`` / ``PENDING``
flow run of this host whose process no longer exists to ``Crashed``, with the reason.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from supsup_fin.workspace import process_alive, process_tags

log = logging.getLogger(__name__)


def process_tagged() -> AbstractContextManager[set[str]]:
    """Flow runs started inside carry this process's ``pid:`` and ``host:`` tags."""
    me = process_tags()
    return tags(f"pid:{me['supsup_fin.pid']}", f"host:{me['supsup_fin.host']}")


def _tagged(run_tags: list[str], key: str) -> str | None:
    return next((t.removeprefix(f"{key}:") for t in run_tags if t.startswith(f"{key}:")), None)


def crash_abandoned_flow_runs(flow_name: str) -> list[str]:
    """Mark ``flow_name``'s flow runs left running by a dead process of this host ``Crashed``."""
    host = process_tags()["supsup_fin.host"]
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])),
            tags=FlowRunFilterTags(all_=[f"host:{host}"]),
        ))
        for run in runs:
            pid = _tagged(run.tags, "pid")
            name = client.read_flow(run.flow_id).name
            if name != flow_name or process_alive({"supsup_fin.pid": pid or "", "supsup_fin.host": host}) is not False:
                continue
            message = f"its process (pid {pid} on {host}) ended while the run was {run.state_type.value}"
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            log.warning("flow run %s (%s) was left %s: %s; marked Crashed", run.name, flow_name,
                        run.state_type.value, message)
            crashed.append(str(run.id))
    return crashed
