"""A real local Prefect server (schedules and process-based Dask workers need one)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from supsup_fin import _processes
from supsup_fin.errors import SupsupError
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)


class ServerError(SupsupError):
    """The Prefect server did not start (or is not reachable)."""


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def prefect_server(workspace: Workspace, port: int, startup_timeout: float = 90.0) -> Iterator[str]:
    """Yield the API URL of a real Prefect server: ``$PREFECT_API_URL`` if set and healthy, else
    one started on 127.0.0.1:``port`` (state in ``<workspace>/prefect``) and stopped on exit."""
    given = os.environ.get("PREFECT_API_URL")
    if given:
        if not _healthy(given):
            raise ServerError(f"PREFECT_API_URL={given} does not answer {given}/health")
        yield given
        return
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):
        raise ServerError(f"something already answers on 127.0.0.1:{port}; pick another --port or set PREFECT_API_URL")
    home = workspace.root / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": api_url}
    logf = (home / "server.log").open("ab")
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen(  # own session: stopped as a group below, not by the terminal's Ctrl-C
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(api_url):
            if proc.poll() is not None:
                raise ServerError(f"prefect server exited with code {proc.returncode}; see {home / 'server.log'}")
            if time.monotonic() > deadline:
                raise ServerError(f"prefect server not healthy after {startup_timeout:.0f} s; see {home / 'server.log'}")
            time.sleep(0.5)
        log.info("prefect server up at %s (pid %d)", api_url, proc.pid)
        yield api_url
    finally:
        if "prefect" in sys.modules:  # send what this process queued for the server while it still answers
            drain_prefect_workers()
        # A Prefect server that has served an events websocket can ignore SIGINT for good
        # (PrefectHQ/prefect#13868; its own CLI escalates too): a stop normally takes ~5 s, so
        # escalate after 8 s instead of waiting 40 s before the SIGKILL. State is in sqlite.
        stop_process_group(proc, timeout=8.0)
        logf.close()


def drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send Prefect's queued API logs and events now, while the server is still up.

    Left alone they drain at interpreter exit, with no time limit, against a server that
    :func:`prefect_server` has stopped by then: the client's retries, item after item, can hold
    the process for many minutes (seen after a Dask retrain: 17 log batches, ~80 s each).
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)


def stop_process_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL the process group ``proc`` leads (``start_new_session``),
    ``timeout`` seconds for each to work.

    SIGINT first so a ``supsup-fin schedule`` process runs its clean-up (it stops its own server).
    """
    _processes.stop_process_group(proc, ((signal.SIGINT, timeout), (signal.SIGTERM, timeout)))
