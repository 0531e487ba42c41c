"""The backtest's strategies: named objects in one registry, each forecasting a market's window.

Every strategy answers one call, ``forecast(ctx: MarketWindow) -> Forecast | None``: the class
probabilities and/or the trading signal of each test day of one market in one window (``None``:
the strategy has nothing to say there, e.g. a dense net that was not trained). Everything a
forecast may use is in the :class:`~supsup_fin.backtest.market_window.MarketWindow`, built from
data up to each decision date.
Two optional hooks: :meth:`Strategy.dense_tasks` declares dense nets to train at each window
(all of a window's nets train in one batched call), and :meth:`Strategy.prepare` computes
something once per market before the walk (the oracle's filter over the whole history).

Adding a strategy is a few lines: a frozen dataclass with a ``name`` default and a
``forecast``, and one entry in :data:`STRATEGIES`. E.g. the class prior of the window's
training rows::

    @dataclass(frozen=True)
    class ClassPrior(Strategy):
        name: str = "class_prior"

        def forecast(self, ctx):
            return Forecast.from_probs(np.tile(ctx.fit.features.prior, (ctx.n, 1)))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from supsup_fin.backtest.fitting import WindowFit, oracle_params, windowed
from supsup_fin.backtest.market_window import Forecast, MarketWindow
from supsup_fin.config import Config
from supsup_fin.data.oracle import oracle_filter, oracle_proba
from supsup_fin.errors import ConfigError
from supsup_fin.forecaster.calibration import Calibrator
from supsup_fin.forecaster.evaluate import most_probable_regime
from supsup_fin.forecaster.selection import regime_rows
from supsup_fin.gate_modes import AUTO, GATE_MODES

SUPSUP = "supsup"
"""Prefix of the gated forecaster's strategies: ``supsup_<mode>`` (``supsup_market``: the ALL mask)."""


@dataclass(frozen=True)
class DenseTask:
    """A dense net to train at one window: inputs ``X [n, in]``, classes ``y [n]``, whether it
    continues from its weights at the last window that trained it (``warm_start``), and its
    held-out rows (``X_holdout``, ``y_holdout``: the window's selection slice, for early stopping
    and calibration, as the masks get) with the class ``prior`` a calibration map shrinks toward."""

    X: np.ndarray
    y: np.ndarray
    warm_start: bool = False
    X_holdout: np.ndarray | None = None
    y_holdout: np.ndarray | None = None
    prior: np.ndarray | None = None


def _dense_task(fit: WindowFit, rows: np.ndarray, holdout: np.ndarray, warm_start: bool = False) -> DenseTask:
    fs = fit.features
    if not len(holdout):
        return DenseTask(fs.X[rows], fs.y[rows], warm_start)
    return DenseTask(fs.X[rows], fs.y[rows], warm_start, fs.X[holdout], fs.y[holdout], fs.prior)


@dataclass(frozen=True)
class Strategy:
    """A named strategy. Subclasses set a ``name`` default and implement :meth:`forecast`."""

    name: str
    trains_dense: ClassVar[bool] = False
    """Whether :meth:`dense_tasks` may declare nets (then the window trains a dense bank)."""

    def forecast(self, ctx: MarketWindow) -> Forecast | None:
        """The strategy's forecasts on ``ctx``'s test days, or ``None`` to add no rows."""
        raise NotImplementedError

    def dense_tasks(self, fit: WindowFit, trained: frozenset[str]) -> dict[str, DenseTask]:
        """Dense nets to train for ``fit``'s market at its window (``trained``: the window's new masks)."""
        return {}

    def prepare(self, cfg: Config, market: str, prices: pd.DataFrame) -> object | None:
        """Computed once per market before the walk, handed back as ``ctx.prepared[name]``."""
        return None


# -- the gated forecaster and the rules ---------------------------------------------------------
@dataclass(frozen=True)
class Gated(Strategy):
    """The supermask forecaster with gate ``mode`` (``market``: the market's ALL mask)."""

    mode: str = "soft"

    def forecast(self, ctx: MarketWindow) -> Forecast:
        f = ctx.gated[self.mode]
        return Forecast.from_probs(f[[f"p_{c}" for c in ctx.classes]].to_numpy(), f["masks"].fillna("").to_numpy())


@dataclass(frozen=True)
class BuyAndHold(Strategy):
    """Long every day."""

    name: str = "buy_and_hold"

    def forecast(self, ctx: MarketWindow) -> Forecast:
        return Forecast.rule(np.ones(ctx.n))


