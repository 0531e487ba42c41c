"""The JSON-able summary a retrain returns (and ``supsup-fin demo --json`` prints)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from supsup_fin.config import Config
from supsup_fin.forecaster.evaluate import Evaluation

if TYPE_CHECKING:  # the tracking layer (MLflow) stays out of this module's imports
    from supsup_fin.tracking import RunRecord

_TASK_KEYS = ("accuracy", "baseline_accuracy", "log_loss", "baseline_log_loss", "mask_density")


def plain_number(v: Any) -> Any:
    """A JSON-ready value: floats rounded to 6 decimals, NaN as ``None``, numpy scalars unwrapped."""
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    if hasattr(v, "item"):
        return plain_number(v.item())
    return v


def retrain_summary(
    cfg: Config, ev: Evaluation, run: RunRecord, *, elapsed_s: float, timings: dict[str, float]
) -> dict[str, Any]:
    """Per-task and per-market test scores, the registry's decision and where it was recorded.

    ``registered_model.version`` is the version holding this retrain's model; when the champion
    already had the same data, config and code nothing was registered and ``unchanged_since``
    names that version (else it is None).
    """
    test = ev.tasks[ev.tasks.segment == "test"]
    tasks = [
        {"task": r["task"], "market": r["market"], "regime": r["regime"], "n_train": int(r["n_train"]),
         "n_test": int(r["n_eval"]), **{k: plain_number(r[k]) for k in _TASK_KEYS}}
        for r in test.to_dict("records")
    ]
    markets = [
        {"market": r["market"], "mode": r["mode"], "runs": r["runs"], "segment": r["segment"], "n": int(r["n"]),
         **{k: plain_number(r[k]) for k in ("accuracy", "baseline_accuracy", "log_loss", "baseline_log_loss")},
         **{k: plain_number(v) for k, v in r.items() if k.startswith("prior_")}}
        for r in ev.markets.to_dict("records")
    ]
    d = run.decision
    return {
        "markets": [m.name for m in cfg.markets],
        "tasks": tasks,
        "forecaster": markets,
        "registered_model": {"name": run.model_name, "version": run.version, "aliases": sorted(run.aliases),
                             "unchanged_since": run.unchanged_since},
        "promotion": {"promoted": d.promoted, "metric": d.metric, "valid_score": plain_number(d.score),
                      "valid_baseline": plain_number(d.baseline_score), "champion_version": d.champion_version,
                      "champion_score": plain_number(d.champion_score), "reason": d.reason,
                      "champion_unloadable": d.champion_unloadable, "blocked_by": d.blocked_by},
        "tracking_uri": run.tracking_uri,
        "run_id": run.run_id,
        "elapsed_s": round(elapsed_s, 2),
        "timings_s": timings,
    }
