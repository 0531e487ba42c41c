"""``supsup-fin schedule`` against a real local Prefect server it starts and stops: deployments with
the config's crons exist, a triggered run completes, Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, small_config_dict

from supsup_fin.live.table import read_forecasts
from supsup_fin.workspace import Workspace

START_S = 120
RUN_S = 240


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow  # a real Prefect server and its deployments: ~65 s
def test_schedule_serves_deployments_on_a_real_server_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines._server import stop_process_group

    tree = small_config_dict(schedule={"retrain_cron": "15 21 * * 1-5", "forecast_cron": "45 21 * * 1-5",
                                       "timezone": "Europe/Paris"})
    cfg_file = tmp_path / "small.json"
    cfg_file.write_text(json.dumps(tree))
    home, port = tmp_path / "ws", free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cli = Path(sys.executable).with_name("supsup-fin")
    errlog = (tmp_path / "schedule.err").open("wb")
    proc = subprocess.Popen([str(cli), "schedule", "-c", str(cfg_file), "--port", str(port), "--home", str(home), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=errlog, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_S)
        assert ready, "schedule printed nothing"
        info = json.loads(proc.stdout.readline())
        assert info["api_url"] == api and info["ui"] == f"http://127.0.0.1:{port}"
        assert info["env"] == {"PREFECT_API_URL": api}  # what the prefect CLI needs to reach this server
        assert {d["name"] for d in info["deployments"]} == {"retrain/small-retrain", "forecast/small-forecast"}
        assert _up(f"{api}/health")

        with temporary_settings(updates={PREFECT_API_URL: api}):
            import asyncio

            async def schedules() -> dict[str, tuple[str, str]]:
                async with get_client() as client:
                    deadline = time.monotonic() + 60  # serve() registers the deployments just after the print
                    while True:
                        try:
                            found = {n: await client.read_deployment_by_name(n)
                                     for n in ("retrain/small-retrain", "forecast/small-forecast")}
                            return {n: (d.schedules[0].schedule.cron, d.schedules[0].schedule.timezone)
                                    for n, d in found.items()}
                        except Exception:
                            if time.monotonic() > deadline:
                                raise
                            await asyncio.sleep(0.5)

            assert asyncio.run(schedules()) == {"retrain/small-retrain": ("15 21 * * 1-5", "Europe/Paris"),
                                                "forecast/small-forecast": ("45 21 * * 1-5", "Europe/Paris")}
            run = run_deployment("retrain/small-retrain", timeout=RUN_S)
            assert run.state.is_completed(), run.state
            run = run_deployment("forecast/small-forecast", timeout=RUN_S)
            assert run.state.is_completed(), run.state
        table = read_forecasts(Workspace.resolve(home))
        assert sorted(table["market"]) == ["syn_a", "syn_b"] and set(table["model_version"]) == {1}

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0, (tmp_path / "schedule.err").read_text()[-2000:]
        assert not _up(f"{api}/health")  # the server went with it
    finally:
        stop_process_group(proc)
        proc.stdout.close()
        errlog.close()


def test_a_swallowed_ctrl_c_is_repeated_after_the_grace_period() -> None:
    """A shutdown that swallows the first interrupt gets a second one ``grace_s`` later, and the
    previous signal handlers are back afterwards."""
    import threading

    from pipelines.schedule import bounded_interrupt

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    caught: list[float] = []
    start = time.monotonic()
    with bounded_interrupt(grace_s=0.5):
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
        for _ in range(2):  # a stuck shutdown: catches the interrupt and carries on waiting
            try:
                time.sleep(10)
            except KeyboardInterrupt:
                caught.append(time.monotonic() - start)
    assert len(caught) == 2 and 0.4 < caught[1] - caught[0] < 3.0, caught
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
