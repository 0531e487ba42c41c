"""The walk-forward loop: each window refits, trains new masks and dense nets, and forecasts.

At each window (see :mod:`supsup_fin.backtest.windows`) and for every market, on prices up to
the window's ``as_of`` only (:func:`~supsup_fin.backtest.fitting.fit_market`):

1. features, scaler and class edges on the window's ``train`` rows;
2. the regime HMM refitted, aligned to the market's previous window, so a regime keeps its
   name across windows;
3. the market's regime and ALL tasks trained as NEW masks named ``market/regime@as_of`` on the
   same frozen base, appended to one growing bank (earlier windows' masks stay bit-identical);
4. the dense nets the strategies declare, trained on the same rows (the fine-tuned one
   continuing from its weights at the previous window).

By default (``backtest.batched``) steps 1-2 run for every window first, in order, then steps 3-4
for every window in one batched pass (a task's result does not depend on the tasks that share its
pass; the fine-tuned nets alone continue window after window), then the forecasts below window by
window; ``batched: false`` runs each window whole before the next.

Masks, dense nets and every forecast run on ``runtime.device`` (the walk-forward's results come
back to CPU). Then every strategy of :mod:`supsup_fin.backtest.strategies` forecasts each day of the window
from data up to that day, and :mod:`supsup_fin.backtest.continual` re-scores every earlier
window's task. :func:`run_window` returns all of a window's values (a :class:`WindowResult`);
what the next window inherits is a :class:`History` built from them; :func:`run_walk_forward`
combines the windows into :class:`Forecasts`, which :mod:`supsup_fin.backtest.report` scores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from supsup_fin import progress
from supsup_fin._pool import process_pool, worker_count
from supsup_fin.backtest import continual
from supsup_fin.backtest.dense import DenseBank, train_dense
from supsup_fin.backtest.fitting import WindowFit, fit_market, forecaster_for, window_tasks, windowed
from supsup_fin.backtest.market_window import MarketWindow
from supsup_fin.backtest.strategies import DenseTask, Strategy, dense_sets, finetune_net, select, warm_starts
from supsup_fin.backtest.windows import Window, make_windows
from supsup_fin.config import Config
from supsup_fin.errors import DataError
from supsup_fin.features import class_names
from supsup_fin.forecaster.calibration import Calibrator
from supsup_fin.forecaster.gating import FrameInputs
from supsup_fin.forecaster.mask_tasks import Task
from supsup_fin.forecaster.training import resolve_device, train_tasks
from supsup_fin.masks import FrozenNet, MaskBank

log = logging.getLogger(__name__)

STAGES = ("fit", "train_masks", "train_dense", "forecast")
"""The timed stages of a window (``Forecasts.timings``: seconds summed over windows)."""


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


@dataclass(frozen=True)
class WindowResult:
    """One window's values: its fits (with their gated models), the bank after it, its dense
    nets, every strategy's forecast rows and the continual accuracy rows."""

    window: Window
    fits: dict[str, WindowFit]
    """Market -> its fit, for the markets with enough history (sorted by name)."""
    masks_trained: int
    net: FrozenNet | None
    bank: MaskBank | None
    dense: DenseBank | None
    dense_weights: dict[str, list[torch.Tensor]]
    """Weights of the warm-started dense nets, after this window (the earlier ones otherwise)."""
    rows: dict[str, pd.DataFrame]
    """Market -> every strategy's forecasts on its test days in the window (empty: none)."""
    mask_acc: dict[str, list[float]]
    """Market -> accuracy of its gated masks of every task so far on their own rows (markets that
    got new rows at this window; see :func:`~supsup_fin.backtest.continual.tasks`)."""
    finetune_acc: dict[str, list[float]]
    """Market -> accuracy of its fine-tuned dense net (if trained now) on every task so far."""
    seconds: dict[str, float]
    """Stage (:data:`STAGES`) -> wall seconds (the training stages are 0 for windows that shared one
    batched pass; :attr:`Forecasts.timings` adds the pass's seconds)."""

    def log_record(self) -> dict:
        """The window's row of ``Forecasts.window_log``."""
        w = self.window
        return {"window": w.index, "as_of": w.tag, "test_start": str(w.test_start.date()),
                "test_end": str(w.test_end.date()), "markets": sorted(self.fits),
                "no_new_rows": sorted(m for m, f in self.fits.items() if not len(f.new_rows)),
                "masks_trained": self.masks_trained,
                "n_states": {m: f.regimes.model.n_states_ for m, f in self.fits.items()},
                "seconds": round(sum(self.seconds.values()), 2)}


