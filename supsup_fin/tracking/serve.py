"""Serving the champion with MLflow's model server on 127.0.0.1.

The server resolves ``models:/<name>@champion`` when it starts: restart it after a promotion.
Payload: the model's logged input example (``serving_input_example.json``), i.e.
``{"dataframe_split": {"columns": ["market", "date", "close", ...], "data": [[...], ...]}}``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from supsup_fin.config import TrackingConfig
from supsup_fin.errors import RegistryError
from supsup_fin.tracking.registry import CHAMPION, load_champion
from supsup_fin.tracking.store import connect, tracking_uri
from supsup_fin.workspace import Workspace


def serve_command(tracking: TrackingConfig, workspace: Workspace, port: int, workers: int = 1) -> tuple[list[str], dict[str, str], int]:
    """``(argv, env, champion version)`` of ``mlflow models serve`` for the champion on 127.0.0.1:``port``.

    Raises :class:`RegistryError` when there is no champion yet.
    """
    connect(tracking, workspace)
    _, version = load_champion(tracking.model_name)
    bin_dir = Path(sys.executable).parent  # the server execs uvicorn from PATH: the venv's bin first
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(tracking, workspace),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{tracking.model_name}@{CHAMPION}",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    return argv, env, version


def serving_example(tracking: TrackingConfig, workspace: Workspace) -> dict[str, Any]:
    """The champion's logged input example in the server's JSON form."""
    connect(tracking, workspace)
    uri = f"models:/{tracking.model_name}@{CHAMPION}/serving_input_example.json"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except MlflowException as err:
            raise RegistryError(f"cannot read {uri}: {err.message.splitlines()[0]}") from None
        return json.loads(Path(path).read_text())
