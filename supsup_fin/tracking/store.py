"""The MLflow tracking store: which one, and the experiment inside it."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

import supsup_fin
from supsup_fin.config import TrackingConfig
from supsup_fin.workspace import Workspace, process_tags

STORE_LOCK_TIMEOUT_S = 300.0
"""Seconds a command waits while another one creates the workspace's store (migrations take seconds)."""

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
    if uri == f"sqlite:///{workspace.mlflow_db}":  # two first commands at once: one creates, one waits
        with workspace.lock("store", timeout=STORE_LOCK_TIMEOUT_S, what="creating the MLflow store"):
            client = _open(tracking, workspace, uri)
    else:
        client = _open(tracking, workspace, uri)
    mlflow.set_experiment(tracking.experiment)
    return client


def _open(tracking: TrackingConfig, workspace: Workspace, uri: str) -> MlflowClient:
    """The client on ``uri`` (creating the store's tables on first use) with the experiment made."""
    client = MlflowClient(uri, registry_uri=uri)
    client.search_registered_models(max_results=1)  # the registry store too: made on first use
    if client.get_experiment_by_name(tracking.experiment) is None:
        location = None if tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") else workspace.artifacts_dir.as_uri()
        client.create_experiment(tracking.experiment, artifact_location=location)
        log.info("created experiment %r in %s", tracking.experiment, uri)
    return client


def run_tags() -> dict[str, str]:
    """Tags every run gets: the code that runs (:func:`code_tags`) and its process (pid, host)."""
    return {**code_tags(), **process_tags()}


CODE_TAG = "code.sha256"
"""Run tag: sha256 of the source files of ``supsup_fin`` and ``pipelines`` (:func:`source_sha256`)."""


def code_tags() -> dict[str, str]:
    """The code that runs: its source hash and package version, plus the git commit and dirty
    flag when the packages are a git checkout's (not, say, installed into a virtualenv inside one)."""
    root = _packages_root()
    tags = {CODE_TAG: source_sha256(), "code.version": supsup_fin.__version__}
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == root:
        tags |= git_commit(root)
    return tags


def _packages_root() -> Path:
    """The directory holding the ``supsup_fin`` and ``pipelines`` packages."""
    return Path(supsup_fin.__file__).resolve().parents[1]


@functools.cache
def source_sha256() -> str:
    """Hex sha256 of every ``.py`` file of ``supsup_fin`` and ``pipelines`` (relative path and bytes,
    in path order), read once per process: the code this process imported."""
    root = _packages_root()
    h = hashlib.sha256()
    for path in sorted(p for pkg in ("supsup_fin", "pipelines") for p in (root / pkg).rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _git(path: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(path: str | Path = ".") -> dict[str, str]:
    """The checkout's commit and whether it has uncommitted changes (empty outside git)."""
    sha = _git(Path(path), "rev-parse", "HEAD")
    if sha is None:
        return {}
    dirty = _git(Path(path), "status", "--porcelain")
    return {"git_commit": sha, "git_dirty": str(bool(dirty)).lower()}