@dataclass(frozen=True)
class History:
    """What a window inherits from the windows before it."""

    net: FrozenNet | None = None
    bank: MaskBank | None = None
    fits: Mapping[str, tuple[WindowFit, ...]] = field(default_factory=dict)
    """Market -> its fits, window by window (the continual tasks; the last HMM names the next)."""
    dense_weights: Mapping[str, list[torch.Tensor]] = field(default_factory=dict)
    scoring_inputs: dict[tuple[str, str], FrameInputs] = field(default_factory=dict)
    """The continual scores' inputs per (market, window tag), computed once and shared by every
    later window (a cache: see :func:`~supsup_fin.backtest.continual.mask_accuracy_row`)."""

    def last_train(self, market: str) -> pd.Timestamp | None:
        """The last training row's date of the market's windows so far."""
        return next((f.last_train for f in reversed(self.fits.get(market, ())) if f.last_train is not None), None)

    def after(self, result: WindowResult) -> History:
        """This history with ``result``'s window appended."""
        return History(result.net, result.bank, self.with_fits(result.fits).fits, result.dense_weights,
                       self.scoring_inputs)

    def with_fits(self, fits: Mapping[str, WindowFit]) -> History:
        """This history with one more window's market fits (the HMM lineage a window's fit reads)."""
        out = dict(self.fits)
        for market, fit in fits.items():
            out[market] = (*out.get(market, ()), fit)
        return dataclasses.replace(self, fits=out)


def calendar_of(prices: dict[str, pd.DataFrame]) -> pd.DatetimeIndex:
    """The union of the markets' dates, sorted."""
    idx = pd.DatetimeIndex([])
    for frame in prices.values():
        idx = idx.union(frame.index)
    return idx


def run_walk_forward(cfg: Config, prices: dict[str, pd.DataFrame]) -> Forecasts:
    """Run every window and collect each strategy's daily forecasts (see :class:`Forecasts`).

    With ``backtest.batched`` (the default) every window's HMMs are fitted first, in order (a
    window's regimes are named after the previous window's), then every window's masks and dense
    nets train in one batched pass, and then each window forecasts on the bank as it stood after
    it. A window's tasks read only its own past either way and a task's result does not depend on
    the tasks that share its pass, so the results are those of training window by window
    (bit-identical on CPU with one torch thread); only the order of computation changes.
    """
    missing = [m.name for m in cfg.markets if m.name not in prices]
    if missing:
        raise DataError(f"backtest: no prices for configured markets {missing}; got {sorted(prices)}")
    windows = make_windows(calendar_of(prices), cfg)
    bt = cfg.backtest
    if bt.steps is not None:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"steps": bt.steps})})
    strategies = select(bt.modes, bt.baselines)
    device = resolve_device(cfg.runtime)
    log.info("backtest: %d windows from %s to %s, refit every %d days, %s window, %s", len(windows),
             windows[0].test_start.date(), windows[-1].test_end.date(), bt.retrain_every, bt.window,
             "one batched training pass" if bt.batched else "trained window by window")
    prepared = {m: {s.name: p for s in strategies if (p := s.prepare(cfg, m, prices[m])) is not None} for m in prices}
    history, results, shared = History(), [], {}
    if bt.batched:
        total = 2 * len(windows) + 1  # fit each window, train them all, forecast each window
        lineage, fitted = History(), []
        with _fit_pool(cfg, prices, windows) as pool:
            for w in windows:
                progress.report("walk-forward", w.index, total, f"fit {w.tag}")
                fitted.append(_fit_window(cfg, prices, w, lineage, pool))
                lineage = lineage.with_fits(fitted[-1].fits)
        progress.report("walk-forward", len(windows), total, "train every window")
        trained, shared = _train_windows(cfg, fitted, strategies, history, device)
        for k, (f, t) in enumerate(zip(fitted, trained)):
            progress.report("walk-forward", len(windows) + 1 + k, total, f"forecast {f.window.tag}")
            results.append(_forecast_window(cfg, prices, f, t, history, strategies, prepared, device))
            history = history.after(results[-1])
    else:
        total = len(windows)
        with _fit_pool(cfg, prices, windows) as pool:
            for w in windows:
                progress.report("walk-forward", w.index, total, f"window {w.tag}")
                results.append(run_window(cfg, prices, w, history, strategies, prepared, device, pool))
                history = history.after(results[-1])
    progress.report("walk-forward", total, total, "done")
    for r in results:
        log.info("window %d (%s): %d masks, %.1f s", r.window.index, r.window.tag, r.masks_trained, sum(r.seconds.values()))
    return _combine(cfg, prices, windows, results, history, shared)


