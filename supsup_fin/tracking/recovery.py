"""What a killed process leaves in the store, found and closed at the next start.

A process killed mid-run (``kill -9``, a lost machine) can leave

- MLflow runs in ``RUNNING`` forever: each run carries its process's pid and host
  (:func:`~supsup_fin.workspace.process_tags`); a ``RUNNING`` run whose process is gone is ended
  as ``FAILED`` and tagged ``supsup_fin.abandoned`` with the reason;
- a registered version with no recorded decision (killed between "Created version N" and the
  champion gate): it is tagged ``incomplete=true`` and ``promotion.promoted=false`` with the
  reason, so neither the next retrain nor ``promote`` ever treats it as a candidate.

:func:`recover_store` runs both; the retrain flow calls it holding the workspace's retrain lock,
so no live retrain's run or version can be mistaken for a dead one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from supsup_fin.workspace import process_alive

log = logging.getLogger(__name__)

ABANDONED_TAG = "supsup_fin.abandoned"
INCOMPLETE_TAG = "incomplete"
DECIDED_TAG = "promotion.promoted"


@dataclass
class Recovery:
    """What :func:`recover_store` closed: run ids ended as FAILED, versions marked incomplete."""

    failed_runs: list[str] = field(default_factory=list)
    incomplete_versions: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.failed_runs or self.incomplete_versions)

    def describe(self) -> str:
        parts = []
        if self.failed_runs:
            parts.append(f"{len(self.failed_runs)} run(s) left RUNNING by a killed process marked FAILED")
        if self.incomplete_versions:
            parts.append("version(s) " + ", ".join(f"v{v}" for v in self.incomplete_versions)
                         + " registered by a run that never decided their promotion marked incomplete")
        return "; ".join(parts)


def fail_abandoned_runs(client: MlflowClient, experiment_id: str, *, flows_owned: tuple[str, ...] = ()) -> list[str]:
    """End every ``RUNNING`` run of the experiment whose process is gone as ``FAILED``.

    A run whose liveness cannot be told (no pid tags, another host) is left alone, unless its
    ``supsup_fin.flow`` tag is in ``flows_owned`` (flows the caller knows no one else runs now).
    """
    failed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        alive = process_alive(run.data.tags)
        if alive or (alive is None and run.data.tags.get("supsup_fin.flow") not in flows_owned):
            continue
        reason = (f"its process (pid {run.data.tags.get('supsup_fin.pid', '?')} on "
                  f"{run.data.tags.get('supsup_fin.host', '?')}) ended without closing it")
        client.set_tag(run.info.run_id, ABANDONED_TAG, reason)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        log.warning("run %s (%s) was left RUNNING: %s; marked FAILED", run.info.run_id,
                    run.info.run_name, reason)
        failed.append(run.info.run_id)
    return failed


def decided(tags: dict[str, str]) -> bool:
    """Whether a version's promotion was decided by the champion gate (a complete registration)."""
    return DECIDED_TAG in tags and tags.get(INCOMPLETE_TAG) != "true"


def mark_undecided_versions(client: MlflowClient, name: str) -> list[int]:
    """Tag every version of ``name`` without a recorded decision ``incomplete`` (never promotable).

    Call it only while no retrain of this store is registering (the workspace's retrain lock).
    """
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    marked = []
    for v in versions:
        if DECIDED_TAG in v.tags or v.tags.get(INCOMPLETE_TAG) == "true":
            continue
        reason = f"registered by run {v.run_id}, which stopped before the champion gate decided"
        for k, value in {INCOMPLETE_TAG: "true", DECIDED_TAG: "False", "promotion.reason": reason}.items():
            client.set_model_version_tag(name, v.version, k, value)
        log.warning("model %s v%s: %s; marked incomplete (never promoted)", name, v.version, reason)
        marked.append(int(v.version))
    return sorted(marked)


def recover_store(client: MlflowClient, experiment: str, model_name: str) -> Recovery:
    """Close what killed retrains left: their runs (FAILED) and undecided versions (incomplete)."""
    exp = client.get_experiment_by_name(experiment)
    rec = Recovery()
    if exp is not None:
        rec.failed_runs = fail_abandoned_runs(client, exp.experiment_id, flows_owned=("retrain",))
    rec.incomplete_versions = mark_undecided_versions(client, model_name)
    return rec
