"""One MLflow run per retrain: config, data hashes, metrics, plots, the mask bank, the model."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from supsup_fin.config import Config, TrackingConfig
from supsup_fin.data import LoadedPrices
from supsup_fin.errors import DataError
from supsup_fin.forecaster.evaluate import Evaluation
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.persist import manifest_sha256
from supsup_fin.forecaster.prepare import RegimeFit
from supsup_fin.tracking.describe import (
    NOTE_TAG,
    changed_inputs,
    describe_model,
    log_prices,
    market_names,
    retrain_description,
)
from supsup_fin.tracking.model import log_forecaster, payload
from supsup_fin.tracking.recovery import fail_abandoned_runs
from supsup_fin.tracking.registry import (
    INPUTS_TAG,
    MANIFEST_TAG,
    Decision,
    aliases,
    decide,
    delete_version,
    inputs_sha256,
    unchanged_since,
)
from supsup_fin.tracking.report import figure_markets, write_report
from supsup_fin.tracking.store import connect, run_tags, source_sha256, tracking_uri
from supsup_fin.tracking.versions import MODEL_ARTIFACTS, prune
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

NOT_THE_MODEL = ("backtest.", "schedule.")
"""Config keys a retrain never reads: changing them alone leaves a retrain "unchanged"."""

MARKET_KEYS = "markets."
"""Config keys recorded as the table ``report/markets.csv`` rather than as run params: MLflow checks
each batch of params against every param the run has, so eight keys for each of a thousand markets
take minutes (and grow with the square of the count)."""

_SCORES = ("accuracy", "baseline_accuracy", "log_loss", "baseline_log_loss", "brier", "baseline_brier")


@dataclass(frozen=True)
class RunRecord:
    """Where a retrain was recorded and what the registry did with it.

    ``version`` is the registered version holding this retrain's model: the new one, or with
    ``unchanged_since`` set, the champion that already had the same data, config and code (then
    nothing was registered).
    """

    run_id: str
    tracking_uri: str
    model_name: str
    version: int
    aliases: list[str]
    decision: Decision
    unchanged_since: int | None = None


def _metrics(evaluation: Evaluation, regimes: dict[str, RegimeFit], metric: str, mode: str) -> dict[str, float]:
    """The scalars worth charting, named ``<section>/<chart>``: the MLflow UI shows one section of
    charts per prefix before the last ``/``. Per segment the mean ``metric`` over markets and its
    class prior (``valid/log_loss``), per segment and market the served gate mode's scores
    (``test/sp500/log_loss``), per market the HMM fit (``hmm/sp500/log_likelihood``). Per-task and
    per-mode scores are in the ``report`` tables."""
    served = evaluation.markets[evaluation.markets["mode"] == mode]
    out: dict[str, float] = {}
    for segment, rows in served.groupby("segment"):
        out |= {f"{segment}/{metric}": rows[metric].mean(),
                f"{segment}/baseline_{metric}": rows[f"baseline_{metric}"].mean()}
    for r in served.to_dict("records"):
        out |= {f"{r['segment']}/{r['market']}/{k}": r[k] for k in _SCORES}
    for market, rf in regimes.items():
        out |= {f"hmm/{market}/log_likelihood": rf.model.log_likelihood_, f"hmm/{market}/n_states": rf.model.n_states_,
                f"hmm/{market}/converged": bool(rf.model.converged_)}
    return {k: float(v) for k, v in out.items() if pd.notna(v)}


def _selection_metrics(forecaster: RegimeGatedForecaster) -> dict[str, float]:
    """Per market the held-out log-loss of every gate mode and of the class prior, as the
    selection slice measured them (``selection/sp500/soft_log_loss``)."""
    out: dict[str, float] = {}
    for market, mm in forecaster.markets.items():
        if mm.selection:
            out[f"selection/{market}/prior_log_loss"] = mm.selection["prior_log_loss"]
            out |= {f"selection/{market}/{mode}_log_loss": v for mode, v in mm.selection["log_loss"].items()}
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

    Nothing is registered when the valid segment gave no score, or, unless ``force``, when the
    champion was made from the same data, config and code
    (:func:`~supsup_fin.tracking.registry.unchanged_since`): the run is still recorded, tagged
    ``unchanged_since`` with the champion's version. A version registered here is deleted again
    if anything after its registration fails, so a failed run leaves no version behind; a run
    killed in between leaves one without a decision, which the next retrain marks incomplete
    (:mod:`supsup_fin.tracking.recovery`). A degenerate HMM (fewer regimes than asked) keeps the
    version from promotion unless ``force``.
    """
    mode, metric, name = cfg.gating.mode, cfg.tracking.metric, cfg.tracking.model_name
    score, baseline = evaluation.score("valid", metric, mode)
    if not (math.isfinite(score) and math.isfinite(baseline)):
        raise DataError(
            f"the valid segment gave no {metric} (score {score}, class prior {baseline}): no market has scored "
            f"rows in segments.valid ({cfg.segments.valid[0]}..{cfg.segments.valid[1]}); nothing registered")
    client = connect(cfg.tracking, workspace)
    flat, code = cfg.flat(), source_sha256()
    params = {k: str(v)[:500] for k, v in flat.items() if not k.startswith(MARKET_KEYS)}
    data_hashes = {m: lp.data_hash for m, lp in loaded.items()}
    model_config = {k: v for k, v in flat.items() if not k.startswith(NOT_THE_MODEL)}
    inputs = inputs_sha256(data_hashes, model_config, code)
    same = None if force else unchanged_since(client, name, inputs)
    changes = changed_inputs(client, name, data_hashes, {k: v for k, v in params.items() if k in model_config}, code,
                             (*NOT_THE_MODEL, MARKET_KEYS))
    describe = partial(retrain_description, loaded, evaluation, mode=mode, horizon=cfg.features.horizon,
                       classes=forecaster.classes, changes=changes)
    with mlflow.start_run(run_name=f"retrain-{cfg.name}") as run:
        per_market = _log_contents(cfg, workspace, loaded, regimes, evaluation, forecaster, timings, params, inputs)
        try:
            if same is not None:
                tags = client.get_model_version(name, str(same)).tags
                decision = Decision(same, False, metric, score, baseline, same,
                                    float(tags["valid_score"]) if "valid_score" in tags else None,
                                    f"unchanged since v{same}: the same data, config and code as the champion; "
                                    "nothing registered")
                mlflow.set_tags({"unchanged_since": str(same), **decision.as_tags(),
                                 NOTE_TAG: describe(decision, unchanged_since=same)})
                log.info("model %s: %s", name, decision.reason)
                return RunRecord(run.info.run_id, tracking_uri(cfg.tracking, workspace), name, same,
                                 aliases(client, name, same), decision, unchanged_since=same)
            version, decision = _register(cfg, client, run.info.run_id, loaded, regimes, forecaster, inputs,
                                          describe, score=score, baseline=baseline, force=force)
        finally:  # after the model: logging one copies every metric the run has by then, a query per metric
            mlflow.log_metrics(per_market)
    prune(client, name, cfg.tracking.keep_last)
    return RunRecord(run.info.run_id, tracking_uri(cfg.tracking, workspace), name,
                     version, aliases(client, name, version), decision)


