"""The strategy registry, and what hmm_rule and dense_regime decide on constructed cases.

A constructed window: a stand-in gated forecaster returns known regime posteriors and inputs,
and a hand-built dense bank holds nets that each say one class with known probabilities.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from supsup_fin.backtest.dense import DenseBank
from supsup_fin.backtest.fitting import WindowFit
from supsup_fin.backtest.market_window import Forecast, MarketWindow
from supsup_fin.backtest.strategies import (
    GATE_MODES,
    STRATEGIES,
    DenseTask,
    Strategy,
    UnknownStrategyError,
    get_strategy,
    select,
)
from supsup_fin.backtest.windows import Window
from supsup_fin.config import BASELINES, config_from_dict
from supsup_fin.decision import ClassReturns, DecisionRule

DAYS = pd.bdate_range("2021-01-04", periods=6, name="date")
CLASSES = ["down", "flat", "up"]


@dataclass
class StandIn:
    """The two things a window reads from the gated forecaster: frames and inputs, per price row."""

    frame: pd.DataFrame
    X: np.ndarray
    classes: tuple[str, ...] = tuple(CLASSES)
    min_rows: int = 1
    decision: DecisionRule = DecisionRule(rule="sign")

    def predict_frames(self, market, view, modes):
        return {m: self.frame.loc[view.index] for m in modes}

    def inputs(self, market, view):
        return self.X[DAYS.get_indexer(view.index)]


def _window(posterior: np.ndarray, regimes: list[str], X: np.ndarray | None = None,
            dense: DenseBank | None = None, decision: DecisionRule = DecisionRule(rule="sign"),
            returns: ClassReturns | None = None) -> MarketWindow:
    """Market ``m`` trading DAYS[1:] (5 days) with the given next-regime posteriors ``[5, R]``
    (the decision layer's class ``returns``: its fit's model's, when given)."""
    cfg = config_from_dict({"markets": [{"name": "m", "source": "synthetic", "dataset": "easy"}],
                            "features": {"horizon": 1}, "backtest": {"modes": ["soft"]}})
    post = np.vstack([np.full(len(regimes), np.nan), posterior])
    frame = pd.DataFrame({f"regime_{r}": post[:, k] for k, r in enumerate(regimes)}, index=DAYS)
    frame["regime"] = [regimes[k] for k in np.nan_to_num(post).argmax(axis=1)]
    for c in CLASSES:
        frame[f"p_{c}"] = 1 / 3
    frame["masks"] = ""
    features = SimpleNamespace(market="m", class_edges=np.array([-0.01, 0.01]), prior=np.array([0.2, 0.3, 0.5]))
    window = Window(0, DAYS[0], DAYS[1], DAYS[-1])
    model = None if returns is None else SimpleNamespace(class_returns=returns)
    hmm = SimpleNamespace(states_by=lambda key: np.arange(len(regimes)))  # listed in ascending volatility
    fit = WindowFit(window, features, SimpleNamespace(names=regimes, model=hmm), np.arange(0), model=model)  # type: ignore[arg-type]
    prices = pd.DataFrame({"close": [100.0, 102, 99, 99.5, 102, 103]}, index=DAYS)
    inputs = np.ones((len(DAYS), 2)) if X is None else X
    return MarketWindow(cfg, fit, prices, np.arange(1, 6), StandIn(frame, inputs, decision=decision),  # type: ignore[arg-type]
                        dense)


# -- the registry ---------------------------------------------------------------------------------
def test_registry_holds_every_configurable_strategy_and_rejects_others() -> None:
    assert set(STRATEGIES) == {f"supsup_{m}" for m in (*GATE_MODES, "auto")} | set(BASELINES)
    assert all(s.name == name for name, s in STRATEGIES.items())
    with pytest.raises(UnknownStrategyError, match=r"unknown strategy 'lstm'.*'buy_and_hold'.*'supsup_soft'"):
        get_strategy("lstm")
    with pytest.raises(ValueError, match="expected one of"):
        select(["soft"], ["lstm"])


def test_selection_runs_gate_modes_in_config_order_then_baselines_in_registry_order() -> None:
    names = [s.name for s in select(["soft", "hard"], ["oracle", "dense", "buy_and_hold"])]
    assert names == ["supsup_soft", "supsup_hard", "buy_and_hold", "dense", "oracle"]


def test_a_new_strategy_is_a_few_lines() -> None:
    @dataclass(frozen=True)
    class ClassPrior(Strategy):
        name: str = "class_prior"

        def forecast(self, ctx: MarketWindow) -> Forecast:
            return Forecast.from_probs(np.tile(ctx.fit.features.prior, (ctx.n, 1)))

    ctx = _window(np.tile([0.9, 0.1], (5, 1)), ["calm", "turbulent"])
    rows = ctx.rows("class_prior", ClassPrior().forecast(ctx))
    assert list(rows.date) == list(DAYS[1:]) and (rows.strategy == "class_prior").all()
    np.testing.assert_array_equal(rows[["p_down", "p_flat", "p_up"]].to_numpy(), np.tile([0.2, 0.3, 0.5], (5, 1)))
    np.testing.assert_allclose(rows["signal"], 0.3)  # p_up - p_down
    # the class of each day's next-day return (102 -> 99 -> 99.5 -> 102 -> 103 -> ?), edges +-1%
    np.testing.assert_array_equal(rows["y"], [0, 1, 2, 1, -1])


# -- hmm_rule -------------------------------------------------------------------------------------
def test_hmm_rule_is_flat_exactly_on_days_whose_most_probable_next_regime_is_turbulent() -> None:
    post = np.array([[0.8, 0.2], [0.3, 0.7], [np.nan, np.nan], [0.5, 0.5], [0.49, 0.51]])
    fc = get_strategy("hmm_rule").forecast(_window(post, ["calm", "turbulent"]))
    assert fc.probs is None
    # a tie goes to the calmer regime; a day without a posterior has no signal (see below)
    np.testing.assert_array_equal(fc.signal, [1.0, 0.0, np.nan, 1.0, 0.0])


def test_a_day_without_a_regime_posterior_is_flat_and_counted_never_long() -> None:
    """hmm_rule used to read a missing posterior as calm (long) and dense_regime as regime 0's net."""
    post = np.array([[0.8, 0.2], [np.nan, np.nan], [0.9, np.nan], [np.inf, 0.0], [0.6, 0.4]])
    ctx = _window(post, ["calm", "turbulent"], dense=_bank(m__dense=2, m__regime__calm=2, m__regime__turbulent=0))
    for name in ("hmm_rule", "dense_regime"):
        rows = ctx.rows(name, get_strategy(name).forecast(ctx))
        np.testing.assert_array_equal(rows["decision"], [1.0, 0.0, 0.0, 0.0, 1.0])
        np.testing.assert_array_equal(rows["flat_missing"], [False, True, True, True, False])


def test_hmm_rule_with_three_regimes_only_avoids_the_most_turbulent() -> None:
    post = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1], [0.0, 0.45, 0.55], [0.34, 0.33, 0.33]])
    fc = get_strategy("hmm_rule").forecast(_window(post, ["calm", "normal", "turbulent"]))
    np.testing.assert_array_equal(fc.signal, [1.0, 0.0, 1.0, 0.0, 1.0])


