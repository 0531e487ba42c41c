"""Registry housekeeping: list versions, move the champion alias by hand, prune old artifacts.

Every hand move is recorded twice: as tags on the version (``manual.*``) and as a small MLflow
run (``promote-vN`` / ``rollback-vN``) in the experiment. The registered model keeps the
champion history (tag ``champion.history``, comma-separated versions) so ``rollback`` knows
where to go back to, and retention never deletes a version that was ever champion.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from supsup_fin.errors import RegistryError
from supsup_fin.tracking.describe import describe_model
from supsup_fin.tracking.recovery import DECIDED_TAG, INCOMPLETE_TAG, decided
from supsup_fin.tracking.registry import (
    CHAMPION,
    HISTORY_TAG,
    champion_history,
    champion_version,
    set_champion,
    version_problem,
)
from supsup_fin.tracking.store import run_tags

log = logging.getLogger(__name__)

def _versions(client: MlflowClient, name: str) -> list[Any]:
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        found = []
    if not found:
        raise RegistryError(f"registered model {name!r} has no versions; run `supsup-fin retrain` first")
    # search results carry no aliases: read each version in full
    return [client.get_model_version(name, str(v)) for v in sorted(int(v.version) for v in found)]


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """One row per version: aliases (where the champion is now), ``decision`` (the champion gate's
    at registration: :func:`decision`), ``state`` (:func:`state`), validation score and baseline,
    data range."""
    history = set(champion_history(client, name))
    rows = []
    for v in _versions(client, name):
        t = v.tags
        rows.append({
            "version": int(v.version), "aliases": sorted(v.aliases), "decision": decision(t), "state": state(t),
            "created": dt.datetime.fromtimestamp(v.creation_timestamp / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "metric": t.get("valid_metric"),
            "valid_score": float(t["valid_score"]) if "valid_score" in t else None,
            "baseline": float(t["valid_baseline"]) if "valid_baseline" in t else None,
            "data_start": t.get("data_start"), "data_end": t.get("data_end"),
            "markets": t.get("markets"),
            "carried_masks": t.get("carried_masks"),
            "was_champion": int(v.version) in history,
            "pruned": t.get("pruned") == "true",
            "incomplete": t.get(INCOMPLETE_TAG) == "true",
            "prune_error": t.get("prune_error"),
            "run_id": v.run_id,
        })
    return rows


def decision(tags: dict[str, str]) -> str:
    """What the retrain decided when it registered the version (its ``promotion.*`` tags):
    ``promoted`` (``promoted (forced)`` past a blocker), ``kept champion vN``, ``below the class
    prior``, ``blocked: <why>``, or ``none`` (its retrain stopped before deciding)."""
    if not decided(tags):
        return "none"
    reason, blocked = tags.get("promotion.reason", ""), tags.get("promotion.blocked_by", "None")
    if tags[DECIDED_TAG] == "True":
        return "promoted (forced)" if blocked != "None" else "promoted"
    if reason.startswith("not promoted without --force"):
        return f"blocked: {blocked}"
    if f"does not beat champion v{tags.get('promotion.champion_version')}" in reason:
        return f"kept champion v{tags['promotion.champion_version']}"
    return "below the class prior" if "class prior" in reason else reason


def state(tags: dict[str, str]) -> str:
    """``incomplete`` (registered by a retrain that stopped before deciding), ``pruned`` (model
    files deleted by retention), ``prune failed`` (their delete failed; tried again) or ``ok``."""
    if tags.get(INCOMPLETE_TAG) == "true":
        return "incomplete"
    if tags.get("pruned") == "true":
        return "pruned"
    return "prune failed" if "prune_error" in tags else "ok"


def _record(client: MlflowClient, name: str, version: int, action: str, previous: int | None, reason: str) -> str:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for k, v in {f"manual.{action}": stamp, "manual.last_action": action,
                 "manual.previous_champion": str(previous), "manual.reason": reason}.items():
        client.set_model_version_tag(name, str(version), k, v)
    with mlflow.start_run(run_name=f"{action}-v{version}") as run:
        mlflow.set_tags({"supsup_fin.flow": action, "model_name": name, "champion_version": str(version),
                         "previous_champion": str(previous), "reason": reason, **run_tags()})
    log.info("%s %s: champion v%s -> v%d (%s)", action, name, previous, version, reason)
    return run.info.run_id


def promote(client: MlflowClient, name: str, version: int, reason: str = "promoted by hand") -> dict[str, Any]:
    """Make ``version`` the champion by hand.

    It must exist, have a recorded promotion decision (a version whose retrain was killed
    before deciding never qualifies), still have its artifacts, and load (files checked against
    their registered hashes).
    """
    known = {int(v.version): v for v in _versions(client, name)}
    if version not in known:
        raise RegistryError(f"model {name!r} has no version {version}; versions: {sorted(known)}")
    if known[version].tags.get("pruned") == "true":
        raise RegistryError(f"model {name!r} v{version} was pruned by retention; its artifacts are gone")
    if not decided(known[version].tags):
        raise RegistryError(f"model {name!r} v{version} is incomplete: the retrain that registered it stopped "
                            "before the champion gate decided, so it cannot be promoted")
    previous = champion_version(client, name)
    if previous == version:
        raise RegistryError(f"model {name!r} v{version} is already the champion")
    problem = version_problem(client, name, version)
    if problem:
        raise RegistryError(f"model {name!r} v{version} cannot be loaded, so it cannot be promoted: {problem}")
    set_champion(client, name, version)
    run_id = _record(client, name, version, "promote", previous, reason)
    describe_model(client, name, f"v{version} promoted by hand ({reason})")
    return {"model": name, "champion": version, "previous_champion": previous, "run_id": run_id, "reason": reason}


def rollback(client: MlflowClient, name: str, reason: str = "rolled back by hand") -> dict[str, Any]:
    """Give the champion alias back to the version that held it before the current one."""
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    history = champion_history(client, name)
    while history and history[-1] == current:
        history.pop()
    known = {int(v.version) for v in _versions(client, name)}
    candidates = [v for v in history if v in known and v != current]
    if not candidates:
        raise RegistryError(f"model {name!r}: champion v{current} has no earlier champion to roll back to")
    target = candidates[-1]
    client.set_registered_model_alias(name, CHAMPION, str(target))
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(map(str, history[: history.index(target) + 1])))
    run_id = _record(client, name, target, "rollback", current, reason)
    describe_model(client, name, f"rolled back from v{current} to v{target} ({reason})")
    return {"model": name, "champion": target, "previous_champion": current, "run_id": run_id, "reason": reason}


MODEL_ARTIFACTS = "mask_bank"
"""The run's artifact folder holding a copy of the model files (pruned with the logged model)."""