@dataclass(frozen=True)
class HmmRule(Strategy):
    """Flat when the most probable next regime is the most turbulent one (the highest return
    variance, whatever ``regimes.order_by`` names and orders the states), else long; no signal
    (so flat, and counted) on a day without a finite posterior."""

    name: str = "hmm_rule"

    def forecast(self, ctx: MarketWindow) -> Forecast:
        regime = most_probable_regime(ctx.posterior)
        turbulent = int(ctx.fit.regimes.model.states_by("volatility")[-1])
        return Forecast.rule(np.where(regime < 0, np.nan, np.where(regime == turbulent, 0.0, 1.0)))


@dataclass(frozen=True)
class Oracle(Strategy):
    """The true model's forecast (synthetic markets only): its filter over the whole history,
    computed once, is causal, so a window reads it up to each decision."""

    name: str = "oracle"

    def prepare(self, cfg: Config, market: str, prices: pd.DataFrame) -> pd.DataFrame | None:
        params = oracle_params(cfg, market)
        return None if params is None else oracle_filter(prices, params)

    def forecast(self, ctx: MarketWindow) -> Forecast | None:
        filtered = ctx.prepared.get(self.name)
        if filtered is None:
            return None
        first, stop = ctx.test_pos[0] - 1, ctx.test_pos[-1] + 1
        op = oracle_proba(ctx.prices.iloc[first:stop], oracle_params(ctx.cfg, ctx.market),
                          ctx.cfg.features.horizon, ctx.fit.features.class_edges,
                          filtered=filtered.iloc[first:stop])  # type: ignore[attr-defined]
        return Forecast.from_probs(op.reindex(ctx.dates).to_numpy())


# -- dense baselines (see supsup_fin.backtest.dense) --------------------------------------------
def dense_net(market: str) -> str:
    """Name of a market's dense net trained from scratch on the window's training rows."""
    return f"{market}/dense"


def finetune_net(market: str) -> str:
    """Name of a market's dense net fine-tuned window after window on each window's new rows."""
    return f"{market}/finetune"


def regime_net(market: str, regime: str) -> str:
    """Name of a market's dense net of one regime's training rows."""
    return f"{market}/regime/{regime}"


@dataclass(frozen=True)
class Dense(Strategy):
    """A dense net of the supermask net's shape, trained from scratch on every window's training rows."""

    name: str = "dense"
    trains_dense: ClassVar[bool] = True

    def dense_tasks(self, fit: WindowFit, trained: frozenset[str]) -> dict[str, DenseTask]:
        return {dense_net(fit.market): _dense_task(fit, fit.train_rows(), fit.holdout_rows)}

    def forecast(self, ctx: MarketWindow) -> Forecast | None:
        name = dense_net(ctx.market)
        return Forecast.from_probs(ctx.dense_proba(name)) if ctx.dense is not None and name in ctx.dense else None


@dataclass(frozen=True)
class DenseFinetune(Strategy):
    """One dense net per market, continued window after window on each window's new rows only."""

    name: str = "dense_finetune"
    trains_dense: ClassVar[bool] = True

    def dense_tasks(self, fit: WindowFit, trained: frozenset[str]) -> dict[str, DenseTask]:
        if not len(fit.new_rows):
            return {}
        return {finetune_net(fit.market): _dense_task(fit, fit.new_rows, fit.holdout_rows, warm_start=True)}

    def forecast(self, ctx: MarketWindow) -> Forecast | None:
        name = finetune_net(ctx.market)
        return Forecast.from_probs(ctx.dense_proba(name)) if ctx.dense is not None and name in ctx.dense else None


@dataclass(frozen=True)
class DenseRegime(Strategy):
    """Each day, the dense net of the most probable next regime (argmax of the posterior), trained
    on that regime's rows; regimes without a mask of their own at the window use the market's
    ``dense`` net, and NaN probabilities when that baseline is not run; NaN probabilities (no
    forecast) on a day without a finite posterior."""

    name: str = "dense_regime"
    trains_dense: ClassVar[bool] = True

    def dense_tasks(self, fit: WindowFit, trained: frozenset[str]) -> dict[str, DenseTask]:
        rows, labels = fit.train_rows(), fit.regimes.train_labels
        out = {}
        for k, regime in enumerate(fit.regimes.names):
            if windowed(f"{fit.market}/{regime}", fit.window.tag) in trained:
                idx = rows[labels[rows] == k]
                hold = regime_rows(fit.holdout_rows, fit.regimes.next_proba, k) if len(fit.holdout_rows) else idx[:0]
                out[regime_net(fit.market, regime)] = _dense_task(fit, idx, hold)
        return out

    def forecast(self, ctx: MarketWindow) -> Forecast | None:
        if ctx.dense is None:
            return None
        pick = most_probable_regime(ctx.posterior)
        fallback = dense_net(ctx.market)
        p = ctx.dense_proba(fallback) if fallback in ctx.dense else np.full((ctx.n, len(ctx.classes)), np.nan)
        for k, regime in enumerate(ctx.fit.regimes.names):
            if regime_net(ctx.market, regime) in ctx.dense:
                p[pick == k] = ctx.dense_proba(regime_net(ctx.market, regime))[pick == k]
        p[pick < 0] = np.nan
        return Forecast.from_probs(p)


