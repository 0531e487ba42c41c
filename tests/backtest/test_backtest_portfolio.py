"""The equal-risk portfolio of markets with different calendars: hand-computed small cases (weights,
returns and the costs of its rebalancing trades), and two-market walk-forwards end to end (union
calendar, weights known at t-1, gaps earn 0, costs on the portfolio's change of exposure; a market
whose data ends early: the windows that bring it no new rows are no tasks of its continual scores)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from supsup_fin.backtest.positions import equal_risk_portfolio, simulate
from supsup_fin.backtest.continual import continual_scores
from supsup_fin.backtest.engine import run_walk_forward
from supsup_fin.backtest.report import PORTFOLIO, run_backtest, summarise
from supsup_fin.config import Config, config_from_dict
from supsup_fin.data import load_prices

D = pd.bdate_range("2021-01-04", periods=5)


def test_equal_risk_weights_of_two_calendars_by_hand() -> None:
    """vol_window 2: a window's std is |r1 - r2| / sqrt(2); b does not trade on D[2] (return 0)."""
    a_asset = pd.Series([0.01, 0.03, 0.01, 0.03, 0.01], index=D)  # std 0.02/sqrt2 from D[1] on
    b_asset = pd.Series([0.02, 0.06, 0.02, 0.06], index=D[[0, 1, 3, 4]])  # union: .02 .06 0 .02 .06
    a_ret = pd.Series([0.0, 0.01, 0.02, -0.01, 0.03], index=D)
    b_ret = pd.Series([0.0, 0.04, -0.02, 0.01], index=D[[0, 1, 3, 4]])
    port = equal_risk_portfolio({"a": a_ret, "b": b_ret}, {"a": a_ret * 0, "b": b_ret * 0},
                                {"a": a_asset, "b": b_asset}, vol_window=2)
    assert list(port.index) == list(D)  # the union calendar
    # day s uses stds up to s-1: none on D[0], D[1]; then a's .02 (/sqrt2) against b's
    # |.02-.06| = .04, |.06-0| = .06 and |0-.02| = .02: the gap's 0 counts as b's return
    np.testing.assert_allclose(port["w_a"], [0.5, 0.5, 2 / 3, 3 / 4, 1 / 2], rtol=1e-12)
    np.testing.assert_allclose(port["w_b"], [0.5, 0.5, 1 / 3, 1 / 4, 1 / 2], rtol=1e-12)
    # D[2]: b has no trading day, so it earns 0 with its weight
    expected = [0.0, 0.5 * 0.01 + 0.5 * 0.04, 2 / 3 * 0.02, 3 / 4 * -0.01 + 1 / 4 * -0.02, 1 / 2 * 0.03 + 1 / 2 * 0.01]
    np.testing.assert_allclose(port["ret"], expected, rtol=1e-12, atol=1e-18)
    assert port["equity"].iloc[-1] == pytest.approx(np.prod(1 + np.array(expected)), rel=1e-12)