def test_hmm_rule_avoids_the_most_turbulent_regime_under_the_mean_order_too() -> None:
    """Ordered by mean, the most turbulent state is ``bear`` (first), not the last one (``bull``)."""
    post = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1], [0.0, 0.45, 0.55], [0.34, 0.33, 0.33]])
    ctx = _window(post, ["bear", "sideways", "bull"])
    ctx.fit.regimes.model.states_by = lambda key: np.array([2, 1, 0])  # bull calmest, bear most volatile
    fc = get_strategy("hmm_rule").forecast(ctx)
    np.testing.assert_array_equal(fc.signal, [1.0, 1.0, 0.0, 1.0, 0.0])


# -- dense_regime ---------------------------------------------------------------------------------
def _says(cls: int) -> list[torch.Tensor]:
    """A one-layer net [3, 2] whose logits on x = (1, 0) are 4 for class ``cls``, 0 otherwise."""
    w = torch.zeros(3, 2)
    w[cls, 0] = 4.0
    return [w]


def _bank(**nets: int) -> DenseBank:
    return DenseBank((2, 3), {name.replace("__", "/"): _says(c) for name, c in nets.items()})


POST = np.array([[0.8, 0.2], [0.3, 0.7], [np.nan, np.nan], [0.6, 0.4], [0.1, 0.9]])  # calm turb calm calm turb
X = np.tile([1.0, 0.0], (6, 1))
X[4, 1] = np.nan  # day 4 (the 4th test day) has no complete input window


def test_dense_regime_uses_the_net_of_the_most_probable_next_regime() -> None:
    bank = _bank(m__dense=0, m__regime__calm=1, m__regime__turbulent=2)
    p = get_strategy("dense_regime").forecast(_window(POST, ["calm", "turbulent"], X, bank)).probs
    hi, lo = np.exp(4) / (np.exp(4) + 2), 1 / (np.exp(4) + 2)
    flat, up = [lo, hi, lo], [lo, lo, hi]
    want = np.array([flat, up, [np.nan] * 3, [np.nan] * 3, up])  # no posterior; no complete input
    np.testing.assert_allclose(p, want, rtol=1e-12)
    np.testing.assert_array_equal(p[[0]], bank.predict_proba("m/regime/calm", X[[1]].astype(np.float32)))


