"""Positions, fills, costs and the equal-risk portfolio against hand-computed answers; windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from supsup_fin.backtest.positions import equal_risk_portfolio, simulate
from supsup_fin.backtest.windows import fit_view, make_windows, purge_rows
from supsup_fin.config import config_from_dict
from supsup_fin.errors import ConfigError, DataError
from supsup_fin.forecaster.prepare import segment_labels
from supsup_fin.forecaster.training import decision_rule

DATES = pd.bdate_range("2020-01-01", periods=6)


def test_known_trades_give_known_costs():
    # decisions 0 -> 1 -> 1 -> -1 -> 0: held one day later; 1 + 0 + 2 + 1 units traded
    decision = pd.Series([1.0, 1.0, -1.0, 0.0, 0.0, 0.0], index=DATES)
    close = pd.Series([100.0, 101.0, 102.0, 100.0, 99.0, 99.0], index=DATES)
    sim = simulate(decision, close, cost_bps=3.0, slippage_bps=2.0)
    np.testing.assert_array_equal(sim["position"], [0, 1, 1, -1, 0, 0])
    np.testing.assert_array_equal(sim["trade"], [0, 1, 0, 2, 1, 0])
    np.testing.assert_allclose(sim["cost"], np.array([0, 1, 0, 2, 1, 0]) * 5e-4)
    assert sim["cost"].sum() == pytest.approx(4 * 5e-4)


def test_decision_at_t_earns_the_return_from_t_plus_1_to_t_plus_2():
    decision = pd.Series([1.0, 0, 0, 0, 0, 0], index=DATES)  # long decided at day 0's close
    close = pd.Series([100.0, 110.0, 121.0, 100.0, 100.0, 100.0], index=DATES)
    sim = simulate(decision, close, 0.0, 0.0)
    # filled at day 1's close (110), held over day 2 (110 -> 121 = +10%), sold at day 2's close
    np.testing.assert_allclose(sim["gross"], [0, 0, 0.1, 0, 0, 0], atol=1e-15)
    assert sim["equity"].iloc[-1] == pytest.approx(1.1)


def test_costs_reduce_equity_by_exactly_the_charge():
    decision = pd.Series([1.0, -1.0, 1.0, -1.0, 1.0, 0.0], index=DATES)
    close = pd.Series(100.0, index=DATES)  # flat prices: only costs move equity
    sim = simulate(decision, close, 10.0, 0.0)
    charges = np.array([0, 1, 2, 2, 2, 2]) * 1e-3
    assert sim["equity"].iloc[-1] == pytest.approx(np.prod(1 - charges))


def test_threshold_rules_from_the_config():
    """p_up - p_down = 0.3, -0.3, 0.02, -0.6 and a row without a forecast."""
    probs = np.array([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2], [0.33, 0.32, 0.35], [0.7, 0.2, 0.1], [np.nan] * 3])

    def positions(**kw: object) -> np.ndarray:
        return decision_rule(config_from_dict({"markets": [{"name": "a", "source": "synthetic", "dataset": "easy"}],
                                               "backtest": {"positions": kw}})).positions(probs, None, 5)[1]

    np.testing.assert_array_equal(positions(rule="sign"), [1, -1, 0, -1, 0])
    np.testing.assert_array_equal(positions(rule="sign", allow_short=False), [1, 0, 0, 0, 0])
    np.testing.assert_allclose(positions(rule="proportional", scale=0.5), [0.6, -0.6, 0, -1, 0])
    with pytest.raises(ValueError, match="kelly rule needs"):
        positions(rule="kelly")


def test_simulate_rejects_bad_input():
    close = pd.Series([100.0, -1.0, 100, 100, 100, 100], index=DATES)
    with pytest.raises(DataError, match="finite and positive.*2020-01-02"):
        simulate(pd.Series(0.0, index=DATES), close, 0, 0)
    with pytest.raises(DataError, match="one index"):
        simulate(pd.Series(0.0, index=DATES[:3]), close, 0, 0)


def test_equal_risk_weights_are_inverse_vol_and_causal():
    idx = pd.bdate_range("2020-01-01", periods=300)
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0, 0.01, 300), index=idx)
    b = pd.Series(rng.normal(0, 0.03, 300), index=idx)
    port = equal_risk_portfolio({"a": a, "b": b}, {"a": a, "b": b}, vol_window=60)
    w = port[["w_a", "w_b"]]
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w["w_a"].iloc[100:] > 0.65).all()  # ~3x less volatile -> ~3/4 of the weight
    # weights on day s use data up to s-1: changing day s's return leaves day s's weight alone
    a2 = a.copy()
    a2.iloc[150] = 0.5
    w2 = equal_risk_portfolio({"a": a2, "b": b}, {"a": a2, "b": b}, 60)[["w_a", "w_b"]]
    pd.testing.assert_frame_equal(w.iloc[:151], w2.iloc[:151])
    assert not w.iloc[151].equals(w2.iloc[151])


def _cfg(**backtest):
    return config_from_dict({
        "markets": [{"name": "a", "source": "synthetic", "dataset": "easy"}],
        "features": {"lookback": 4, "horizon": 3}, "backtest": backtest,
    })


def test_windows_partition_the_test_days_and_purge_targets():
    cal = pd.bdate_range("2010-01-01", "2014-12-31")
    cfg = _cfg(start="2012-01-01", retrain_every=100)
    wins = make_windows(cal, cfg)
    days = [d for w in wins for d in cal[(cal > w.as_of) & (cal <= w.test_end)]]
    assert days == list(cal[cal >= "2012-01-01"])  # every test day once, in order
    assert all(w.test_start == cal[cal.get_loc(w.as_of) + 1] for w in wins)
    prices = pd.DataFrame({"close": np.linspace(100, 200, len(cal))}, index=cal)
    for w in wins:
        seen, seg = fit_view(prices, w, cfg, "a")
        assert seen.index[-1] == w.as_of  # nothing after as_of is seen
        labels = segment_labels(seen.index, seg, cfg.features.horizon)
        last_train = np.flatnonzero(labels == "train")[-1]
        assert len(seen) - 1 - last_train == purge_rows(cfg) == 7  # horizon + lookback rows purged
        assert last_train + cfg.features.horizon <= len(seen) - 1  # its target is known at as_of


def test_rolling_window_sees_train_rows_only():
    cal = pd.bdate_range("2010-01-01", "2014-12-31")
    cfg = _cfg(start="2012-01-01", window="rolling", train_rows=300)
    prices = pd.DataFrame({"close": np.linspace(100, 200, len(cal))}, index=cal)
    seen, _ = fit_view(prices, make_windows(cal, cfg)[2], cfg, "a")
    assert len(seen) == 300


def test_window_config_errors():
    with pytest.raises(ConfigError, match="rolling.*train_rows"):
        _cfg(window="rolling")
    with pytest.raises(ConfigError, match="no history before it"):
        make_windows(pd.bdate_range("2010-01-01", "2011-01-01"), _cfg(start="2009-01-01"))