def test_rebalancing_a_constant_position_costs_the_change_of_exposure_by_hand() -> None:
    """Both markets long 1 unit after every close; the weights of the case above change daily.
    After the close of s the portfolio holds w_{s+1} (known at that close) of each market:
    a: .5, 2/3, 3/4, 1/2, 2/3 (the last from the stds up to D[4]); b: 1 - a. Each |Δexposure|
    is .5, 1/6, 1/12, 1/4, 1/6 per market, so 1, 1/3, 1/6, 1/2, 1/3 units trade in all."""
    a_asset = pd.Series([0.01, 0.03, 0.01, 0.03, 0.01], index=D)
    b_asset = pd.Series([0.02, 0.06, 0.02, 0.06], index=D[[0, 1, 3, 4]])
    gross = {"a": pd.Series(0.01, index=D), "b": pd.Series(-0.02, index=D[[0, 1, 3, 4]])}
    held = {m: pd.Series(1.0, index=g.index) for m, g in gross.items()}
    port = equal_risk_portfolio(gross, held, {"a": a_asset, "b": b_asset}, vol_window=2, cost_bps=7.0,
                                slippage_bps=3.0)
    np.testing.assert_allclose(port["trade"], [1, 1 / 3, 1 / 6, 1 / 2, 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(port["cost"], np.array([1, 1 / 3, 1 / 6, 1 / 2, 1 / 3]) * 1e-3, rtol=1e-12)
    w_a = np.array([0.5, 0.5, 2 / 3, 3 / 4, 1 / 2])
    b_gross = np.array([-0.02, -0.02, 0.0, -0.02, -0.02])  # b earns nothing on D[2]
    np.testing.assert_allclose(port["gross"], w_a * 0.01 + (1 - w_a) * b_gross, rtol=1e-12)
    np.testing.assert_allclose(port["ret"], port["gross"] - port["cost"], rtol=1e-12)


def test_with_constant_weights_the_portfolio_pays_the_markets_own_costs() -> None:
    """A vol window longer than the data: equal weights every day, so the portfolio's cost on each
    day is the weighted sum of the markets' costs on unit notional, and its return theirs."""
    days = pd.bdate_range("2021-01-04", periods=8)
    close = {"a": pd.Series([100.0, 101, 99, 98, 102, 103, 101, 100], index=days),
             "b": pd.Series([50.0, 49, 51, 52, 50, 49, 50, 51], index=days)}
    decision = {"a": pd.Series([1.0, 1, -1, 0, 0.5, 0.5, 1, 0], index=days),
                "b": pd.Series([0.0, -1, -1, 1, 1, 0, 0.25, 0.25], index=days)}
    sims = {m: simulate(decision[m], close[m], cost_bps=4.0, slippage_bps=1.0) for m in close}
    port = equal_risk_portfolio({m: s["gross"] for m, s in sims.items()}, {m: s["position"] for m, s in sims.items()},
                                {m: c.pct_change().fillna(0.0) for m, c in close.items()}, vol_window=20,
                                cost_bps=4.0, slippage_bps=1.0)
    np.testing.assert_array_equal(port[["w_a", "w_b"]].to_numpy(), 0.5)
    np.testing.assert_allclose(port["cost"], 0.5 * sims["a"]["cost"] + 0.5 * sims["b"]["cost"], rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(port["ret"], 0.5 * sims["a"]["ret"] + 0.5 * sims["b"]["ret"], rtol=1e-12, atol=1e-18)
    assert port["cost"].sum() > 0


GAP_B = ("2012-03-01", "2012-03-14")  # b does not trade (a holiday block)
GAP_A = ("2012-06-04", "2012-06-08")  # a does not trade


def two_markets(tmp_path_factory, **backtest) -> tuple[Config, dict[str, pd.DataFrame]]:
    """Markets a (easy) and b (hard), a tiny network, and the walk-forward ``backtest`` from 2012."""
    cfg = config_from_dict({
        "name": "bt-two",
        "markets": [{"name": "a", "source": "synthetic", "dataset": "easy", "seed": 1},
                    {"name": "b", "source": "synthetic", "dataset": "hard", "seed": 2}],
        "segments": {"train": [None, "2009-12-31"], "valid": ["2010-01-01", "2011-12-31"],
                     "test": ["2012-01-01", None]},
        "features": {"lookback": 4, "horizon": 3},
        "regimes": {"n_states": 2, "n_restarts": 1, "regime_window": 100},
        "network": {"hidden": [8]},
        "training": {"steps": 5, "batch_size": 32},
        "backtest": {"start": "2012-01-02", "bootstrap": 100, "vol_window": 20, "modes": ["market"], **backtest},
        "runtime": {"threads": 1},
    })
    cache = tmp_path_factory.mktemp("cache")
    return cfg, {m.name: load_prices(m, cfg.data, cache).frame for m in cfg.markets}


@pytest.fixture(scope="module")
def two_calendars(tmp_path_factory):
    cfg, prices = two_markets(tmp_path_factory, end="2012-08-31", retrain_every=100, baselines=["buy_and_hold"])
    for m, (lo, hi) in (("b", GAP_B), ("a", GAP_A)):
        p = prices[m]
        prices[m] = p.drop(p.index[(p.index >= lo) & (p.index <= hi)])
    return cfg, prices, run_backtest(cfg, prices)


def test_each_market_trades_its_own_calendar_and_the_portfolio_their_union(two_calendars) -> None:
    cfg, prices, res = two_calendars
    daily = res.daily[res.daily.strategy == "buy_and_hold"]
    days = {m: pd.DatetimeIndex(daily.loc[daily.market == m, "date"]) for m in ("a", "b")}
    start, end = pd.Timestamp(cfg.backtest.start), pd.Timestamp(cfg.backtest.end)
    for m in ("a", "b"):
        want = prices[m].index[(prices[m].index >= start) & (prices[m].index <= end)]
        assert list(days[m]) == list(want)
    assert not days["b"].isin(pd.date_range(*GAP_B)).any() and days["a"].isin(pd.date_range(*GAP_B)).sum() == 10
    assert not days["a"].isin(pd.date_range(*GAP_A)).any() and days["b"].isin(pd.date_range(*GAP_A)).sum() == 5
    port = res.portfolio[res.portfolio.strategy == "buy_and_hold"].set_index("date")
    assert list(port.index) == sorted(set(days["a"]) | set(days["b"]))


def test_a_position_held_across_a_gap_earns_the_return_across_it(two_calendars) -> None:
    _, prices, res = two_calendars
    b = res.daily[(res.daily.market == "b") & (res.daily.strategy == "buy_and_hold")].set_index("date")
    before = b.index[b.index < GAP_B[0]][-1]
    after = b.index[b.index > GAP_B[1]][0]
    close = prices["b"]["close"]
    assert b.loc[after, "exposure"] == 1.0 and b.loc[after, "trade"] == 0.0
    assert b.loc[after, "ret"] == pytest.approx(close[after] / close[before] - 1.0, rel=1e-12)


def test_portfolio_weights_are_inverse_trailing_vol_known_the_day_before(two_calendars) -> None:
    """By hand: on each union day s, w_m = (1 / std_m) / sum(1 / std) with std_m the sample std
    of market m's asset returns over the 20 union days ending s-1 (0 on days m does not trade);
    equal weights before 20 days; gross = sum_m w_m gross_m, gross_m = 0 where m does not trade.
    Costs: after the close of s the portfolio holds w_{s+1, m} pos_{s, m} of market m (its position
    carried over days it does not trade), and pays (cost + slippage) on sum_m |Δ holding|."""
    cfg, _, res = two_calendars
    fc = res.forecasts
    port = res.portfolio[res.portfolio.strategy == "buy_and_hold"].set_index("date")
    idx = port.index
    asset = {m: fc.asset_returns[m].reindex(idx).fillna(0.0).to_numpy() for m in ("a", "b")}
    daily = res.daily[res.daily.strategy == "buy_and_hold"]
    one = {m: daily[daily.market == m].set_index("date") for m in ("a", "b")}
    gross = {m: one[m]["gross"].reindex(idx).fillna(0.0).to_numpy() for m in ("a", "b")}
    pos = {m: one[m]["position"].reindex(idx).ffill().fillna(0.0).to_numpy() for m in ("a", "b")}
    k, c = cfg.backtest.vol_window, (cfg.backtest.cost_bps + cfg.backtest.slippage_bps) / 1e4

    def weights(s: int) -> dict[str, float]:
        if s < k:  # a 20-day window needs days 0..19: known at the close of day 19, used from day 20
            return {"a": 0.5, "b": 0.5}
        inv = {m: 1.0 / np.std(asset[m][s - k: s], ddof=1) for m in ("a", "b")}
        return {m: inv[m] / (inv["a"] + inv["b"]) for m in ("a", "b")}

    charged = own = 0.0
    for s in range(len(idx)):
        w, nxt = weights(s), weights(s + 1)
        cost = c * sum(abs(nxt[m] * pos[m][s] - w[m] * (pos[m][s - 1] if s else 0.0)) for m in ("a", "b"))
        charged += cost
        own += sum(w[m] * one[m]["cost"].get(idx[s], 0.0) for m in ("a", "b"))
        assert port["w_a"].iloc[s] == pytest.approx(w["a"], rel=1e-9)
        assert port["w_b"].iloc[s] == pytest.approx(w["b"], rel=1e-9)
        assert port["cost"].iloc[s] == pytest.approx(cost, rel=1e-9, abs=1e-18)
        assert port["ret"].iloc[s] == pytest.approx(w["a"] * gross["a"][s] + w["b"] * gross["b"][s] - cost,
                                                    rel=1e-9, abs=1e-15)
    # buy and hold trades once, at its first fill: the markets' own costs, weighted, are that fill's;
    # the portfolio's reweighting costs more than that again
    assert own == pytest.approx(c * 0.5 * 2, rel=1e-12) and charged > 2 * own
    assert port["equity"].iloc[-1] == pytest.approx(math.prod(1 + port["ret"]), rel=1e-12)
    table = res.table.loc[(PORTFOLIO, "buy_and_hold")]
    assert table["days"] == len(idx)


# -- a market whose data ends early: windows without new rows in the continual scores ----------------
END_B = "2012-01-27"  # inside window 0's test days: window 1 still sees new rows of b, window 2 none


@pytest.fixture(scope="module")
def market_ending_early(tmp_path_factory):
    """Three windows; b's data ends during window 0's test days, so window 2 brings b no new rows."""
    cfg, prices = two_markets(tmp_path_factory, end="2012-05-31", retrain_every=40,
                              baselines=["buy_and_hold", "dense_finetune"])
    prices["b"] = prices["b"].loc[:END_B]
    fc = run_walk_forward(cfg, prices)
    return fc, summarise(fc, cfg, prices)


def test_a_window_without_new_rows_is_skipped_for_that_market_with_its_reason(market_ending_early) -> None:
    fc, res = market_ending_early
    assert len(fc.windows) == 3
    new = [len(fc.fits[(w.index, "b")].new_rows) for w in fc.windows]
    assert new[0] > 0 and new[1] > 0 and new[2] == 0
    assert [r["no_new_rows"] for r in fc.window_log] == [[], [], ["b"]]
    assert list(res.windows["no_new_rows"]) == [[], [], ["b"]]
    # b's tasks are windows 0 and 1 (one row after each), a's all three
    for acc in (fc.mask_acc, fc.dense_finetune_acc):
        assert acc["a"].shape == (3, 3) and acc["b"].shape == (2, 2)
        for m in ("a", "b"):
            assert np.isfinite(acc[m][np.tril_indices(len(acc[m]))]).all()
    for strategy, acc in (("supsup_market", fc.mask_acc), ("dense_finetune", fc.dense_finetune_acc)):
        for m in ("a", "b"):
            row = res.continual.loc[(m, strategy)]
            assert row["tasks"] == len(acc[m])
            assert row[["avg_accuracy", "bwt", "forgetting"]].to_dict() == continual_scores(acc[m])
    ft = fc.dense_finetune_acc["b"]
    assert res.continual.loc[("b", "dense_finetune"), "bwt"] == ft[1, 0] - ft[0, 0]