FIT_PROCESSES_FROM = 20
"""Market-window fits from which ``runtime.fit_processes: 0`` fits in processes (each fit takes
about a second on the demo's markets; a worker process takes about two to start)."""


@contextlib.contextmanager
def _fit_pool(cfg: Config, prices: Mapping[str, pd.DataFrame], windows: Sequence[Window]) -> Iterator[Executor | None]:
    """The processes that fit the walk-forward's markets side by side (``runtime.fit_processes``),
    or ``None``: fit in this process."""
    wanted = cfg.runtime.fit_processes
    if wanted == 0:
        wanted = None if len(prices) >= 2 and len(prices) * len(windows) >= FIT_PROCESSES_FROM else 1
    workers = worker_count(wanted, len(prices))
    if workers == 1:
        yield None
        return
    log.info("backtest: fitting the markets' HMMs in %d processes", workers)
    with process_pool(workers) as pool:
        yield pool


def run_window(cfg: Config, prices: dict[str, pd.DataFrame], w: Window, history: History,
               strategies: Sequence[Strategy], prepared: Mapping[str, Mapping[str, object]],
               device: str | torch.device, pool: Executor | None = None) -> WindowResult:
    """Fit, train and forecast one window after ``history``; see the module docstring.

    Parameters
    ----------
    prices : market -> its whole price frame (each step reads only what its date allows).
    strategies : what to forecast with (see :func:`~supsup_fin.backtest.strategies.select`).
    prepared : market -> strategy name -> what the strategy's ``prepare`` computed.
    device : where the masks and dense nets train and every forecast runs (the returned net and
        banks are on CPU).
    pool : processes that fit the markets side by side (``None``: in this process).
    """
    fitted = _fit_window(cfg, prices, w, history, pool)
    (trained,), _ = _train_windows(cfg, [fitted], strategies, history, device)
    return _forecast_window(cfg, prices, fitted, trained, history, strategies, prepared, device)


@dataclass(frozen=True)
class _Fitted:
    """One window's market fits (before their masks exist) and the tasks they declare."""

    window: Window
    fits: dict[str, WindowFit]
    tasks: list[Task]
    seconds: float


@dataclass(frozen=True)
class _Trained:
    """What training gave one window: the net, the bank as it stands after the window, the
    window's dense nets and the warm-started nets' weights after it."""

    net: FrozenNet | None
    bank: MaskBank | None
    dense: DenseBank | None
    dense_weights: dict[str, list[torch.Tensor]]
    seconds: dict[str, float]
    """``train_masks`` / ``train_dense`` seconds spent on this window alone (0 in a shared pass)."""