def test_dense_regime_falls_back_to_the_dense_net_for_a_regime_without_its_own() -> None:
    bank = _bank(m__dense=0, m__regime__calm=1)  # the turbulent regime got no mask, so no net
    p = get_strategy("dense_regime").forecast(_window(POST, ["calm", "turbulent"], X, bank)).probs
    np.testing.assert_array_equal(p.argmax(axis=1)[[0, 1, 4]], [1, 0, 0])
    assert np.isnan(p[[2, 3]]).all()
    without_dense = _bank(m__regime__calm=1)  # the dense baseline is not run: no forecast there
    p = get_strategy("dense_regime").forecast(_window(POST, ["calm", "turbulent"], X, without_dense)).probs
    assert np.isnan(p[1:]).all() and np.isfinite(p[0]).all()


def test_dense_strategies_declare_their_nets_from_a_windows_fit() -> None:
    tag = "2021-01-04"
    features = SimpleNamespace(market="m", X=np.arange(12.0).reshape(6, 2), y=np.array([0, 1, 2, 0, 1, 2]),
                               rows=lambda segment: np.arange(6))
    regimes = SimpleNamespace(names=["calm", "turbulent"], train_labels=np.array([0, 0, 1, 1, -1, 0]))
    window = Window(0, DAYS[0], DAYS[1], DAYS[-1])
    fit = WindowFit(window, features, regimes, np.array([3, 5]))  # type: ignore[arg-type]
    trained = frozenset({f"m/calm@{tag}", f"m/ALL@{tag}"})
    regime = get_strategy("dense_regime").dense_tasks(fit, trained)
    assert list(regime) == ["m/regime/calm"]  # the turbulent regime has no mask at this window
    np.testing.assert_array_equal(regime["m/regime/calm"].y, [0, 1, 2])  # rows 0, 1, 5
    dense = get_strategy("dense").dense_tasks(fit, trained)["m/dense"]
    np.testing.assert_array_equal(dense.y, [0, 1, 2, 0, 2])  # every labelled training row
    ft = get_strategy("dense_finetune").dense_tasks(fit, trained)
    assert isinstance(ft["m/finetune"], DenseTask) and ft["m/finetune"].warm_start
    np.testing.assert_array_equal(ft["m/finetune"].y, [0, 2])  # the window's new rows only
    assert get_strategy("hmm_rule").dense_tasks(fit, trained) == {}


# -- a forecast that is not a number never becomes a position --------------------------------------
def test_an_expected_return_that_is_not_a_number_is_flat_and_counted() -> None:
    """Class returns without a finite mean (a class never seen, a broken fit) used to go flat
    under the kelly rule without a trace."""
    post = np.tile([0.9, 0.1], (5, 1))
    probs = np.array([[0.1, 0.2, 0.7], [0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.3, 0.2, 0.5]])
    kelly = DecisionRule(rule="kelly", target_vol=None)
    sound = _window(post, ["calm", "turbulent"], decision=kelly, returns=ClassReturns((-0.02, 0.0, 0.02), (1e-4,) * 3))
    rows = sound.rows("x", Forecast.from_probs(probs))
    assert (rows["decision"].abs() > 0.4).sum() == 4 and not rows["flat_missing"].any()
    broken = _window(post, ["calm", "turbulent"], decision=kelly, returns=ClassReturns((-0.02, np.nan, 0.02), (1e-4,) * 3))
    rows = broken.rows("x", Forecast.from_probs(probs))
    np.testing.assert_array_equal(rows["decision"], [0.0] * 5)
    np.testing.assert_array_equal(rows["flat_missing"], [True] * 5)
    assert rows["expected_return"].isna().all()




@st.composite
def _with_holes(draw: st.DrawFn, shape: int | tuple[int, ...], lo: float = -1.0) -> np.ndarray:
    """Values in [lo, 1], about one in eight replaced by NaN, inf or -inf."""
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, 1.0)))
    holes = draw(hnp.arrays(np.bool_, shape, elements=st.sampled_from([False] * 7 + [True])))
    bad = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([np.nan, np.inf, -np.inf])))
    return np.where(holes, bad, x)


@functools.cache
def _fuzz_ctx() -> MarketWindow:
    return _window(np.tile([0.9, 0.1], (5, 1)), ["calm", "turbulent"])


