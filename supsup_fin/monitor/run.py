"""The monitoring pass: score the champion's matured forecasts, run the checks, raise alerts, log a run.

One pass, in order: the champion (model, version) -> each market's prices -> optionally the
champion's causal forecasts on the data's last dates, stored in the forecasts table -> the
forecasts not scored yet whose horizon has passed, scored and stored -> rolling scores per market
and model version -> the checks of :data:`CHECKS` (each a list of check rows and a list of
alerts) -> new alerts stored (:func:`~supsup_fin.monitor.alerts.raise_alerts`) -> one MLflow run
with the scores, reliability tables, a loss-gap plot per market and the alerts.

Every step is idempotent: a second pass on the same data adds no forecast, score or alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.config import Config
from supsup_fin.data import LoadedPrices, load_prices
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.live.forecast import backfill as backfill_forecasts
from supsup_fin.live.forecast import champion, known_markets
from supsup_fin.live.table import KEY, append_forecasts, read_forecasts
from supsup_fin.monitor.alerts import Notify, alert_key, raise_alerts
from supsup_fin.monitor.drift import drift_alerts, drift_checks
from supsup_fin.monitor.new_mask import new_mask_challenger
from supsup_fin.monitor.novelty import detect_novelty, novelty_alert
from supsup_fin.monitor.plots import loss_gap_figure
from supsup_fin.monitor.scoring import (
    REQUIRED,
    append_scores,
    by_date,
    read_scores,
    reliability_table,
    rolling_summary,
    score_rows,
)
from supsup_fin.monitor.scoring import worse_than_prior as worse_than_prior_alerts
from supsup_fin.progress import report
from supsup_fin.tracking import connect, tracking_uri
from supsup_fin.tracking.challenger import register_challenger, registered_challenger
from supsup_fin.tracking.monitoring import log_monitor_run
from supsup_fin.tracking.ui import run_url, ui_url
from supsup_fin.workspace import Workspace

STAGES = ("champion", "prices", "backfill", "score", "checks", "alerts", "log")
"""The pass's steps, as reported to :mod:`supsup_fin.progress` (stage ``monitor``)."""


@dataclass(frozen=True)
class PassState:
    """What the checks read: the config, workspace, the champion's forecaster and version, each
    market's prices, the whole scores table and its rolling summary (:func:`rolling_summary`)."""

    cfg: Config
    ws: Workspace
    forecaster: RegimeGatedForecaster
    version: int
    prices: dict[str, LoadedPrices]
    scores: pd.DataFrame
    summary: list[dict[str, Any]]


Check = Callable[[PassState], tuple[list[dict[str, Any]], list[dict[str, Any]]]]
"""A check section: ``check(state) -> (rows, alerts)``: one row per thing it looked at (market,
version, feature...), and an alert dict for each that fired."""


