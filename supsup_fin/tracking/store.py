"""The MLflow tracking store: which one, and the experiment inside it."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from supsup_fin.config import TrackingConfig
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)


def tracking_uri(tracking: TrackingConfig, workspace: Workspace) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``, else sqlite in the workspace."""
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri or f"sqlite:///{workspace.mlflow_db}"


def connect(tracking: TrackingConfig, workspace: Workspace) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists (artifacts in the workspace)."""
    uri = tracking_uri(tracking, workspace)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that, or a later connect() to another
    # workspace in this process would be sent to this store ("MLFLOW_TRACKING_URI wins")
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    client = MlflowClient(uri, registry_uri=uri)
    if client.get_experiment_by_name(tracking.experiment) is None:
        location = None if tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") else workspace.artifacts_dir.as_uri()
        client.create_experiment(tracking.experiment, artifact_location=location)
        log.info("created experiment %r in %s", tracking.experiment, uri)
    mlflow.set_experiment(tracking.experiment)
    return client


def git_commit(path: str | Path = ".") -> dict[str, str]:
    """The checkout's commit and whether it has uncommitted changes (empty outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    if sha.returncode != 0:
        return {}
    return {"git_commit": sha.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}