def _fit_window(cfg: Config, prices: dict[str, pd.DataFrame], w: Window, history: History,
                pool: Executor | None = None) -> _Fitted:
    """Every market's fit at ``w`` after ``history``'s fits (in ``pool``'s processes side by side, if
    given), and the window's tasks."""
    t0 = time.perf_counter()
    fits = _fit_markets(cfg, prices, w, history,
                        lambda k, m: progress.report("window", k, 2 * len(prices), f"{w.tag}: fit {m}"), pool)
    return _Fitted(w, fits, window_tasks(fits, cfg, w.tag), time.perf_counter() - t0)


def _train_windows(cfg: Config, fitted: Sequence[_Fitted], strategies: Sequence[Strategy], history: History,
                   device: str | torch.device) -> tuple[list[_Trained], dict[str, float]]:
    """Train the masks and dense nets of ``fitted`` windows (in order, after ``history``) together.

    Returns each window's :class:`_Trained` and, when more than one window shared the pass, the
    pass's seconds per stage (``{}`` for a single window, whose seconds are its own).
    """
    t0 = time.perf_counter()
    tasks = [t for f in fitted for t in f.tasks]
    net, bank = train_tasks(tasks, cfg, bank=history.bank) if tasks else (history.net, history.bank)
    banks, names = [], list(history.bank.names) if history.bank is not None else []
    for f in fitted:
        names += [t.name for t in f.tasks]
        banks.append(bank.subset(names) if bank is not None and f.tasks else (banks[-1] if banks else history.bank))
    t1 = time.perf_counter()
    dense = _train_dense(cfg, strategies, fitted, history, device)
    seconds = {"train_masks": t1 - t0, "train_dense": time.perf_counter() - t1}
    own = seconds if len(fitted) == 1 else {k: 0.0 for k in seconds}
    trained = [_Trained(net if b is not None else history.net, b, d, wts, own)
               for b, (d, wts) in zip(banks, dense)]
    return trained, ({} if len(fitted) == 1 else seconds)


def _forecast_window(cfg: Config, prices: dict[str, pd.DataFrame], fitted: _Fitted, trained: _Trained,
                     history: History, strategies: Sequence[Strategy], prepared: Mapping[str, Mapping[str, object]],
                     device: str | torch.device) -> WindowResult:
    """The window's gated models on the bank after it, its forecasts and its continual scores."""
    w, net, bank, dense = fitted.window, trained.net, trained.bank, trained.dense
    t0 = time.perf_counter()
    runs_on = copy.copy(net).to(device) if net is not None else None  # the window's forecasts run here
    fits = {m: f.with_model(bank, runs_on, cfg) for m, f in fitted.fits.items()}  # type: ignore[arg-type]
    finetune_acc = {m: continual.dense_accuracy_row(dense, finetune_net(m), (*history.fits.get(m, ()), f))
                    for m, f in fits.items() if dense is not None and finetune_net(m) in dense and len(f.new_rows)}
    rows, mask_acc = {}, {}
    for k, (market, fit) in enumerate(fits.items()):
        progress.report("window", len(prices) + k, 2 * len(prices), f"{w.tag}: forecast {market}")
        seen = (*history.fits.get(market, ()), fit)
        rows[market] = _forecast_market(cfg, prices[market], fit, strategies, runs_on, bank,  # type: ignore[arg-type]
                                        dense, prepared.get(market, {}))
        if len(fit.new_rows):
            mask_acc[market] = continual.mask_accuracy_row(cfg, seen, runs_on, bank, prices[market],  # type: ignore[arg-type]
                                                             history.scoring_inputs)
        else:
            log.warning("window %d (%s): %s has no training rows after %s (its last price: %s); the window is "
                        "no task of its continual scores", w.index, w.tag, market, history.last_train(market),
                        prices[market].index[-1].date())
    progress.report("window", 2 * len(prices), 2 * len(prices), f"{w.tag}: done")
    seconds = {"fit": fitted.seconds, **trained.seconds, "forecast": time.perf_counter() - t0}
    return WindowResult(w, fits, len(fitted.tasks), net, bank, dense, trained.dense_weights, rows, mask_acc,
                        finetune_acc, seconds)