def worse_than_prior(state: PassState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per market and version of the rolling summary: is its log-loss worse than the class prior's
    by more than ``monitor.loss_margin``, over at least ``monitor.min_matured`` matured forecasts?"""
    alerts = worse_than_prior_alerts(state.summary, state.cfg.monitor)
    fired = {(a["market"], a["model_version"]) for a in alerts}
    rows = [{"market": s["market"], "model_version": s["model_version"], "as_of": s["last"], "n": s["n"],
             "value": s["gap"], "threshold": state.cfg.monitor.loss_margin,
             "fired": (s["market"], s["model_version"]) in fired} for s in state.summary]
    return rows, alerts


def drift(state: PassState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per market: each input feature's PSI and the HMM's predictive log-likelihood over the last
    ``monitor.drift_window`` rows against the champion's training reference
    (:func:`~supsup_fin.monitor.drift.drift_checks`)."""
    rows = [r for m, lp in state.prices.items() for r in drift_checks(state.forecaster, m, lp.frame, state.cfg.monitor)]
    return rows, drift_alerts(rows, state.version)


def novel_regime(state: PassState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per market: SupSup's new-task rule and the HMM test on the recent rows
    (:func:`~supsup_fin.monitor.novelty.detect_novelty`). When both say novel, a new mask is
    trained on the matured novel rows and registered as a challenger, once per novel run
    (``monitor.novelty.train_new_mask``); each row says what happened (``challenger``)."""
    cfg = state.cfg
    if not cfg.monitor.novelty.enabled:
        return [], []
    rows, alerts = [], []
    frames = {m: lp.frame for m, lp in state.prices.items()}
    for market, frame in frames.items():
        verdict = detect_novelty(state.forecaster, market, frame, cfg.monitor)
        alert = novelty_alert(verdict, state.version)
        alerts += [alert] if alert else []
        verdict["challenger"] = _challenger(state, market, frame, frames, verdict) if verdict["novel"] else ""
        rows.append(verdict)
    return rows, alerts


def _challenger(state: PassState, market: str, frame: pd.DataFrame, frames: dict[str, pd.DataFrame],
                verdict: dict[str, Any]) -> str:
    """Register the novel run's challenger unless it has one; what happened, in a few words."""
    known = registered_challenger(state.cfg, state.ws, market, verdict["since"])
    if known is not None:
        return f"v{known}"
    new = new_mask_challenger(state.forecaster, market, frame, verdict, state.cfg)
    if new.status != "trained":
        return new.message
    return f"v{register_challenger(state.cfg, state.ws, new, verdict, frames).version} (new)"


CHECKS: dict[str, Check] = {
    "worse_than_prior": worse_than_prior,
    "drift": drift,
    "novel_regime": novel_regime,
}
"""The pass's checks by name, run in this order."""


def monitor_pass(
    cfg: Config, ws: Workspace, backfill: int | None = None, loaded: dict[str, LoadedPrices] | None = None,
    *, notify: Notify | None = None,
) -> dict[str, Any]:
    """One monitoring pass of the registered champion (see the module docstring).

    Parameters
    ----------
    cfg, ws : the config and workspace.
    backfill : forecast and store the champion's forecasts on this many of each market's last
        dates first (None: ``cfg.monitor.backfill``; 0: none).
    loaded : prices already loaded, by market (the rest are loaded here).
    notify : told the new alerts (:func:`~supsup_fin.monitor.alerts.raise_alerts`).

    Returns
    -------
    dict (JSON-able)
        ``model_name``, ``model_version``, ``markets``, ``backfilled`` (forecasts added),
        ``scored`` (forecasts scored by this pass), ``pending`` (stored, horizon not passed yet),
        ``skipped`` (reason -> count), ``summary`` (:func:`rolling_summary` over
        ``monitor.window``), ``reliability`` (market -> the champion's reliability rows over the
        same window), ``checks`` (name -> rows), ``alerts`` (the new ones), ``alerts_open`` (the
        champion's alerts the checks raise now, new or stored before, each with ``new``),
        ``run_id``, ``experiment_id``, ``run_url``, ``tracking_uri``, ``elapsed_s``.

    Raises
    ------
    RegistryError
        The model has no champion.
    """
    start = time.perf_counter()
    _step("champion")
    model, version = champion(cfg, ws)
    forecaster: RegimeGatedForecaster = model.unwrap_python_model().forecaster
    names = known_markets(model, version, [m.name for m in cfg.markets])
    _step("prices")
    prices = {n: loaded[n] if loaded and n in loaded else load_prices(cfg.market(n), cfg.data, ws.cache_dir)
              for n in names}
    _step("backfill")
    n_back = cfg.monitor.backfill if backfill is None else backfill
    backfilled = _backfill(ws, model, version, prices, n_back) if n_back else 0
    _step("score")
    scored = _score_new(ws, prices, lambda market, v: _edges(forecaster, version, market, v))
    scores = read_scores(ws)
    summary = rolling_summary(scores, cfg.monitor.window, cfg.monitor.reliability_bins)
    _step("checks")
    state = PassState(cfg, ws, forecaster, version, prices, scores, summary)
    checks, alerts = {}, []
    for name, check in CHECKS.items():
        checks[name], found = check(state)
        alerts += found
    _step("alerts")
    new = raise_alerts(ws, alerts, notify)
    fresh = {alert_key(a) for a in new}
    open_ = [a | {"new": alert_key(a) in fresh} for a in alerts if int(a["model_version"]) == version]
    _step("log")
    reliability = _reliability(scores, version, names, cfg.monitor.window, cfg.monitor.reliability_bins)
    figures = {f"loss_gap_{m}": loss_gap_figure(scores, m, cfg.monitor.window)
               for m in names if (scores["market"] == m).any()}
    tables = {f"reliability_{m}": t for m, t in reliability.items()} | {
        f"checks_{name}": pd.DataFrame(rows) for name, rows in checks.items()}
    run_id = log_monitor_run(cfg.tracking, ws, summary, tables, figures, open_,
                             tags={"supsup_fin.model_version": str(version)})
    experiment_id = connect(cfg.tracking, ws).get_run(run_id).info.experiment_id
    report("monitor", len(STAGES), len(STAGES), "done")
    counts = scored.attrs["counts"]
    return {
        "model_name": cfg.tracking.model_name, "model_version": version, "markets": names,
        "backfilled": backfilled, "scored": counts["matured"], "pending": counts["pending"],
        "skipped": counts["skipped"], "summary": summary,
        "reliability": {m: _records(t) for m, t in reliability.items()}, "checks": checks,
        "alerts": new, "alerts_open": open_, "run_id": run_id, "experiment_id": experiment_id,
        "run_url": run_url(ui_url(cfg.tracking, ws), experiment_id, run_id),
        "tracking_uri": tracking_uri(cfg.tracking, ws), "elapsed_s": round(time.perf_counter() - start, 2),
    }


def _step(stage: str) -> None:
    """Report that ``stage`` of :data:`STAGES` starts."""
    report("monitor", STAGES.index(stage), len(STAGES), stage)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame``'s rows as dicts, NaN (an empty bin's means) as None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _edges(forecaster: RegimeGatedForecaster, version: int, market: str, asked: int) -> np.ndarray | None:
    """The class edges of ``market`` under model ``asked``: known for the champion only (older rows
    that do not carry theirs cannot be scored once their version is gone)."""
    if asked != version or market not in forecaster.markets:
        return None
    return forecaster.markets[market].class_edges


def _backfill(ws: Workspace, model: Any, version: int, prices: dict[str, LoadedPrices], n: int) -> int:
    """Store the champion's forecasts on each market's last ``n`` dates (those not stored yet);
    returns how many were added."""
    stored = read_forecasts(ws)
    mine = stored[stored["model_version"].astype("int64") == version] if len(stored) else stored
    rows = [r for m, lp in prices.items()
            for r in backfill_forecasts(model, version, lp, n, skip=set(mine.loc[mine["market"] == m, "as_of"]))]
    return len(append_forecasts(ws, rows))


def _score_new(ws: Workspace, prices: dict[str, LoadedPrices], edges: Callable[[str, int], np.ndarray | None]) -> pd.DataFrame:
    """Score the stored forecasts that are not scored yet; store and return the matured ones (with
    ``attrs["counts"]``)."""
    forecasts = read_forecasts(ws)
    if forecasts.empty:
        forecasts = forecasts.reindex(columns=list(REQUIRED))
    done = read_scores(ws)
    if len(forecasts) and len(done):
        seen = set(done[list(KEY)].astype({"model_version": "int64"}).itertuples(index=False, name=None))
        forecasts = forecasts[[k not in seen for k in forecasts[list(KEY)].astype({"model_version": "int64"})
                               .itertuples(index=False, name=None)]]
    scored = score_rows(forecasts, {n: lp.frame for n, lp in prices.items()}, edges)
    append_scores(ws, scored)
    return scored


def _reliability(scores: pd.DataFrame, version: int, names: list[str], window: int, bins: int) -> dict[str, pd.DataFrame]:
    """Per market, the reliability table of the champion's last ``window`` matured forecasts."""
    out = {}
    for m in names:
        mine = scores[(scores["market"] == m) & (scores["model_version"].astype("int64") == version)]
        out[m] = reliability_table(by_date(mine, window), bins)
    return out

