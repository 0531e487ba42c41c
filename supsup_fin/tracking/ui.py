"""The MLflow UI on the workspace's tracking store, and links into it.

:func:`mlflow_ui` runs ``mlflow server`` (MLflow 3's UI and REST API; ``mlflow ui`` is its alias)
from this interpreter on the store :func:`~supsup_fin.tracking.store.connect` opens: the same
backend URI, new experiments' artifacts in the workspace. It binds 127.0.0.1 and runs in its own
session, so that stopping it stops the uvicorn worker it starts too. :func:`run_url`,
:func:`model_version_url` and :func:`experiment_url` are the UI's pages of a run, a registered
version and an experiment.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from supsup_fin._processes import stop_process_group
from supsup_fin.config import TrackingConfig
from supsup_fin.errors import ConfigError, SupsupError
from supsup_fin.tracking.serve import LOOPBACK
from supsup_fin.tracking.store import connect, tracking_uri
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_PORT = 5000
"""MLflow's own default port, taken when free."""
STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
"""Seconds the server gets to stop after SIGTERM before what is left of it is killed."""
STDERR_FD = 2
"""Where the server writes without a log file: this process's stderr (stdout stays for --json)."""


class UIError(SupsupError):
    """The MLflow UI did not start, or stopped on its own."""


@dataclass(frozen=True)
class RunningUI:
    """An MLflow UI: its base ``url``, the ``tracking_uri`` it shows, the id of the config's
    experiment, the server's ``pid`` and its ``log`` (both None when the tracking store is a
    server already: its UI is the store's URI)."""

    url: str
    tracking_uri: str
    experiment_id: str
    pid: int | None = None
    log: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def wait(self) -> None:
        """Block until the server exits; :class:`UIError` unless it exited cleanly (stopped by a signal)."""
        if self.process is None:
            return
        code = self.process.wait()
        if code != 0:
            raise UIError(f"the MLflow UI at {self.url} stopped on its own (exit code {code}){_see(self.log)}")


def experiment_url(base: str, experiment_id: str) -> str:
    """The UI's page of an experiment: ``<base>/#/experiments/<id>``."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The UI's page of a run: ``<base>/#/experiments/<experiment id>/runs/<run id>``."""
    return f"{experiment_url(base, experiment_id)}/runs/{run_id}"


def model_version_url(base: str, name: str, version: int | str) -> str:
    """The UI's page of a registered model version: ``<base>/#/models/<name>/versions/<version>``."""
    return f"{base.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}"


def ui_url(tracking: TrackingConfig, workspace: Workspace) -> str:
    """The base URL ``supsup-fin ui`` serves by default: the tracking URI when it is a tracking
    server, else ``http://127.0.0.1:5000`` (another port when that one is taken)."""
    uri = tracking_uri(tracking, workspace)
    return uri.rstrip("/") if _is_server(uri) else f"http://{LOOPBACK}:{DEFAULT_PORT}"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_port(port: int | None) -> int:
    """``port`` if free on 127.0.0.1 (:class:`ConfigError` if taken), else :data:`DEFAULT_PORT`
    if free, else a free port the system picks."""
    if port is not None:
        if not _free(port):
            raise ConfigError(f"--port {port}: {LOOPBACK}:{port} is in use; pick another port, "
                              "or leave --port out to take a free one")
        return port
    if _free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed port in TIME_WAIT is free
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def ui_command(uri: str, artifact_root: str, port: int) -> list[str]:
    """argv of ``mlflow server`` from this interpreter on store ``uri`` at 127.0.0.1:``port`` (one worker)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root",
            artifact_root, "--host", LOOPBACK, "--port", str(port), "--workers", "1"]


@contextmanager
def mlflow_ui(
    tracking: TrackingConfig, workspace: Workspace, port: int | None = None, log_file: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[RunningUI]:
    """Yield a running MLflow UI on the tracking store once it answers; stopped on exit
    (:func:`~supsup_fin._processes.stop_process_group`: the server and its worker, nothing left
    holding the port).

    ``port``: as :func:`ui_port` picks it. The server's output goes to ``log_file``, else to
    this process's stderr. A tracking store that is a server already is its own UI: nothing is
    started. Raises :class:`~supsup_fin.errors.ConfigError` when ``port`` is taken and
    :class:`UIError` when the server does not answer within ``startup_timeout`` seconds.
    """
    uri = tracking_uri(tracking, workspace)
    chosen = None if _is_server(uri) else ui_port(port)
    client = connect(tracking, workspace)  # the store and the experiment exist before the UI shows them
    experiment_id = client.get_experiment_by_name(tracking.experiment).experiment_id
    if chosen is None:
        yield RunningUI(uri.rstrip("/"), uri, experiment_id)
        return
    url = f"http://{LOOPBACK}:{chosen}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no job runner: the UI runs no jobs
    output = log_file.open("ab") if log_file else None
    proc = subprocess.Popen(ui_command(uri, workspace.artifacts_dir.as_uri(), chosen), env=env, cwd=workspace.root,
                            stdin=subprocess.DEVNULL, stdout=output or STDERR_FD, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_until_up(url, proc, startup_timeout, log_file)
        log.info("MLflow UI at %s (pid %d) on %s", url, proc.pid, uri)
        yield RunningUI(url, uri, experiment_id, proc.pid, log_file, proc)
    finally:
        stop_process_group(proc, ((signal.SIGTERM, STOP_GRACE_S),))
        if output:
            output.close()


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float, log_file: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            raise UIError(f"mlflow server exited with code {proc.returncode} before answering at {url}{_see(log_file)}")
        if time.monotonic() > deadline:
            raise UIError(f"mlflow server did not answer at {url} within {timeout:.0f} s{_see(log_file)}")
        time.sleep(0.25)


def _see(log_file: Path | None) -> str:
    """``; see <log>: <its last line>`` (empty without a log)."""
    if log_file is None:
        return ""
    lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()] if log_file.exists() else []
    return f"; see {log_file}" + (f": {lines[-1].strip()[:200]}" if lines else "")