def prune(client: MlflowClient, name: str, keep_last: int) -> list[int]:
    """Delete the model artifacts of versions outside the last ``keep_last`` that never were champion.

    Only the model files go (the logged model and the run's ``mask_bank`` copy); the run's
    reports, plots and metrics stay. The version entries stay too (tagged ``pruned=true``) so
    scores and decisions remain listed. A version whose delete failed is not marked pruned: it
    is tagged ``prune_error`` with the reason and tried again next time. Returns the versions
    pruned now.
    """
    keep = set(champion_history(client, name))
    versions = _versions(client, name)
    keep |= {int(v.version) for v in versions[-keep_last:]}
    keep |= {int(v.version) for v in versions if v.aliases}
    pruned = []
    for v in versions:
        if int(v.version) in keep or v.tags.get("pruned") == "true":
            continue
        errors = []
        for uri, path in _model_artifacts(client, v):
            try:
                get_artifact_repository(uri).delete_artifacts(path)
            except (OSError, MlflowException, NotImplementedError) as err:
                errors.append(f"{uri}{'/' + path if path else ''}: {type(err).__name__}: {err}")
        if errors:
            client.set_model_version_tag(name, v.version, "prune_error", "; ".join(errors)[:1000])
            log.warning("retention: could not delete the model files of %s v%s (kept, not marked pruned): %s",
                        name, v.version, "; ".join(errors))
            continue
        client.set_model_version_tag(name, v.version, "pruned", "true")
        if "prune_error" in v.tags:
            client.delete_model_version_tag(name, v.version, "prune_error")
        pruned.append(int(v.version))
    if pruned:
        log.info("retention: pruned %s v%s (keeping last %d and every champion)", name, pruned, keep_last)
    return pruned


def logged_model_id(version: Any) -> str | None:
    """The id of the logged model behind a registered version (its ``models:/m-...`` source)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = getattr(version, "source", "") or ""
    return source.removeprefix("models:/").split("/")[0] if source.startswith("models:/m-") else None


def _model_artifacts(client: MlflowClient, version: Any) -> list[tuple[str, str | None]]:
    """``(artifact repository uri, path inside it)`` of a version's model files."""
    found: list[tuple[str, str | None]] = []
    model_id = logged_model_id(version)
    if model_id:
        try:
            found.append((client.get_logged_model(model_id).artifact_location, None))
        except MlflowException:
            pass
    if version.run_id:
        try:
            found.append((client.get_run(version.run_id).info.artifact_uri, MODEL_ARTIFACTS))
        except MlflowException:
            pass
    return found


__all__ = ["list_versions", "promote", "prune", "rollback"]
