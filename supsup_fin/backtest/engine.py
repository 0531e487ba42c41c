"""The walk-forward loop: refit, train new masks as new tasks, forecast the next window.

At each window (see :mod:`supsup_fin.backtest.windows`) and for every market, on prices up to
the window's ``as_of`` only:

1. features, scaler and class edges on the window's ``train`` rows;
2. the regime HMM refitted, aligned to the market's previous window (``previous=``), so a
   regime keeps its name across windows;
3. the market's regime and ALL tasks trained as NEW masks named ``market/regime@as_of`` on the
   same frozen base, appended to one growing bank (earlier windows' masks stay bit-identical);
4. the baselines' dense networks trained on the same rows (the fine-tuned one continuing from
   the previous window's weights).

Then every strategy forecasts each day of the window from data up to that day (the gated
forecaster's ``predict_frames``, the windowed HMM filter, the oracle's filter), and
:mod:`supsup_fin.backtest.report` turns the daily forecasts into positions, costs, returns and
the comparison tables.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from supsup_fin import progress
from supsup_fin.backtest.dense import DenseBank, train_dense
from supsup_fin.backtest.windows import Window, fit_view, make_windows
from supsup_fin.config import Config
from supsup_fin.data.oracle import oracle_filter, oracle_proba
from supsup_fin.errors import DataError
from supsup_fin.features import (
    class_names,
    classify,
    forward_returns,
)
from supsup_fin.forecaster.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit, build_features, fit_regimes
from supsup_fin.regimes import RegimeModel
from supsup_fin.forecaster.mask_tasks import ALL, Task, make_tasks
from supsup_fin.forecaster.training import resolve_device, train_tasks

log = logging.getLogger(__name__)

SUPSUP = "supsup"
"""Prefix of the gated forecaster's strategies: ``supsup_<mode>`` (``supsup_market``: the ALL mask)."""


def windowed(name: str, tag: str) -> str:
    """``market/regime@as_of``: a task of one walk-forward window."""
    return f"{name}@{tag}"


@dataclass
class WindowFit:
    """One market's fit at one window (kept for the continual scores and the notebooks)."""

    window: Window
    features: FeatureSet
    regimes: RegimeFit
    model: MarketModel
    new_rows: np.ndarray
    """Training rows first seen at this window (after the previous window's last training row):
    the window's own task in the continual scores, and what the fine-tuned dense net trains on."""


@dataclass
class Forecasts:
    """Everything the loop produced, before positions and metrics.

    ``rows``: one row per (market, strategy, decision date) with ``window``, the class
    probabilities ``p_<class>`` (NaN for rule strategies), ``signal``, ``y`` (the realised
    class, ``-1`` while unknown), ``regime`` (the HMM's most probable next regime at the
    decision), ``regime_<name>`` posteriors and ``masks`` (JSON of the masks used, gated
    strategies only). ``closes``: each market's prices on the test days.
    """

    rows: pd.DataFrame
    closes: dict[str, pd.Series]
    asset_returns: dict[str, pd.Series]
    windows: list[Window]
    fits: dict[tuple[int, str], WindowFit]
    net: FrozenNet
    bank: MaskBank
    dense_finetune_acc: dict[str, np.ndarray]
    mask_acc: dict[str, np.ndarray]
    storage: dict[str, dict[str, int]]
    window_log: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


def calendar_of(prices: dict[str, pd.DataFrame]) -> pd.DatetimeIndex:
    """The union of the markets' dates, sorted."""
    idx = pd.DatetimeIndex([])
    for frame in prices.values():
        idx = idx.union(frame.index)
    return idx


def oracle_params(cfg: Config, market: str) -> str | None:
    """The synthetic preset a market was drawn from (what the oracle knows), else ``None``."""
    mc = cfg.market(market)
    return mc.dataset if mc.source == "synthetic" else None


