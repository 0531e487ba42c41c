"""Champion / challenger bookkeeping on the MLflow model registry (aliases, version tags)."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from supsup_fin.config import TrackingConfig
from supsup_fin.errors import RegistryError, SupsupError
from supsup_fin.forecaster.persist import check_manifest, load_forecaster
from supsup_fin.masks import FrozenNet, MaskBank
from supsup_fin.regimes import RegimeModel
from supsup_fin.tracking.store import connect
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
HIGHER_IS_BETTER = {"accuracy": True, "log_loss": False}
HISTORY_TAG = "champion.history"  # registered-model tag: versions that held champion, oldest first
MANIFEST_TAG = "forecaster.manifest_sha256"  # version tag: sha256 of the forecaster's manifest.json
INPUTS_TAG = "inputs.sha256"  # version and run tag: sha256 of the retrain's data hashes, config and code
BLOCKED = "not promoted without --force"  # how the reason of a version kept back by a blocker starts


@dataclass(frozen=True)
class Decision:
    """Whether a new version became champion, and the scores that decided it."""

    version: int
    promoted: bool
    metric: str
    score: float
    baseline_score: float
    champion_version: int | None
    champion_score: float | None
    reason: str
    champion_unloadable: str | None = None
    blocked_by: str | None = None

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": str(v) for k, v in asdict(self).items()}


def _beats(a: float, b: float, metric: str, margin: float) -> bool:
    return a > b + margin if HIGHER_IS_BETTER[metric] else a < b - margin


def champion_version(client: MlflowClient, name: str) -> int | None:
    """The version holding the champion alias, or None."""
    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def champion_history(client: MlflowClient, name: str) -> list[int]:
    """Versions that held the champion alias, oldest first (the current one last)."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    raw = tags.get(HISTORY_TAG, "")
    return [int(v) for v in raw.split(",") if v]


def set_champion(client: MlflowClient, name: str, version: int) -> None:
    """Point ``champion`` at ``version`` and append it to the champion history."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    history = champion_history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(map(str, history)))


def decide(
    client: MlflowClient, name: str, version: int, metric: str, score: float, baseline: float,
    margin: float, *, blockers: list[str] | None = None, force: bool = False,
) -> Decision:
    """Tag the new version ``challenger``; make it ``champion`` if it beats the baseline and the
    current champion's recorded validation score by ``margin``. Records the decision as tags.

    The champion is loaded first (files checked against their registered hashes): one that
    cannot be loaded counts as no champion, said in a warning and recorded in the tag
    ``promotion.champion_unloadable``. ``blockers`` (e.g. an HMM that fell back to one regime)
    keep the version from being promoted unless ``force``.
    """
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    champ = champion_version(client, name)
    champ_score, unloadable = None, None
    if champ is not None:
        unloadable = version_problem(client, name, champ)
        if unloadable:
            log.warning("model %s: champion v%d cannot be loaded (%s); it counts as no champion", name, champ, unloadable)
        else:
            tags = client.get_model_version(name, str(champ)).tags
            champ_score = float(tags["valid_score"]) if "valid_score" in tags else None
    vs = (f"champion v{champ} ({champ_score:.4f})" if champ_score is not None
          else f"champion v{champ}, which cannot be loaded" if unloadable else "no champion")
    blocked = "; ".join(blockers or []) or None
    if not _beats(score, baseline, metric, margin):
        promoted, reason = False, f"valid {metric} {score:.4f} does not beat the class prior {baseline:.4f}"
    elif champ_score is not None and not _beats(score, champ_score, metric, margin):
        promoted, reason = False, f"valid {metric} {score:.4f} does not beat champion v{champ} ({champ_score:.4f})"
    elif blocked and not force:
        promoted, reason = False, f"{BLOCKED}: {blocked}"
    else:
        promoted = True
        reason = f"valid {metric} {score:.4f} beats the class prior {baseline:.4f} and {vs}"
        if blocked:
            reason += f" (forced despite: {blocked})"
    decision = Decision(version, promoted, metric, score, baseline, champ, champ_score, reason,
                        champion_unloadable=unloadable, blocked_by=blocked)
    for k, v in {"valid_metric": metric, "valid_score": str(score), "valid_baseline": str(baseline),
                 **decision.as_tags()}.items():
        client.set_model_version_tag(name, str(version), k, v)
    if promoted:
        set_champion(client, name, version)
    log.info("model %s v%d: %s", name, version, reason)
    return decision


def inputs_sha256(data_hashes: dict[str, str], config: dict[str, Any], code: str) -> str:
    """Hex sha256 of what a retrain is made of: each market's data hash, the flat config and the code hash."""
    doc = {"data": data_hashes, "config": config, "code": code}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def unchanged_since(client: MlflowClient, name: str, inputs: str) -> int | None:
    """The champion's version when it was made from the same ``inputs`` (:func:`inputs_sha256`)
    and still loads, else None: retraining would only register a copy of it."""
    champ = champion_version(client, name)
    if champ is None or client.get_model_version(name, str(champ)).tags.get(INPUTS_TAG) != inputs:
        return None
    problem = version_problem(client, name, champ)
    if problem:
        log.info("model %s: champion v%d has these inputs but cannot be loaded (%s); registering anew",
                 name, champ, problem)
        return None
    return champ


