"""The strategy registry, and what hmm_rule and dense_regime decide on constructed cases.

A constructed window: a stand-in gated forecaster returns known regime posteriors and inputs,
and a hand-built dense bank holds nets that each say one class with known probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

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
from supsup_fin.decision import DecisionRule

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
            dense: DenseBank | None = None) -> MarketWindow:
    """Market ``m`` trading DAYS[1:] (5 days) with the given next-regime posteriors ``[5, R]``."""
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
    fit = WindowFit(window, features, SimpleNamespace(names=regimes), np.arange(0))  # type: ignore[arg-type]
    prices = pd.DataFrame({"close": [100.0, 102, 99, 99.5, 102, 103]}, index=DAYS)
    inputs = np.ones((len(DAYS), 2)) if X is None else X
    return MarketWindow(cfg, fit, prices, np.arange(1, 6), StandIn(frame, inputs), dense)  # type: ignore[arg-type]


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
    # no posterior counts as calm (long); a tie goes to the calmer regime
    np.testing.assert_array_equal(fc.signal, [1.0, 0.0, 1.0, 1.0, 0.0])


def test_hmm_rule_with_three_regimes_only_avoids_the_most_turbulent() -> None:
    post = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1], [0.0, 0.45, 0.55], [0.34, 0.33, 0.33]])
    fc = get_strategy("hmm_rule").forecast(_window(post, ["calm", "normal", "turbulent"]))
    np.testing.assert_array_equal(fc.signal, [1.0, 0.0, 1.0, 0.0, 1.0])


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
    want = np.array([flat, up, flat, [np.nan] * 3, up])
    np.testing.assert_allclose(p, want, rtol=1e-12)
    np.testing.assert_array_equal(p[[0, 2]], bank.predict_proba("m/regime/calm", X[[1, 3]].astype(np.float32)))


def test_dense_regime_falls_back_to_the_dense_net_for_a_regime_without_its_own() -> None:
    bank = _bank(m__dense=0, m__regime__calm=1)  # the turbulent regime got no mask, so no net
    p = get_strategy("dense_regime").forecast(_window(POST, ["calm", "turbulent"], X, bank)).probs
    np.testing.assert_array_equal(p.argmax(axis=1)[[0, 1, 2, 4]], [1, 0, 1, 0])
    without_dense = _bank(m__regime__calm=1)  # the dense baseline is not run: no forecast there
    p = get_strategy("dense_regime").forecast(_window(POST, ["calm", "turbulent"], X, without_dense)).probs
    assert np.isnan(p[[1, 3, 4]]).all() and np.isfinite(p[[0, 2]]).all()


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