def run_walk_forward(cfg: Config, prices: dict[str, pd.DataFrame]) -> Forecasts:
    """Run every window and collect each strategy's daily forecasts (see :class:`Forecasts`)."""
    missing = [m.name for m in cfg.markets if m.name not in prices]
    if missing:
        raise DataError(f"backtest: no prices for configured markets {missing}; got {sorted(prices)}")
    windows = make_windows(calendar_of(prices), cfg)
    bt = cfg.backtest
    if bt.steps is not None:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"steps": bt.steps})})
    classes = class_names(cfg.features.n_classes)
    device = resolve_device(cfg.runtime)
    log.info("backtest: %d windows from %s to %s, refit every %d days, %s window", len(windows),
             windows[0].test_start.date(), windows[-1].test_end.date(), bt.retrain_every, bt.window)
    oracle_filtered = {
        m: oracle_filter(prices[m], p) for m in prices
        if "oracle" in bt.baselines and (p := oracle_params(cfg, m)) is not None
    }
    state = _LoopState()
    parts: list[pd.DataFrame] = []
    clock = {"fit": 0.0, "train_masks": 0.0, "train_dense": 0.0, "forecast": 0.0}
    for w in windows:
        progress.report("backtest", w.index, len(windows), f"window {w.tag}")
        t0 = time.perf_counter()
        fits = _fit_markets(cfg, prices, w, state)
        t1 = time.perf_counter()
        tasks = [_renamed(t, w.tag) for t in make_tasks({m: f.features for m, f in fits.items()},
                                                         {m: f.regimes for m, f in fits.items()}, cfg)]
        if tasks:
            state.net, state.bank = train_tasks(tasks, cfg, bank=state.bank)
        t2 = time.perf_counter()
        dense = _train_dense(cfg, fits, tasks, w, state, device)
        t3 = time.perf_counter()
        for market, fit in fits.items():
            fit.model = _market_model(market, fit, w.tag, state.bank)
            state.fits[(w.index, market)] = fit
            parts.append(_forecast_window(cfg, prices[market], fit, w, state, dense, oracle_filtered.get(market)))
            _mask_scores(cfg, state, market, prices[market])
        t4 = time.perf_counter()
        for k, dt_ in zip(clock, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            clock[k] += dt_
        state.log.append({"window": w.index, "as_of": w.tag, "test_start": str(w.test_start.date()),
                          "test_end": str(w.test_end.date()), "markets": sorted(fits), "masks_trained": len(tasks),
                          "n_states": {m: f.regimes.model.n_states_ for m, f in fits.items()},
                          "seconds": round(t4 - t0, 2)})
        log.info("window %d (%s): %d masks, %.1f s", w.index, w.tag, len(tasks), t4 - t0)
    progress.report("backtest", len(windows), len(windows), "done")
    if not parts:
        raise DataError("backtest: no window produced forecasts (every market too short for every window)")
    rows = pd.concat(parts, ignore_index=True)
    test_days = {m: pd.DatetimeIndex(sorted(set(rows.loc[rows.market == m, "date"]))) for m in rows.market.unique()}
    closes = {m: prices[m]["close"].reindex(d) for m, d in test_days.items()}
    asset = {m: prices[m]["close"].pct_change().loc[d] for m, d in test_days.items()}
    storage = _storage(state)
    return Forecasts(rows, closes, asset, windows, state.fits, state.net, state.bank,
                     _square(state.finetune_rows), _square(state.mask_rows), storage, state.log, {k: round(v, 2) for k, v in clock.items()}, classes)


# -- the loop's pieces ------------------------------------------------------------------------
@dataclass
class _LoopState:
    net: FrozenNet | None = None
    bank: MaskBank | None = None
    previous: dict[str, RegimeModel] = field(default_factory=dict)
    finetune: dict[str, list] = field(default_factory=dict)  # market -> weights of the fine-tuned net
    last_train: dict[str, pd.Timestamp] = field(default_factory=dict)  # market -> last training row's date so far
    tasks_seen: dict[str, list[WindowFit]] = field(default_factory=dict)  # market -> its fits, window by window
    finetune_rows: dict[str, list[list[float]]] = field(default_factory=dict)
    mask_rows: dict[str, list[list[float]]] = field(default_factory=dict)
    fits: dict[tuple[int, str], WindowFit] = field(default_factory=dict)
    dense_nets: int = 0
    log: list[dict] = field(default_factory=list)



def _square(rows_by_market: dict[str, list[list[float]]]) -> dict[str, np.ndarray]:
    """Lower-triangular accuracy rows -> square matrices (NaN above the diagonal)."""
    out = {}
    for m, rows in rows_by_market.items():
        acc = np.full((len(rows), len(rows)), np.nan)
        for i, r in enumerate(rows):
            acc[i, : len(r)] = r
        out[m] = acc
    return out


def _fit_markets(cfg: Config, prices: dict[str, pd.DataFrame], w: Window, state: _LoopState) -> dict[str, WindowFit]:
    fits = {}
    for market in sorted(prices):
        try:
            seen, segments = fit_view(prices[market], w, cfg, market)
            wcfg = cfg.model_copy(update={"segments": segments})
            fs = build_features(market, seen, wcfg)
            rf = fit_regimes(market, seen, cfg.regimes, segments, previous=state.previous.get(market))
        except DataError as err:
            if market in state.previous:
                raise  # a market that has started trading in the backtest must keep fitting
            log.warning("window %d (%s): %s is skipped until it has enough history: %s", w.index, w.tag, market, err)
            continue
        state.previous[market] = rf.model
        rows = fs.rows("train")
        rows = rows[rf.train_labels[rows] >= 0]
        since = state.last_train.get(market)
        new = rows if since is None else rows[fs.dates[rows] > since]
        if len(rows):
            state.last_train[market] = fs.dates[rows[-1]]
        fits[market] = WindowFit(w, fs, rf, None, new)  # type: ignore[arg-type]
        state.tasks_seen.setdefault(market, []).append(fits[market])
    return fits


def _renamed(task: Task, tag: str) -> Task:
    return dataclasses.replace(task, name=windowed(task.name, tag), meta={**task.meta, "as_of": tag})


def _market_model(market: str, fit: WindowFit, tag: str, bank: MaskBank) -> MarketModel:
    fs, rf = fit.features, fit.regimes
    all_mask = windowed(f"{market}/{ALL}", tag)
    masks = {r: windowed(f"{market}/{r}", tag) for r in rf.names}
    masks = {r: (t if t in bank else all_mask) for r, t in masks.items()}
    return MarketModel(market, fs.scaler, fs.class_edges, fs.prior, rf.model, masks, all_mask)


def forecaster_for(fits: list[WindowFit], cfg: Config, net: FrozenNet, bank: MaskBank) -> RegimeGatedForecaster:
    """The gated forecaster of one window's market fits on ``bank`` (which must hold their masks)."""
    return RegimeGatedForecaster(
        {f.model.name: f.model for f in fits}, net, bank, feature_names=cfg.features.names,
        lookback=cfg.features.lookback, horizon=cfg.features.horizon, regime_window=cfg.regimes.warmup,
        mode=cfg.gating.mode, infer_window=cfg.gating.infer_window,
    )


def _dense_sets(fit: WindowFit) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fs, rf = fit.features, fit.regimes
    rows = fs.rows("train")
    rows = rows[rf.train_labels[rows] >= 0]
    out = {ALL: (fs.X[rows], fs.y[rows])}
    for k, name in enumerate(rf.names):
        idx = rows[rf.train_labels[rows] == k]
        out[name] = (fs.X[idx], fs.y[idx])
    return out


def _train_dense(cfg: Config, fits: dict[str, WindowFit], tasks: list[Task], w: Window, state: _LoopState,
                 device) -> DenseBank | None:
    wanted = {b for b in cfg.backtest.baselines if b.startswith("dense")}
    if not wanted or not fits:
        return None
    sets, init = {}, {}
    trained = {t.name for t in tasks}
    for market, fit in fits.items():
        per = _dense_sets(fit)
        if "dense" in wanted:
            sets[f"{market}/dense"] = per[ALL]
        if "dense_finetune" in wanted and len(fit.new_rows):
            sets[f"{market}/finetune"] = (fit.features.X[fit.new_rows], fit.features.y[fit.new_rows])
            if market in state.finetune:
                init[f"{market}/finetune"] = state.finetune[market]
        if "dense_regime" in wanted:
            for regime, data in per.items():
                if regime != ALL and windowed(f"{market}/{regime}", w.tag) in trained:
                    sets[f"{market}/regime/{regime}"] = data
    t = cfg.training
    sizes = (next(iter(fits.values())).features.X.shape[1], *cfg.network.hidden, cfg.features.n_classes)
    bank = train_dense(sets, sizes, steps=t.steps, batch_size=t.batch_size, lr=cfg.backtest.dense_lr,
                       seed=t.seed + w.index, init=init, device=device)
    state.dense_nets += len(sets)
    for market in fits:
        if f"{market}/finetune" in bank:
            state.finetune[market] = bank.copy_of(f"{market}/finetune")
            _finetune_scores(state, market, bank)
    return bank


def _forecast_window(cfg: Config, prices: pd.DataFrame, fit: WindowFit, w: Window, state: _LoopState,
                     dense: DenseBank | None, filtered: pd.DataFrame | None) -> pd.DataFrame:
    """Every strategy's forecasts for one market on the window's test days."""
    market, bt = fit.model.name, cfg.backtest
    forecaster = forecaster_for([fit], cfg, state.net, state.bank)  # type: ignore[arg-type]
    pos = prices.index.get_indexer(prices.loc[w.test_start: w.test_end].index)
    if len(pos) == 0:
        return pd.DataFrame()
    lo, hi = max(0, pos[0] - forecaster.min_rows + 1), pos[-1] + 1
    view = prices.iloc[lo:hi]
    frames = forecaster.predict_frames(market, view, list(bt.modes))
    test_idx = prices.index[pos]
    classes = forecaster.classes
    pcols = [f"p_{c}" for c in classes]
    base = frames[bt.modes[0]].reindex(test_idx)
    regime_cols = [c for c in base.columns if c.startswith("regime_")]
    fwd = forward_returns(prices, cfg.features.horizon).reindex(test_idx).to_numpy()
    common = pd.DataFrame({"date": test_idx, "market": market, "window": w.index,
                           "y": classify(fwd, fit.features.class_edges), "regime": base["regime"].to_numpy()})
    for c in regime_cols:
        common[c] = base[c].to_numpy()
    out = []

    def add(strategy: str, probs: np.ndarray | None, signal: np.ndarray | None = None, masks=None) -> None:
        part = common.copy()
        part["strategy"] = strategy
        for j, c in enumerate(pcols):
            part[c] = probs[:, j] if probs is not None else np.nan
        part["signal"] = signal if signal is not None else probs[:, -1] - probs[:, 0]  # type: ignore[index]
        part["masks"] = masks if masks is not None else ""
        out.append(part)

    for mode in bt.modes:
        f = frames[mode].reindex(test_idx)
        add(f"{SUPSUP}_{mode}", f[pcols].to_numpy(), masks=f["masks"].fillna("").to_numpy())
    names = list(fit.regimes.names)
    post = base[[f"regime_{r}" for r in names]].to_numpy()
    if "buy_and_hold" in bt.baselines:
        add("buy_and_hold", None, signal=np.ones(len(test_idx)))
    if "hmm_rule" in bt.baselines:
        turbulent = np.nan_to_num(post).argmax(axis=1) == len(names) - 1
        add("hmm_rule", None, signal=np.where(turbulent, 0.0, 1.0))
    if dense is not None:
        X = forecaster.inputs(market, view)[pos - lo]
        ok = np.isfinite(X).all(axis=1)
        Xf = np.where(ok[:, None], X, 0.0).astype(np.float32)

        def proba(name: str) -> np.ndarray:
            p = dense.predict_proba(name, Xf)
            p[~ok] = np.nan
            return p

        if f"{market}/dense" in dense:
            add("dense", proba(f"{market}/dense"))
        if f"{market}/finetune" in dense:
            add("dense_finetune", proba(f"{market}/finetune"))
        if "dense_regime" in bt.baselines:
            pick = np.nan_to_num(post).argmax(axis=1)
            p = proba(f"{market}/dense") if f"{market}/dense" in dense else np.full((len(X), len(classes)), np.nan)
            for k, r in enumerate(names):
                if f"{market}/regime/{r}" in dense:
                    p[pick == k] = proba(f"{market}/regime/{r}")[pick == k]
            add("dense_regime", p)
    if filtered is not None:
        view1 = prices.iloc[pos[0] - 1: hi]
        op = oracle_proba(view1, oracle_params(cfg, market), cfg.features.horizon, fit.features.class_edges,
                          filtered=filtered.iloc[pos[0] - 1: hi])
        add("oracle", op.reindex(test_idx).to_numpy())
    return pd.concat(out, ignore_index=True)


def continual_mode(cfg: Config) -> str:
    """The gate mode whose accuracy the continual scores follow: the configured one if it is run."""
    return cfg.gating.mode if cfg.gating.mode in cfg.backtest.modes else cfg.backtest.modes[0]


def _mask_scores(cfg: Config, state: _LoopState, market: str, prices: pd.DataFrame) -> None:
    """Accuracy of every window's gated masks so far on that window's own task (its new training
    rows), re-run from the CURRENT bank. Old masks are never retrained, so any change here would
    be forgetting (a shared-state bug)."""
    mode = continual_mode(cfg)
    row = []
    for fit in state.tasks_seen.get(market, []):
        dates, y = fit.features.dates[fit.new_rows], fit.features.y[fit.new_rows]
        forecaster = forecaster_for([fit], cfg, state.net, state.bank)  # type: ignore[arg-type]
        idx = prices.index.get_indexer(dates)
        view = prices.iloc[max(0, idx[0] - forecaster.min_rows + 1): idx[-1] + 1]
        f = forecaster.predict_frames(market, view, [mode])[mode].reindex(dates)
        probs = f[[c for c in f.columns if c.startswith("p_")]].to_numpy()
        ok = np.isfinite(probs).all(axis=1) & (y >= 0)
        row.append(float((probs[ok].argmax(axis=1) == y[ok]).mean()) if ok.any() else np.nan)
    state.mask_rows.setdefault(market, []).append(row)


def _finetune_scores(state: _LoopState, market: str, dense: DenseBank) -> None:
    """Accuracy of the fine-tuned net, just trained, on this and every earlier window's own task."""
    row = []
    for fit in state.tasks_seen.get(market, []):
        X, y = fit.features.X[fit.new_rows], fit.features.y[fit.new_rows]
        ok = np.isfinite(X).all(axis=1) & (y >= 0)
        p = dense.predict_proba(f"{market}/finetune", X[ok]) if ok.any() else np.zeros((0, 1))
        row.append(float((p.argmax(axis=1) == y[ok]).mean()) if ok.any() else np.nan)
    state.finetune_rows.setdefault(market, []).append(row)


def _storage(state: _LoopState) -> dict[str, dict[str, int]]:
    """Count and bytes of each model family at the end: the bank's masks at 1 bit per weight vs
    one fp32 dense net per market, regime and window (the regimes that got a mask of their own)."""
    weights = sum(o * i for o, i in state.net.shapes) if state.net is not None else 0
    n_regime = sum(1 for f in state.fits.values() for r in f.regimes.names if f.model.masks[r] != f.model.all_mask)
    return {
        "supermasks (1 bit per weight)": {"count": len(state.bank) if state.bank is not None else 0,
                                          "bytes": state.bank.nbytes_bits() if state.bank is not None else 0},
        "dense per market and regime (fp32)": {"count": n_regime, "bytes": 4 * weights * n_regime},
        "frozen base (regenerated from its seed)": {"count": 1, "bytes": 0},
    }