def _fit_markets(cfg: Config, prices: dict[str, pd.DataFrame], w: Window, history: History,
                 starting: Callable[[int, str], None], pool: Executor | None = None) -> dict[str, WindowFit]:
    """Every market's fit at ``w``; a market without enough history yet is skipped until it has.
    ``starting(k, market)`` is called before the k-th market's fit is collected. With a ``pool`` the
    fits run in its processes side by side (the same fits: each is one process's deterministic code)."""
    def fit(market: str) -> Callable[[], WindowFit]:
        before = history.fits.get(market, ())
        args = (cfg, prices[market], market, w, before[-1].regimes.model if before else None,
                history.last_train(market))
        return pool.submit(fit_market, *args).result if pool is not None else lambda: fit_market(*args)

    longest_first = sorted(prices, key=lambda m: (-len(prices[m]), m))  # the slowest fits start first
    pending = {market: fit(market) for market in longest_first}
    fits = {}
    for k, market in enumerate(sorted(prices)):
        result = pending[market]
        starting(k, market)
        before = history.fits.get(market, ())
        try:
            fits[market] = result()
        except DataError as err:
            if before:
                raise  # a market that has started trading in the backtest must keep fitting
            log.warning("window %d (%s): %s is skipped until it has enough history: %s", w.index, w.tag, market, err)
    return fits