def aliases(client: MlflowClient, name: str, version: int) -> list[str]:
    return list(client.get_model_version(name, str(version)).aliases)


def delete_version(client: MlflowClient, name: str, version: int) -> None:
    """Remove a version that was registered by a run that then failed."""
    try:
        client.delete_model_version(name, str(version))
    except MlflowException as err:  # the version is already gone: nothing to undo
        log.warning("could not delete %s v%d: %s", name, version, err)


def load_champion(name: str) -> tuple[mlflow.pyfunc.PyFuncModel, int]:
    """The pyfunc model behind ``models:/<name>@champion`` and its version number."""
    client = MlflowClient()
    version = champion_version(client, name)
    if version is None:
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            versions = []
        hint = f"; latest version is {max(int(v.version) for v in versions)}" if versions else "; run `supsup-fin retrain` first"
        raise RegistryError(f"registered model {name!r} has no '{CHAMPION}' alias{hint}")
    return mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}"), version


def download_forecaster(name: str, version: str, dest: str) -> str:
    """Download a registered version's forecaster directory (``version``: a number or an alias)."""
    uri = f"models:/{name}/{version}" if version.isdigit() else f"models:/{name}@{version}"
    try:
        root = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dest)
    except (MlflowException, OSError) as err:
        msg = err.message.splitlines()[0] if isinstance(err, MlflowException) else str(err)
        raise RegistryError(f"cannot load {uri}: {msg}") from None
    return f"{root.rstrip('/')}/artifacts/forecaster"


@contextmanager
def checked_version(client: MlflowClient, name: str, version: int) -> Iterator[Path]:
    """A registered version's forecaster directory, downloaded and checked against the manifest
    hash recorded at registration (:class:`~supsup_fin.errors.SupsupError` naming the file if not)."""
    expected = client.get_model_version(name, str(version)).tags.get(MANIFEST_TAG)
    with tempfile.TemporaryDirectory() as tmp:
        fdir = Path(download_forecaster(name, str(version), tmp))
        check_manifest(fdir, expected)
        yield fdir


def version_problem(client: MlflowClient, name: str, version: int) -> str | None:
    """Why registered ``version`` cannot serve forecasts (files, hashes, parameters), or None."""
    expected = client.get_model_version(name, str(version)).tags.get(MANIFEST_TAG)
    try:
        with tempfile.TemporaryDirectory() as tmp:  # load_forecaster checks the files against the manifest
            load_forecaster(download_forecaster(name, str(version), tmp), expected_sha256=expected)
    except (SupsupError, MlflowException) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def champion_bank(tracking: TrackingConfig, workspace: Workspace, net: FrozenNet) -> tuple[MaskBank | None, str]:
    """The champion's mask bank on ``net`` and its label (``"v3"``); ``(None, "")`` when there is no
    champion, its files fail their checks, or its bank was built on another base network."""
    client = connect(tracking, workspace)
    version = champion_version(client, tracking.model_name)
    if version is None:
        return None, ""
    try:
        with checked_version(client, tracking.model_name, version) as fdir:
            bank = MaskBank.load(fdir / "bank", net)
    except SupsupError as err:
        log.info("champion v%d's masks cannot be reused: %s", version, err)
        return None, ""
    return bank, f"v{version}"


def champion_regimes(tracking: TrackingConfig, workspace: Workspace) -> tuple[dict[str, RegimeModel], str]:
    """The champion's fitted HMM of each market and its label (``"v3"``); ``({}, "")`` without one
    (or when its files fail their checks).

    A retrain aligns each market's refit to these (``RegimeModel.fit(previous=...)``), so regime
    names keep their meaning from one registered version to the next.
    """
    client = connect(tracking, workspace)
    version = champion_version(client, tracking.model_name)
    if version is None:
        return {}, ""
    try:
        with checked_version(client, tracking.model_name, version) as fdir:
            spec = json.loads((fdir / "forecaster.json").read_text())
            models = {m: RegimeModel.from_dict(d["regime"]) for m, d in spec["markets"].items()}
    except (SupsupError, OSError, KeyError, ValueError, TypeError) as err:
        log.info("champion v%d's regime models cannot be read: %s", version, err)
        return {}, ""
    return models, f"v{version}"
