"""One MLflow run per retrain: config, data hashes, metrics, plots, the mask bank, the model."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from supsup_fin.config import Config, TrackingConfig
from supsup_fin.data import LoadedPrices
from supsup_fin.errors import DataError
from supsup_fin.forecaster.evaluate import Evaluation
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.persist import manifest_sha256
from supsup_fin.forecaster.prepare import RegimeFit
from supsup_fin.regimes import plot_regimes
from supsup_fin.tracking.model import log_forecaster, payload
from supsup_fin.tracking.recovery import fail_abandoned_runs
from supsup_fin.tracking.registry import MANIFEST_TAG, Decision, aliases, decide, delete_version
from supsup_fin.tracking.store import connect, run_tags, tracking_uri
from supsup_fin.tracking.versions import prune
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

_METRICS = ("accuracy", "baseline_accuracy", "log_loss", "baseline_log_loss", "brier", "baseline_brier")


@dataclass(frozen=True)
class RunRecord:
    """Where a retrain was recorded and what the registry did with it."""

    run_id: str
    tracking_uri: str
    model_name: str
    version: int
    aliases: list[str]
    decision: Decision


def _metrics(evaluation: Evaluation, regimes: dict[str, RegimeFit]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in evaluation.tasks.to_dict("records"):
        for m in _METRICS:
            out[f"{r['segment']}.{r['task']}.{m}"] = r[m]
        out[f"{r['segment']}.{r['task']}.n_eval"] = r["n_eval"]
    for r in evaluation.markets.to_dict("records"):
        for m in _METRICS:
            out[f"{r['segment']}.{r['market']}.{r['mode']}.{m}"] = r[m]
    for market, rf in regimes.items():
        out[f"hmm.{market}.log_likelihood"] = float(rf.model.log_likelihood_)
        out[f"hmm.{market}.converged"] = float(bool(rf.model.converged_))
        out[f"hmm.{market}.n_states"] = float(rf.model.n_states_)
    return {k: float(v) for k, v in out.items() if pd.notna(v)}


def _selection_metrics(forecaster: RegimeGatedForecaster) -> dict[str, float]:
    """What the selection slice decided: per market the held-out log-loss of every gate mode and of
    the prior, and per calibration map its temperature, prior weight and held-out log-loss."""
    out: dict[str, float] = {}
    for market, mm in forecaster.markets.items():
        sel = mm.selection
        if sel:
            out[f"selection.{market}.prior_log_loss"] = sel["prior_log_loss"]
            out[f"selection.{market}.n_holdout"] = sel["n_holdout"]
            out |= {f"selection.{market}.{mode}.log_loss": v for mode, v in sel["log_loss"].items()}
        for key, cal in mm.calibrators.items():
            name = key.replace(":", "_").replace("/", ".")
            out |= {f"calibration.{market}.{name}.temperature": cal.temperature,
                    f"calibration.{market}.{name}.prior_weight": cal.weight}
    for task in forecaster.bank.names:
        meta = forecaster.bank.meta(task)
        if "selected_step" in meta:
            out[f"steps.{task}"] = meta["selected_step"]
    return {k: float(v) for k, v in out.items() if pd.notna(v)}


def regime_fallbacks(regimes: dict[str, RegimeFit]) -> tuple[dict[str, str], list[str]]:
    """Per market, why its HMM fell back from the requested state counts (tags), and the
    blockers: markets whose HMM is degenerate (fewer states than asked, e.g. one regime)."""
    tags, blockers = {}, []
    for market, rf in sorted(regimes.items()):
        why = getattr(rf.model, "fallback_reason_", None)
        if why:
            tags[f"regimes.{market}.fallback"] = str(why)[:500]
        if getattr(rf.model, "degenerate", False):
            blockers.append(f"market {market!r}: the HMM fell back to {rf.model.n_states_} state(s) ({why or 'no reason recorded'})")
    return tags, blockers


def log_retrain(
    cfg: Config, workspace: Workspace, *, loaded: dict[str, LoadedPrices], regimes: dict[str, RegimeFit],
    evaluation: Evaluation, forecaster: RegimeGatedForecaster, timings: dict[str, float] | None = None,
    force: bool = False,
) -> RunRecord:
    """Record the run, log and register the forecaster, and decide its promotion.

    Nothing is registered when the valid segment gave no score. A version registered here is
    deleted again if anything after its registration fails, so a failed run leaves no version
    behind; a run killed in between leaves one without a decision, which the next retrain marks
    incomplete (:mod:`supsup_fin.tracking.recovery`). A degenerate HMM (fewer regimes than asked)
    keeps the version from promotion unless ``force``.
    """
    mode, metric = cfg.gating.mode, cfg.tracking.metric
    score, baseline = evaluation.score("valid", metric, mode)
    if not (math.isfinite(score) and math.isfinite(baseline)):
        raise DataError(
            f"the valid segment gave no {metric} (score {score}, class prior {baseline}): no market has scored "
            f"rows in segments.valid ({cfg.segments.valid[0]}..{cfg.segments.valid[1]}); nothing registered")
    fallback_tags, blockers = regime_fallbacks(regimes)
    client = connect(cfg.tracking, workspace)
    with mlflow.start_run(run_name=f"retrain-{cfg.name}") as run, tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        tags = {"supsup_fin.flow": "retrain", **run_tags()}
        for m, lp in loaded.items():
            tags |= {f"data.{m}.hash": lp.data_hash, f"data.{m}.source": lp.source,
                     f"data.{m}.as_of": str(lp.as_of.date()), f"data.{m}.rows": str(len(lp.frame))}
        mlflow.set_tags(tags)
        mlflow.log_metrics(_metrics(evaluation, regimes) | _selection_metrics(forecaster)
                           | {f"valid.{metric}": score, f"valid.baseline_{metric}": baseline})
        mlflow.set_tags({f"gate_mode.{m}": mm.mode for m, mm in forecaster.markets.items() if mm.mode is not None})
        if timings:
            mlflow.log_metrics({f"time.{k}_s": v for k, v in timings.items()})
        for market, rf in regimes.items():
            plot_regimes(loaded[market].frame, rf.model, tmp_path / f"regimes_{market}.png", title=market)
            (tmp_path / f"hmm_{market}.json").write_text(json.dumps(rf.model.to_dict(), indent=1))
            (tmp_path / f"health_{market}.json").write_text(json.dumps(loaded[market].health.to_records(), indent=1, default=str))
        evaluation.tasks.to_csv(tmp_path / "eval_tasks.csv", index=False)
        evaluation.markets.to_csv(tmp_path / "eval_markets.csv", index=False)
        mlflow.log_artifacts(tmp, artifact_path="report")
        fdir = forecaster.save(tmp_path / "forecaster")
        mlflow.log_artifacts(str(fdir / "bank"), artifact_path="mask_bank")
        first = sorted(loaded)[0]
        example = payload(first, loaded[first].frame, forecaster.min_rows)
        manifest = manifest_sha256(fdir)
        info = log_forecaster(forecaster, fdir, example, cfg.tracking.model_name)
        version = int(info.registered_model_version)
        name = cfg.tracking.model_name
        try:
            carried = [t for t in forecaster.bank.names if "carried_from" in forecaster.bank.meta(t)]
            for k, v in {"data_start": str(min(lp.frame.index[0] for lp in loaded.values()).date()),
                         "data_end": str(max(lp.as_of for lp in loaded.values()).date()),
                         "markets": ",".join(sorted(loaded)), "carried_masks": str(len(carried)),
                         MANIFEST_TAG: str(manifest), **fallback_tags}.items():
                client.set_model_version_tag(name, str(version), k, v)
            decision = decide(client, name, version, metric, score, baseline, cfg.tracking.margin,
                              blockers=blockers, force=force)
            mlflow.set_tags({"registered_version": str(version), "carried_masks": str(len(carried)), **decision.as_tags()})
        except BaseException:
            delete_version(client, cfg.tracking.model_name, version)
            raise
    prune(client, name, cfg.tracking.keep_last)
    return RunRecord(run.info.run_id, tracking_uri(cfg.tracking, workspace), name,
                     version, aliases(client, name, version), decision)


def log_forecasts(tracking: TrackingConfig, workspace: Workspace, rows: pd.DataFrame) -> str:
    """One MLflow run holding the newly stored forecast rows (table artifact + signals)."""
    client = connect(tracking, workspace)
    fail_abandoned_runs(client, mlflow.get_experiment_by_name(tracking.experiment).experiment_id)
    as_of = str(rows["as_of"].max())
    with mlflow.start_run(run_name=f"forecast-{as_of}") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"supsup_fin.flow": "forecast", "as_of": as_of,
                         "model_versions": ",".join(map(str, sorted(rows["model_version"].unique()))),
                         **run_tags()})
        mlflow.log_metrics({f"signal.{r.market}": float(r.signal) for r in rows.itertuples()})
        mlflow.log_metrics({f"stale_days.{r.market}": float(r.stale_days) for r in rows.itertuples()})
        path = Path(tmp) / "forecasts.csv"
        rows.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    return run.info.run_id