def _log_contents(cfg: Config, workspace: Workspace, loaded: dict[str, LoadedPrices], regimes: dict[str, RegimeFit],
                  evaluation: Evaluation, forecaster: RegimeGatedForecaster, timings: dict[str, float] | None,
                  params: dict[str, str], inputs: str) -> dict[str, float]:
    """What every retrain run records: config (the markets' in ``report/markets.csv``), data (tags and
    datasets), the metrics of no single market, and the report files of :mod:`supsup_fin.tracking.report`
    (figures for a bounded number of markets: tag ``report.figures``). Returns the per-market metrics
    (``test/<market>/log_loss``...), for the caller to log once the model is logged."""
    mlflow.log_params(params)
    tags = {"supsup_fin.flow": "retrain", INPUTS_TAG: inputs, **run_tags()}
    for m, lp in loaded.items():
        tags |= {f"data.{m}.hash": lp.data_hash, f"data.{m}.source": lp.source,
                 f"data.{m}.as_of": str(lp.as_of.date()), f"data.{m}.rows": str(len(lp.frame))}
    tags |= {f"gate_mode.{m}": mm.mode for m, mm in forecaster.markets.items() if mm.mode is not None}
    plotted = figure_markets(regimes)
    mlflow.set_tags(tags | {"report.figures": f"{len(plotted)} of {len(regimes)} markets"})
    log_prices(loaded, cfg.markets, workspace.cache_dir, context="training")
    metrics = (_metrics(evaluation, regimes, cfg.tracking.metric, cfg.gating.mode) | _selection_metrics(forecaster)
               | {f"time/{k}_s": v for k, v in (timings or {}).items()})
    mlflow.log_metrics({k: v for k, v in metrics.items() if k.count("/") == 1})
    with tempfile.TemporaryDirectory() as tmp:
        write_report(Path(tmp), loaded, regimes, evaluation, forecaster, plotted)
        pd.DataFrame([m.model_dump(mode="json") for m in cfg.markets]).to_csv(Path(tmp) / "markets.csv", index=False)
        mlflow.log_artifacts(tmp, artifact_path="report")
    if len(plotted) < len(regimes):
        log.info("report: figures for %d of %d markets; every market is a row of report/regimes.csv",
                 len(plotted), len(regimes))
    return {k: v for k, v in metrics.items() if k.count("/") > 1}


