"""The equal-risk portfolio of markets with different calendars: a hand-computed small case, and
a two-market walk-forward end to end (union calendar, weights known at t-1, gaps earn 0)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from supsup_fin.backtest.positions import equal_risk_portfolio
from supsup_fin.backtest.report import PORTFOLIO, run_backtest
from supsup_fin.config import config_from_dict
from supsup_fin.data import load_prices

D = pd.bdate_range("2021-01-04", periods=5)


def test_equal_risk_weights_of_two_calendars_by_hand() -> None:
    """vol_window 2: a window's std is |r1 - r2| / sqrt(2); b does not trade on D[2] (return 0)."""
    a_asset = pd.Series([0.01, 0.03, 0.01, 0.03, 0.01], index=D)  # std 0.02/sqrt2 from D[1] on
    b_asset = pd.Series([0.02, 0.06, 0.02, 0.06], index=D[[0, 1, 3, 4]])  # union: .02 .06 0 .02 .06
    a_ret = pd.Series([0.0, 0.01, 0.02, -0.01, 0.03], index=D)
    b_ret = pd.Series([0.0, 0.04, -0.02, 0.01], index=D[[0, 1, 3, 4]])
    port = equal_risk_portfolio({"a": a_ret, "b": b_ret}, {"a": a_asset, "b": b_asset}, vol_window=2)
    assert list(port.index) == list(D)  # the union calendar
    # day s uses stds up to s-1: none on D[0], D[1]; then a's .02 (/sqrt2) against b's
    # |.02-.06| = .04, |.06-0| = .06 and |0-.02| = .02: the gap's 0 counts as b's return
    np.testing.assert_allclose(port["w_a"], [0.5, 0.5, 2 / 3, 3 / 4, 1 / 2], rtol=1e-12)
    np.testing.assert_allclose(port["w_b"], [0.5, 0.5, 1 / 3, 1 / 4, 1 / 2], rtol=1e-12)
    # D[2]: b has no trading day, so it earns 0 with its weight
    expected = [0.0, 0.5 * 0.01 + 0.5 * 0.04, 2 / 3 * 0.02, 3 / 4 * -0.01 + 1 / 4 * -0.02, 1 / 2 * 0.03 + 1 / 2 * 0.01]
    np.testing.assert_allclose(port["ret"], expected, rtol=1e-12, atol=1e-18)
    assert port["equity"].iloc[-1] == pytest.approx(np.prod(1 + np.array(expected)), rel=1e-12)


GAP_B = ("2012-03-01", "2012-03-14")  # b does not trade (a holiday block)
GAP_A = ("2012-06-04", "2012-06-08")  # a does not trade


@pytest.fixture(scope="module")
def two_calendars(tmp_path_factory):
    cfg = config_from_dict({
        "name": "bt-cal",
        "markets": [{"name": "a", "source": "synthetic", "dataset": "easy", "seed": 1},
                    {"name": "b", "source": "synthetic", "dataset": "hard", "seed": 2}],
        "segments": {"train": [None, "2009-12-31"], "valid": ["2010-01-01", "2011-12-31"],
                     "test": ["2012-01-01", None]},
        "features": {"lookback": 4, "horizon": 3},
        "regimes": {"n_states": 2, "n_restarts": 1, "regime_window": 100},
        "network": {"hidden": [8]},
        "training": {"steps": 5, "batch_size": 32},
        "backtest": {"start": "2012-01-02", "end": "2012-08-31", "retrain_every": 100, "bootstrap": 100,
                     "vol_window": 20, "baselines": ["buy_and_hold"], "modes": ["market"]},
        "runtime": {"threads": 1},
    })
    cache = tmp_path_factory.mktemp("cache")
    prices = {m.name: load_prices(m, cfg.data, cache).frame for m in cfg.markets}
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
    equal weights before 20 days; ret = sum_m w_m ret_m, ret_m = 0 where m does not trade."""
    cfg, _, res = two_calendars
    fc = res.forecasts
    port = res.portfolio[res.portfolio.strategy == "buy_and_hold"].set_index("date")
    idx = port.index
    asset = {m: fc.asset_returns[m].reindex(idx).fillna(0.0).to_numpy() for m in ("a", "b")}
    daily = res.daily[res.daily.strategy == "buy_and_hold"]
    ret = {m: daily[daily.market == m].set_index("date")["ret"].reindex(idx).fillna(0.0).to_numpy() for m in ("a", "b")}
    k = cfg.backtest.vol_window
    for s in range(len(idx)):
        if s < k:  # a 20-day window needs days 0..19: known at the close of day 19, used from day 20
            w = {"a": 0.5, "b": 0.5}
        else:
            inv = {m: 1.0 / np.std(asset[m][s - k: s], ddof=1) for m in ("a", "b")}
            w = {m: inv[m] / (inv["a"] + inv["b"]) for m in ("a", "b")}
        assert port["w_a"].iloc[s] == pytest.approx(w["a"], rel=1e-9)
        assert port["w_b"].iloc[s] == pytest.approx(w["b"], rel=1e-9)
        assert port["ret"].iloc[s] == pytest.approx(w["a"] * ret["a"][s] + w["b"] * ret["b"][s], rel=1e-9, abs=1e-15)
    assert port["equity"].iloc[-1] == pytest.approx(math.prod(1 + port["ret"]), rel=1e-12)
    table = res.table.loc[(PORTFOLIO, "buy_and_hold")]
    assert table["days"] == len(idx)
