"""``supsup-fin ui``: the MLflow UI on the workspace's tracking store at 127.0.0.1, printed once it
answers; it shows the registered champion, its run and their artifacts at the links the library
gives; a taken --port is a one-line error; SIGTERM stops it and its server, freeing the port."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import psutil
import pytest
import yaml
from browser import open_page, skip_without_browser
from conftest import free_port, session_processes, small_config_dict
from typer.testing import CliRunner

from supsup_fin.cli import app
from supsup_fin.tracking import log_retrain
from supsup_fin.tracking.ui import DEFAULT_PORT, model_version_url, run_url, ui_port
from supsup_fin.workspace import Workspace

STARTUP_S = 180


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _port_free(port: int) -> bool:
    """Whether nothing holds 127.0.0.1:``port`` (a closed connection's TIME_WAIT aside)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def ui(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``supsup-fin ui --json`` on a workspace whose champion is v1, in its own session."""
    from supsup_fin._processes import stop_process_group

    p = small_pipeline
    ws = Workspace.resolve(tmp_path_factory.mktemp("ui"))
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri exports the URI: drop an earlier test's
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                          forecaster=p["forecaster"])
    assert "champion" in run.aliases, run.decision.reason
    config = ws.root / "config.yaml"
    config.write_text(yaml.safe_dump(small_config_dict()))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    stderr = (ws.root / "ui.err").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "supsup_fin.cli", "ui", "-c", str(config), "--home", str(ws.root),
                             "--port", str(port), "--json"], env=env, stdout=subprocess.PIPE, stderr=stderr,
                            start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_S)
        line = proc.stdout.readline() if ready else b""
        assert line, f"ui printed nothing: {(ws.root / 'ui.err').read_text()[-2000:]}"
        yield {"info": json.loads(line), "port": port, "proc": proc, "ws": ws, "run": run, "config": config}
    finally:
        stop_process_group(proc)
        proc.stdout.close()
        stderr.close()


def test_ui_prints_one_json_line_once_it_answers_on_loopback(ui: dict) -> None:
    info, ws = ui["info"], ui["ws"]
    assert info == {"url": f"http://127.0.0.1:{ui['port']}", "tracking_uri": f"sqlite:///{ws.mlflow_db}",
                    "pid": info["pid"]}
    with urllib.request.urlopen(f"{info['url']}/health", timeout=5) as r:  # up when printed: no retry
        assert r.status == 200
    server = psutil.Process(info["pid"])
    assert os.getsid(server.pid) == server.pid != ui["proc"].pid  # its own session, stopped as a whole
    assert "mlflow" in server.cmdline() and "server" in server.cmdline()
    listening = {c.laddr for q in (server, *server.children(recursive=True))
                 for c in q.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", ui["port"])}


def test_ui_shows_the_workspace_champion_its_run_and_artifacts(ui: dict) -> None:
    base, run = ui["info"]["url"], ui["run"]
    api = f"{base}/ajax-api/2.0/mlflow"
    version = _get(f"{api}/registered-models/alias?name={quote(run.model_name)}&alias=champion")["model_version"]
    assert version["version"] == "1" and version["run_id"] == run.run_id
    info = _get(f"{api}/runs/get?run_id={run.run_id}")["run"]["info"]
    artifacts = {f["path"] for f in _get(f"{api}/artifacts/list?run_id={run.run_id}")["files"]}
    assert {"report", "mask_bank"} <= artifacts  # the run's artifact root in the workspace, read by the UI
    csv = f"{base}/get-artifact?path=report/eval_tasks.csv&run_uuid={run.run_id}"
    with urllib.request.urlopen(csv, timeout=30) as r:
        assert r.read().startswith(b"task,")
    experiment = info["experiment_id"]
    assert run_url(base, experiment, run.run_id) == f"{base}/#/experiments/{experiment}/runs/{run.run_id}"
    assert model_version_url(base, run.model_name, 1) == f"{base}/#/models/{run.model_name}/versions/1"


@pytest.mark.slow
@skip_without_browser
def test_run_and_version_links_open_their_pages(ui: dict) -> None:
    base, run = ui["info"]["url"], ui["run"]
    experiment = _get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run.run_id}")["run"]["info"]["experiment_id"]
    with open_page(run_url(base, experiment, run.run_id), timeout_s=60) as page:
        page.get_by_text(run.run_id).first.wait_for()
        assert "retrain-small" in page.inner_text("body")
    with open_page(model_version_url(base, run.model_name, 1), timeout_s=60) as page:
        page.get_by_text("Version 1").first.wait_for()
        assert "@ champion" in " ".join(page.inner_text("body").split())


def test_a_taken_port_is_a_one_line_error(ui: dict) -> None:
    result = CliRunner().invoke(app, ["ui", "-c", str(ui["config"]), "--home", str(ui["ws"].root),
                                      "--port", str(ui["port"])])
    assert result.exit_code == 1 and result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"--port {ui['port']}: 127.0.0.1:{ui['port']} is in use" in lines[0], result.stderr


def test_without_port_the_default_is_taken_when_free_else_another() -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEFAULT_PORT))
            s.listen()
        except OSError:
            pass  # taken already
        chosen = ui_port(None)
    assert chosen != DEFAULT_PORT and _port_free(chosen)


def test_sigterm_stops_the_ui_and_its_server(ui: dict) -> None:
    """Runs last on the module's UI: SIGTERM to the command's pid ends it and the whole server
    (its uvicorn worker included), and frees the port."""
    proc, server = ui["proc"], ui["info"]["pid"]
    assert session_processes(server)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while (session_processes(server) or session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(server) == [] and session_processes(proc.pid) == []
    assert _port_free(ui["port"])