def log_version(client: MlflowClient, forecaster: RegimeGatedForecaster, prices: dict[str, pd.DataFrame],
                name: str, tags: dict[str, str]) -> int:
    """Save ``forecaster``, log it in the active run (the model, and its bank under ``mask_bank``),
    register it as a new version of ``name`` and tag the version with its data range, markets,
    carried masks, manifest hash and ``tags``. Returns the version; a failure while tagging
    deletes it again."""
    with tempfile.TemporaryDirectory() as tmp:
        fdir = forecaster.save(Path(tmp) / "forecaster")
        mlflow.log_artifacts(str(fdir / "bank"), artifact_path=MODEL_ARTIFACTS)
        first = sorted(prices)[0]
        manifest = manifest_sha256(fdir)
        info = log_forecaster(forecaster, fdir, payload(first, prices[first], forecaster.min_rows), name)
    version = int(info.registered_model_version)
    try:
        carried = [t for t in forecaster.bank.names if "carried_from" in forecaster.bank.meta(t)]
        for k, v in {"data_start": str(min(p.index[0] for p in prices.values()).date()),
                     "data_end": str(max(p.index[-1] for p in prices.values()).date()),
                     "markets": market_names(prices, sep=","), "carried_masks": str(len(carried)),
                     MANIFEST_TAG: str(manifest), **tags}.items():
            client.set_model_version_tag(name, str(version), k, v)
    except BaseException:
        delete_version(client, name, version)
        raise
    return version


def _register(
    cfg: Config, client: MlflowClient, run_id: str, loaded: dict[str, LoadedPrices], regimes: dict[str, RegimeFit],
    forecaster: RegimeGatedForecaster, inputs: str, describe: Callable[..., str], *, score: float, baseline: float,
    force: bool,
) -> tuple[int, Decision]:
    """Log the forecaster as a new version, decide its promotion and describe it (run, version, model)."""
    name, metric = cfg.tracking.model_name, cfg.tracking.metric
    fallback_tags, blockers = regime_fallbacks(regimes)
    version = log_version(client, forecaster, {m: lp.frame for m, lp in loaded.items()}, name,
                          {INPUTS_TAG: inputs, **fallback_tags})
    carried = [t for t in forecaster.bank.names if "carried_from" in forecaster.bank.meta(t)]
    try:
        decision = decide(client, name, version, metric, score, baseline, cfg.tracking.margin,
                          blockers=blockers, force=force)
        text = describe(decision)
        client.update_model_version(name, str(version), description=text)
        mlflow.set_tags({"registered_version": str(version), "carried_masks": str(len(carried)),
                         **decision.as_tags(), NOTE_TAG: text})
        describe_model(client, name, f"retrain run `{run_id}` registered v{version}"
                                     f"{' and promoted it' if decision.promoted else ', not promoted'}")
    except BaseException:
        delete_version(client, name, version)
        raise
    return version, decision


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
