"""Positions, fills, costs and the equal-risk portfolio against hand-computed answers; non-finite
decisions and returns refused (fuzzed); windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from hypothesis import event, given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_decision_that_is_not_a_number_is_refused_not_filled(bad: float) -> None:
    """A NaN decision used to be held as flat and an infinite one as an infinite position."""
    decision = pd.Series([1.0, 1.0, bad, 0.0, 0.0, 0.0], index=DATES, name="m")
    close = pd.Series(100.0, index=DATES)
    with pytest.raises(DataError, match=r"simulate 'm': expected finite decisions, got .* on 2020-01-03"):
        simulate(decision, close, 1.0, 1.0)


def _portfolio_inputs() -> tuple[dict, dict, dict]:
    idx = pd.bdate_range("2020-01-01", periods=30)
    rng = np.random.default_rng(1)
    gross = {m: pd.Series(rng.normal(0, 0.01, 30), index=idx) for m in ("a", "b")}
    held = {m: pd.Series(rng.choice([-1.0, 0.0, 1.0], 30), index=idx) for m in ("a", "b")}
    asset = {m: pd.Series(rng.normal(0, 0.01, 30), index=idx) for m in ("a", "b")}
    return gross, held, asset


@pytest.mark.parametrize("what", ["gross", "positions", "asset returns"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_portfolio_refuses_a_non_finite_input_on_a_markets_own_days(what: str, bad: float) -> None:
    """A NaN return or position used to count as 0, a NaN asset return as a calm day (more weight)
    and an infinite one as a market without weight."""
    gross, held, asset = _portfolio_inputs()
    series = {"gross": gross, "positions": held, "asset returns": asset}[what]["b"]
    series.iloc[12] = bad
    with pytest.raises(DataError, match=rf"market 'b': expected finite {what}, got {bad} on 2020-01-17"):
        equal_risk_portfolio(gross, held, asset, vol_window=5, cost_bps=1.0)


def test_the_portfolio_needs_positions_and_asset_returns_for_every_market() -> None:
    gross, held, asset = _portfolio_inputs()
    with pytest.raises(DataError, match=r"no positions for \['b'\]"):
        equal_risk_portfolio(gross, {"a": held["a"]}, asset, vol_window=5)
    with pytest.raises(DataError, match=r"market 'a': positions need the gross returns' dates"):
        equal_risk_portfolio(gross, {**held, "a": held["a"].iloc[1:]}, asset, vol_window=5)


def test_equal_risk_weights_are_inverse_vol_and_causal():
    idx = pd.bdate_range("2020-01-01", periods=300)
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0, 0.01, 300), index=idx)
    b = pd.Series(rng.normal(0, 0.03, 300), index=idx)
    held = {m: pd.Series(1.0, index=idx) for m in ("a", "b")}
    port = equal_risk_portfolio({"a": a, "b": b}, held, {"a": a, "b": b}, vol_window=60)
    w = port[["w_a", "w_b"]]
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w["w_a"].iloc[100:] > 0.65).all()  # ~3x less volatile -> ~3/4 of the weight
    # weights on day s use data up to s-1: changing day s's return leaves day s's weight alone
    a2 = a.copy()
    a2.iloc[150] = 0.5
    w2 = equal_risk_portfolio({"a": a2, "b": b}, held, {"a": a2, "b": b}, 60)[["w_a", "w_b"]]
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


# -- fuzzed: no non-finite input becomes a position or a return -----------------------------------
CALENDAR = pd.bdate_range("2020-01-01", periods=40)
_NON_FINITE = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def _markets(draw: st.DrawFn) -> dict:
    """2-3 markets on random subsets of CALENDAR: closes, decisions (a non-finite one now and then),
    a vol window and costs."""
    out = {}
    for m in ("a", "b", "c")[: draw(st.integers(2, 3))]:
        keep = draw(st.lists(st.booleans(), min_size=len(CALENDAR), max_size=len(CALENDAR)))
        days = CALENDAR[np.array(keep)]
        if len(days) < 2:
            days = CALENDAR[:2]
        n = len(days)
        close = draw(st.lists(st.floats(1.0, 200.0), min_size=n, max_size=n))
        decision = draw(st.lists(st.floats(-2.0, 2.0), min_size=n, max_size=n))
        if draw(st.sampled_from(range(10))) >= 8:
            decision[draw(st.integers(0, n - 1))] = draw(_NON_FINITE)
        out[m] = (pd.Series(close, index=days), pd.Series(decision, index=days, name=m))
    return {"markets": out, "vol_window": draw(st.integers(2, 10)), "bps": draw(st.floats(0.0, 50.0))}


def _reference_costs(sims: dict, asset: dict, k: int, c: float) -> np.ndarray:
    """The portfolio rule, day by day: weights from the k asset returns before the day (0 on days a
    market does not trade), equal while no market has k of them; holding w_{s+1} pos_s."""
    idx = pd.DatetimeIndex(sorted(set().union(*(s.index for s in sims.values()))))
    r = {m: a.reindex(idx).fillna(0.0).to_numpy() for m, a in asset.items()}
    pos = {m: s["position"].reindex(idx).ffill().fillna(0.0).to_numpy() for m, s in sims.items()}

    def w(s: int) -> dict[str, float]:
        inv = {m: 1 / np.std(x[s - k: s], ddof=1) if s >= k and np.std(x[s - k: s]) > 0 else 0.0 for m, x in r.items()}
        total = sum(inv.values())
        return {m: v / total if total else 1 / len(inv) for m, v in inv.items()}

    return np.array([c * sum(abs(w(s + 1)[m] * pos[m][s] - w(s)[m] * (pos[m][s - 1] if s else 0.0)) for m in pos)
                     for s in range(len(idx))])


def _check_chain(case: dict) -> None:
    markets, k, bps = case["markets"], case["vol_window"], case["bps"]
    bad = {m: d.index[~np.isfinite(d.to_numpy())] for m, (_, d) in markets.items()}
    sims = {}
    for m, (close, decision) in markets.items():
        if len(bad[m]):
            with pytest.raises(DataError, match=f"simulate '{m}': expected finite decisions.*{bad[m][0].date()}"):
                simulate(decision, close, bps, 0.0)
            event("a non-finite decision: refused")
            return
        sims[m] = simulate(decision, close, bps, 0.0)
    asset = {m: close.pct_change().fillna(0.0) for m, (close, _) in markets.items()}
    port = equal_risk_portfolio({m: s["gross"] for m, s in sims.items()}, {m: s["position"] for m, s in sims.items()},
                                asset, k, cost_bps=bps)
    assert np.isfinite(port.drop(columns="equity").to_numpy()).all()
    np.testing.assert_allclose(port["cost"], _reference_costs(sims, asset, k, bps / 1e4), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(port["ret"], port["gross"] - port["cost"], rtol=0, atol=1e-15)
    event("finite decisions: filled, combined, costs as the rule")


@settings(max_examples=FUZZ_EXAMPLES)
@given(_markets())
def test_fuzzed_decisions_fill_and_combine_or_are_refused(case: dict) -> None:
    _check_chain(case)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES_SLOW)
@given(_markets())
def test_fuzzed_decisions_fill_and_combine_or_are_refused_slow(case: dict) -> None:
    _check_chain(case)


def test_a_market_without_movement_over_the_whole_vol_window_gets_no_weight() -> None:
    """A halted market: 20 days without a return after 30 that moved. Its trailing std is 0, so it
    gets no weight; a rolling update left ~1e-10 there, whose inverse took all of the weight."""
    idx = pd.bdate_range("2020-01-01", periods=51)
    halted = pd.Series(np.r_[np.random.default_rng(7).normal(0, 0.01, 30), np.zeros(21)], index=idx)
    other = pd.Series(np.random.default_rng(8).normal(0, 0.01, 51), index=idx)
    held = {m: pd.Series(1.0, index=idx) for m in ("a", "b")}
    port = equal_risk_portfolio({"a": halted, "b": other}, held, {"a": halted, "b": other}, vol_window=20)
    assert port["w_a"].iloc[50] == 0.0 and port["w_b"].iloc[50] == 1.0  # days 30..49 are all 0 for a
    inv = [1 / np.std(x.iloc[29:49], ddof=1) for x in (halted, other)]  # day 29 still moved
    assert port["w_a"].iloc[49] == pytest.approx(inv[0] / sum(inv), rel=1e-9)