def _train_dense(cfg: Config, strategies: Sequence[Strategy], fitted: Sequence[_Fitted], history: History,
                 device: str | torch.device) -> list[tuple[DenseBank | None, dict[str, list[torch.Tensor]]]]:
    """Each window's dense nets and the warm-started nets' weights after it.

    The nets trained from scratch of every window train in one batched call, each with its window's
    seed (``training.seed + window index``) and its own name's random streams; the warm-started
    (fine-tuned) nets continue from the previous window's weights, so they train window after
    window. A net's result does not depend on which nets share its call.
    """
    if not any(s.trains_dense for s in strategies) or not any(f.fits for f in fitted):
        return [(None, dict(history.dense_weights)) for _ in fitted]
    t = cfg.training
    sets = [{n: s for n, s in dense_sets(strategies, f.fits, frozenset(x.name for x in f.tasks)).items() if len(s.y)}
            for f in fitted]
    first = next(fit for f in fitted for fit in f.fits.values())
    sizes = (first.features.X.shape[1], *cfg.network.hidden, cfg.features.n_classes)
    kw = {"steps": t.steps, "batch_size": t.batch_size, "lr": cfg.backtest.dense_lr, "device": device,
          "checkpoints": t.checkpoints, "patience": t.patience}

    def held(named: Mapping[str, DenseTask]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        out = {n: (s.X_holdout, s.y_holdout) for n, s in named.items() if s.y_holdout is not None}
        return out or None

    fresh = {windowed(n, f.window.tag): s for f, by in zip(fitted, sets) for n, s in by.items() if not s.warm_start}
    streams = {windowed(n, f.window.tag): (t.seed + f.window.index, n)
               for f, by in zip(fitted, sets) for n, s in by.items() if not s.warm_start}
    scratch = train_dense({n: (s.X, s.y) for n, s in fresh.items()}, sizes, seed=t.seed, streams=streams,
                          holdout=held(fresh), **kw) if fresh else None
    weights, out = dict(history.dense_weights), []
    for f, by in zip(fitted, sets):
        warm = {n: s for n, s in by.items() if s.warm_start}
        tuned = train_dense({n: (s.X, s.y) for n, s in warm.items()}, sizes, seed=t.seed + f.window.index,
                            init=warm_starts(warm, weights), holdout=held(warm), **kw) if warm else None
        bank = DenseBank(sizes, {}, device=torch.device(device))
        for n, s in by.items():
            source, key = (tuned, n) if s.warm_start else (scratch, windowed(n, f.window.tag))
            bank.weights[n] = source.weights[key]  # type: ignore[union-attr]
            bank.final_loss[n] = source.final_loss[key]  # type: ignore[union-attr]
            if s.y_holdout is not None:
                z = torch.log_softmax(bank.logits(n, s.X_holdout).double(), dim=1).numpy()
                bank.calibrators[n] = Calibrator.fit(z, s.y_holdout, s.prior)
        weights = {**weights, **{n: bank.copy_of(n) for n, s in by.items() if s.warm_start}}
        out.append((bank if by else None, dict(weights)))
    return out


def _forecast_market(cfg: Config, prices: pd.DataFrame, fit: WindowFit, strategies: Sequence[Strategy],
                     net: FrozenNet, bank: MaskBank, dense: DenseBank | None,
                     prepared: Mapping[str, object]) -> pd.DataFrame:
    """Every strategy's forecast rows for one market on the window's test days (empty: none)."""
    forecaster = forecaster_for([fit], cfg, net, bank)
    w = fit.window
    pos = prices.index.get_indexer(prices.loc[w.test_start: w.test_end].index)
    if len(pos) == 0:
        return pd.DataFrame()
    ctx = MarketWindow(cfg, fit, prices, pos, forecaster, dense, prepared)
    parts = [ctx.rows(s.name, fc) for s in strategies if (fc := s.forecast(ctx)) is not None]
    return pd.concat(parts, ignore_index=True)


def _combine(cfg: Config, prices: dict[str, pd.DataFrame], windows: list[Window], results: list[WindowResult],
             history: History, shared: Mapping[str, float]) -> Forecasts:
    """The windows' values as one :class:`Forecasts`."""
    parts = [frame for r in results for frame in r.rows.values()]
    if not parts:
        raise DataError("backtest: no window produced forecasts (every market too short for every window)")
    rows = pd.concat(parts, ignore_index=True)
    test_days = {m: pd.DatetimeIndex(sorted(set(rows.loc[rows.market == m, "date"]))) for m in rows.market.unique()}
    closes = {m: prices[m]["close"].reindex(d) for m, d in test_days.items()}
    asset = {m: prices[m]["close"].pct_change().loc[d] for m, d in test_days.items()}
    fits = {(r.window.index, m): f for r in results for m, f in r.fits.items()}
    mask_rows: dict[str, list[list[float]]] = {}
    finetune_rows: dict[str, list[list[float]]] = {}
    for r in results:
        for m, row in r.mask_acc.items():
            mask_rows.setdefault(m, []).append(row)
        for m, row in r.finetune_acc.items():
            finetune_rows.setdefault(m, []).append(row)
    timings = {k: round(sum(r.seconds[k] for r in results) + shared.get(k, 0.0), 2) for k in STAGES}
    return Forecasts(rows, closes, asset, windows, fits, history.net, history.bank,  # type: ignore[arg-type]
                     {m: continual.square(v) for m, v in finetune_rows.items()},
                     {m: continual.square(v) for m, v in mask_rows.items()},
                     _storage(history.net, history.bank, fits), [r.log_record() for r in results], timings,
                     class_names(cfg.features.n_classes))


def _storage(net: FrozenNet | None, bank: MaskBank | None,
             fits: dict[tuple[int, str], WindowFit]) -> dict[str, dict[str, int]]:
    """Count and bytes of each model family at the end: the bank's masks at 1 bit per weight vs
    one fp32 dense net per market, regime and window (the regimes that got a mask of their own)."""
    weights = sum(o * i for o, i in net.shapes) if net is not None else 0
    n_regime = sum(1 for f in fits.values() for r in f.regimes.names
                   if f.model.masks[r] != f.model.all_mask)  # type: ignore[union-attr]
    return {
        "supermasks (1 bit per weight)": {"count": len(bank) if bank is not None else 0,
                                          "bytes": bank.nbytes_bits() if bank is not None else 0},
        "dense per market and regime (fp32)": {"count": n_regime, "bytes": 4 * weights * n_regime},
        "frozen base (regenerated from its seed)": {"count": 1, "bytes": 0},
    }