def _check_rows(signal: np.ndarray, probs: np.ndarray) -> None:
    """Rule and probabilistic forecasts with non-finite entries: a finite decision every day, 0 and
    counted exactly where the forecast is not a number, the rule's own signal elsewhere."""
    ctx = _fuzz_ctx()
    rule = ctx.rows("rule", Forecast.rule(signal))
    missing = ~np.isfinite(signal)
    np.testing.assert_array_equal(rule["flat_missing"], missing)
    np.testing.assert_array_equal(rule["decision"], np.where(missing, 0.0, signal))
    p = np.abs(probs)
    fc = ctx.rows("probs", Forecast.from_probs(p))
    missing = ~np.isfinite(p).all(axis=1)
    want = DecisionRule(rule="sign").positions(np.where(missing[:, None], 0.0, p), None, 1)[1]
    np.testing.assert_array_equal(fc["flat_missing"], missing)
    np.testing.assert_array_equal(fc["decision"], np.where(missing, 0.0, want))
    event(f"rule: {int(rule['flat_missing'].sum())} of 5 days flat without a forecast")
    event(f"probabilities: {int(missing.sum())} of 5 days flat without a forecast")


@settings(max_examples=FUZZ_EXAMPLES)
@given(_with_holes(5), _with_holes((5, 3)))
def test_fuzzed_forecasts_that_are_not_numbers_are_flat_and_counted(signal: np.ndarray, probs: np.ndarray) -> None:
    _check_rows(signal, probs)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES_SLOW)
@given(_with_holes(5), _with_holes((5, 3)))
def test_fuzzed_forecasts_that_are_not_numbers_are_flat_and_counted_slow(signal: np.ndarray,
                                                                         probs: np.ndarray) -> None:
    _check_rows(signal, probs)


def _check_posterior(post: np.ndarray) -> None:
    """hmm_rule on fuzzed posteriors: long or flat by the rule on rows with a posterior, flat and
    counted on the others, never short."""
    ctx = _window(post, ["calm", "turbulent"])
    rows = ctx.rows("hmm_rule", get_strategy("hmm_rule").forecast(ctx))
    missing = ~np.isfinite(post).all(axis=1)
    turbulent = np.where(missing, False, post[:, 1] > post[:, 0])
    np.testing.assert_array_equal(rows["flat_missing"], missing)
    np.testing.assert_array_equal(rows["decision"], np.where(missing | turbulent, 0.0, 1.0))
    event(f"days without a posterior: {int(missing.sum())} of 5")


@settings(max_examples=FUZZ_EXAMPLES)
@given(_with_holes((5, 2), lo=0.0))
def test_fuzzed_posteriors_never_make_hmm_rule_long_without_one(post: np.ndarray) -> None:
    _check_posterior(post)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES_SLOW)
@given(_with_holes((5, 2), lo=0.0))
def test_fuzzed_posteriors_never_make_hmm_rule_long_without_one_slow(post: np.ndarray) -> None:
    _check_posterior(post)


def test_the_result_counts_the_days_each_strategy_was_flat_without_a_forecast() -> None:
    """Forecast rows of two markets and two rule strategies, some days flagged: the daily frame keeps
    the flags and the comparison table counts them per market, and over markets for the portfolio."""
    from supsup_fin.backtest.engine import Forecasts
    from supsup_fin.backtest.report import PORTFOLIO, summarise

    cfg = config_from_dict({"markets": [{"name": m, "source": "synthetic", "dataset": "easy"} for m in ("a", "b")],
                            "backtest": {"vol_window": 5}})
    days = pd.bdate_range("2021-01-04", periods=12)
    rng = np.random.default_rng(3)
    missing = {("a", "long"): [2, 3], ("a", "short"): [], ("b", "long"): [0, 5, 9], ("b", "short"): [11]}
    parts = []
    for (m, s), flat in missing.items():
        f = np.isin(np.arange(12), flat)
        parts.append(pd.DataFrame({"date": days, "market": m, "strategy": s, "window": 0, "y": -1, "regime": "calm",
                                   "p_down": np.nan, "p_flat": np.nan, "p_up": np.nan, "signal": np.where(f, np.nan, 1.0),
                                   "decision": np.where(f, 0.0, 1.0 if s == "long" else -1.0), "flat_missing": f}))
    closes = {m: pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.01, 12))), index=days) for m in ("a", "b")}
    fc = Forecasts(pd.concat(parts, ignore_index=True), closes, {m: c.pct_change().fillna(0.0) for m, c in closes.items()},
                   [], {}, None, None, {}, {}, {}, classes=CLASSES)  # type: ignore[arg-type]
    res = summarise(fc, cfg, {})
    for (m, s), flat in missing.items():
        assert res.table.loc[(m, s), "flat_missing"] == len(flat)
        daily = res.daily[(res.daily.market == m) & (res.daily.strategy == s)]
        assert list(np.flatnonzero(daily["flat_missing"])) == flat
    assert res.table.loc[(PORTFOLIO, "long"), "flat_missing"] == 5
    assert res.table.loc[(PORTFOLIO, "short"), "flat_missing"] == 1