@dataclass(frozen=True)
class ClassPrior(Strategy):
    """Knowing nothing: the class frequencies of the window's training rows, every day."""

    name: str = "class_prior"

    def forecast(self, ctx: MarketWindow) -> Forecast:
        return Forecast.from_probs(np.tile(ctx.fit.features.prior, (ctx.n, 1)))


LOGISTIC_C = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Inverse L2 strengths tried by the logistic baseline, on the selection slice."""
LOGISTIC_SOLVER = "newton-cholesky"
"""Newton steps on the exact Hessian: 3-4 iterations where L-BFGS took 14-384 on a demo window's
~3,900 correlated feature windows (64 inputs), 5x faster for the five C values and closer to the
optimum (multinomial since scikit-learn 1.6)."""


@dataclass(frozen=True)
class Logistic(Strategy):
    """What a quant would try first: multinomial logistic regression on the same inputs (the scaled
    feature windows), its L2 strength chosen from :data:`LOGISTIC_C` and then calibrated on the
    window's selection slice, as the masks are (trained on the same fit rows, not refitted)."""

    name: str = "logistic"

    def forecast(self, ctx: MarketWindow) -> Forecast:
        from sklearn.linear_model import LogisticRegression

        fs, rows, hold = ctx.fit.features, ctx.fit.train_rows(), ctx.fit.holdout_rows
        X, ok = ctx.inputs
        if not len(hold):
            model = LogisticRegression(C=1.0, solver=LOGISTIC_SOLVER, max_iter=500).fit(fs.X[rows], fs.y[rows])
            probs = np.exp(model.predict_log_proba(X))
        else:
            best = None  # (held-out NLL, model, held-out log-probabilities) of the best C
            for c in LOGISTIC_C:
                model = LogisticRegression(C=c, solver=LOGISTIC_SOLVER, max_iter=500).fit(fs.X[rows], fs.y[rows])
                z = model.predict_log_proba(fs.X[hold])
                nll = float(-z[np.arange(len(hold)), fs.y[hold]].mean())
                if best is None or nll < best[0]:
                    best = (nll, model, z)
            _, model, z_hold = best
            probs = Calibrator.fit(z_hold, fs.y[hold], fs.prior)(model.predict_log_proba(X))
        probs[~ok] = np.nan
        return Forecast.from_probs(probs)


STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (
        *(Gated(f"{SUPSUP}_{mode}", mode) for mode in (*GATE_MODES, AUTO)),
        BuyAndHold(), HmmRule(), ClassPrior(), Logistic(), Dense(), DenseFinetune(), DenseRegime(), Oracle(),
    )
}
"""Every strategy by name. Gated strategies come first, then the baselines in this order."""


class UnknownStrategyError(ConfigError):
    """A strategy name that :data:`STRATEGIES` does not hold."""


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; :class:`UnknownStrategyError` lists the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(f"unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}") from None


def select(modes: Sequence[str], baselines: Sequence[str]) -> list[Strategy]:
    """The strategies a backtest runs: ``supsup_<mode>`` per gate mode in ``modes``' order, then
    the baselines in registry order (the order of the forecast rows)."""
    gated = [get_strategy(f"{SUPSUP}_{m}") for m in modes]
    others = sorted({get_strategy(b).name for b in baselines}, key=list(STRATEGIES).index)
    return gated + [STRATEGIES[b] for b in others]


def dense_sets(strategies: Sequence[Strategy], fits: Mapping[str, WindowFit],
               trained: frozenset[str]) -> dict[str, DenseTask]:
    """Every dense net the strategies train at a window: market by market, strategy by strategy
    (the order of the batched call, which a net's name and seed alone do not fix on every device)."""
    return {name: task for fit in fits.values() for s in strategies
            for name, task in s.dense_tasks(fit, trained).items()}


def warm_starts(sets: Mapping[str, DenseTask],
                weights: Mapping[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Start weights of the warm-started nets that an earlier window trained."""
    return {n: weights[n] for n, t in sets.items() if t.warm_start and n in weights}
