"""Scale-out on Dask: separately started ``dask scheduler`` and ``dask worker`` processes, a real
Prefect server; the masks equal a single-process run with one training group per market."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, small_config_dict

from supsup_fin.config import config_from_dict
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.training import train_tasks
from supsup_fin.workspace import Workspace

pytestmark = pytest.mark.slow
START_S = 90


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_S
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start (exit {proc.poll()})")
        time.sleep(0.3)


def test_dask_run_on_a_separate_scheduler_and_workers_is_bit_identical(small_pipeline: dict, tmp_path: Path) -> None:
    import mlflow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines._server import prefect_server, stop_process_group
    from pipelines.retrain import run_retrain
    from supsup_fin.tracking.registry import download_forecaster

    ws = Workspace.resolve(tmp_path / "ws")
    port = free_port()
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    logs = (tmp_path / "dask.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    os.environ.pop("PREFECT_API_URL", None)
    try:
        with prefect_server(ws, free_port()) as api_url:
            worker_env = {**env, "PREFECT_API_URL": api_url}  # process workers report to the real server
            procs.append(subprocess.Popen(
                [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                env=worker_env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_port(port, procs[0], "dask scheduler")
            procs.append(subprocess.Popen(
                [str(bin_dir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1",
                 "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                env=worker_env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True))
            tree = small_config_dict(runtime={"threads": 1, "task_runner": "dask",
                                              "dask_address": f"tcp://127.0.0.1:{port}"})
            cfg = config_from_dict(tree)
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                summary = run_retrain(cfg, ws.root)
    finally:
        for p in reversed(procs):
            stop_process_group(p)
        logs.close()

    mlflow.set_tracking_uri(summary["tracking_uri"])
    version = str(summary["registered_model"]["version"])
    remote = RegimeGatedForecaster.load(download_forecaster(cfg.tracking.model_name, version, tempfile.mkdtemp())).bank
    single = config_from_dict(small_config_dict(runtime={"threads": 1, "training_groups": "market"}))
    _, local = train_tasks(small_pipeline["tasks"], single)
    assert sorted(remote.names) == sorted(local.names)
    for name in local.names:
        assert all(torch.equal(a, b) for a, b in zip(remote[name].layers, local[name].layers)), name


def test_dask_local_cluster_by_default_is_bit_identical(small_pipeline: dict, tmp_path: Path) -> None:
    """No address: a local process cluster, and a real Prefect server started for the run."""
    import mlflow

    from pipelines.retrain import run_retrain
    from supsup_fin.tracking.registry import download_forecaster

    os.environ.pop("PREFECT_API_URL", None)
    cfg = config_from_dict(small_config_dict(runtime={"threads": 1, "task_runner": "dask", "n_workers": 2},
                                             schedule={"prefect_port": free_port()}))
    summary = run_retrain(cfg, tmp_path / "ws")
    assert "PREFECT_API_URL" not in os.environ
    mlflow.set_tracking_uri(summary["tracking_uri"])
    remote = RegimeGatedForecaster.load(download_forecaster(cfg.tracking.model_name, "1", tempfile.mkdtemp())).bank
    single = config_from_dict(small_config_dict(runtime={"threads": 1, "training_groups": "market"}))
    _, local = train_tasks(small_pipeline["tasks"], single)
    for name in local.names:
        assert all(torch.equal(a, b) for a, b in zip(remote[name].layers, local[name].layers)), name
