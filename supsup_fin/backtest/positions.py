"""From decided positions to fills, costs and returns; and the equal-risk portfolio.

Positions are decided by :mod:`supsup_fin.decision` (from class probabilities, or a rule's signal).

Timing (one convention everywhere): the decision ``d_t`` is made at the close of day t from
data up to t, filled at the close of t+1, and held until the next fill. So the position held
over day s (close s-1 -> close s) is ``d_{s-2}``; trading costs are charged on the fill day::

    held_s  = d_{s-1}                       (the position after the close of s)
    cost_s  = |held_s - held_{s-1}| * (cost_bps + slippage_bps) / 1e4
    ret_s   = held_{s-1} * r_s - cost_s     (r_s = close_s / close_{s-1} - 1)

Positions are rebalanced daily, in units of the market's notional (+1 long, -1 short). A decision
that is not a finite number is refused: a day without a forecast is decided flat upstream
(:meth:`~supsup_fin.backtest.market_window.MarketWindow.rows` counts it), never filled here.

The equal-risk portfolio holds ``w_{s+1,m} · held_{s,m}`` of market m after the close of s (the
weights of day s+1 are known at that close) and pays the costs on its own trades::

    trade_s = Σ_m |w_{s+1,m} held_{s,m} - w_{s,m} held_{s-1,m}|
    ret_s   = Σ_m w_{s,m} gross_{s,m} - trade_s · (cost_bps + slippage_bps) / 1e4

so a change of weights costs what the rebalance trades; with constant weights the cost is the
weighted sum of the markets' own costs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from supsup_fin.errors import DataError


def simulate(decision: pd.Series, close: pd.Series, cost_bps: float, slippage_bps: float) -> pd.DataFrame:
    """Fill ``decision`` (indexed by decision date) against ``close`` on the same dates.

    Returns a frame on ``close``'s index with ``decision``, ``position`` (held after the
    close), ``exposure`` (the position that earned the day's return: the previous day's
    ``position``), ``trade`` (``|Δposition|``), ``cost``, ``gross``, ``ret`` and ``equity`` (starts at
    1 before the first day). The first day holds no position.

    Raises
    ------
    DataError
        Indexes that differ, a close that is not finite and positive, or a decision that is not
        finite (the message names the series and the first such date).
    """
    if not decision.index.equals(close.index):
        raise DataError(
            f"simulate: decisions and closes need one index; got {len(decision)} decision dates "
            f"{_span(decision.index)} and {len(close)} close dates {_span(close.index)}")
    c = close.astype(np.float64).to_numpy()
    if not np.isfinite(c).all() or (c <= 0).any():
        bad = close.index[~(np.isfinite(c) & (c > 0))][0]
        raise DataError(f"simulate: closes must be finite and positive, got {close.loc[bad]!r} on {bad.date()}")
    d = _finite(decision, f"simulate{_named(decision)}: expected finite decisions")
    held = np.concatenate([[0.0], d[:-1]])
    before = np.concatenate([[0.0], held[:-1]])
    r = np.concatenate([[0.0], c[1:] / c[:-1] - 1.0])
    trade = np.abs(held - before)
    cost = trade * (cost_bps + slippage_bps) / 1e4
    gross = before * r
    ret = gross - cost
    return pd.DataFrame({
        "decision": d, "position": held, "exposure": before, "trade": trade, "cost": cost, "gross": gross, "ret": ret,
        "equity": np.cumprod(1.0 + ret),
    }, index=close.index)


def equal_risk_portfolio(gross: dict[str, pd.Series], positions: dict[str, pd.Series],
                         asset_returns: dict[str, pd.Series], vol_window: int,
                         cost_bps: float = 0.0, slippage_bps: float = 0.0) -> pd.DataFrame:
    """Combine markets' fills with equal-risk weights on their common calendar, costs on the portfolio's trades.

    The calendar is the union of the markets' dates (a market's gross return is 0 on a day it does
    not trade, and its position carries over that day). Weights are inverse trailing volatilities
    of each market's own asset returns over ``vol_window`` days, normalised to sum to 1, known at
    the previous close (so day s uses volatilities up to s-1); markets without a full window yet
    share equally among themselves. The portfolio holds ``w_{s+1,m} · position_{s,m}`` of market m
    after the close of s and pays ``cost_bps + slippage_bps`` per unit of the change of that
    holding, summed over markets (see the module docstring).

    Parameters
    ----------
    gross : market -> its return before costs on unit notional ``[n_m]`` (:func:`simulate`'s ``gross``).
    positions : market -> its position held after each close ``[n_m]`` (``position``), on ``gross``'s dates.
    asset_returns : market -> the market's own daily returns (its dates only).

    Returns
    -------
    pd.DataFrame on the calendar with ``gross``, ``trade``, ``cost``, ``ret``, ``equity`` and one
    ``w_<market>`` column per market.

    Raises
    ------
    DataError
        No market, a market without positions or asset returns, positions on other dates than its
        returns, or a value that is not finite on one of the market's own dates.
    """
    if not gross:
        raise DataError("equal_risk_portfolio: no markets given")
    for what, given in (("positions", positions), ("asset returns", asset_returns)):
        if absent := sorted(set(gross) - set(given)):
            raise DataError(f"equal_risk_portfolio: no {what} for {absent}; got them for {sorted(given)}")
    for m, g in gross.items():
        if not positions[m].index.equals(g.index):
            raise DataError(f"equal_risk_portfolio: market {m!r}: positions need the gross returns' dates; got "
                            f"{len(positions[m])} dates {_span(positions[m].index)} for {len(g)} {_span(g.index)}")
    idx = pd.DatetimeIndex(sorted(set().union(*(s.index for s in gross.values()))))

    def on_calendar(series: dict[str, pd.Series], what: str) -> pd.DataFrame:
        return pd.DataFrame({m: pd.Series(_finite(series[m], f"equal_risk_portfolio: market {m!r}: expected finite "
                                                  f"{what}"), index=series[m].index).reindex(idx) for m in gross})

    earned = on_calendar(gross, "gross").fillna(0.0)
    held = on_calendar(positions, "positions").ffill().fillna(0.0)
    assets = on_calendar(asset_returns, "asset returns").fillna(0.0)
    ahead = _inverse_vol(_trailing_std(assets, vol_window))  # known at each close
    weights = ahead.shift(1)
    weights.iloc[0] = 1.0 / len(gross)
    holding = ahead * held
    trade = (holding - holding.shift(1).fillna(0.0)).abs().sum(axis=1)
    cost = trade * (cost_bps + slippage_bps) / 1e4
    before_costs = (weights * earned).sum(axis=1)
    ret = before_costs - cost
    out = pd.DataFrame({"gross": before_costs, "trade": trade, "cost": cost, "ret": ret, "equity": (1.0 + ret).cumprod()},
                       index=idx)
    for m in gross:
        out[f"w_{m}"] = weights[m]
    return out


def _trailing_std(returns: pd.DataFrame, window: int) -> pd.DataFrame:
    """Sample std (ddof 1) of each column's last ``window`` rows up to each row (NaN before a full
    window), each window summed afresh: a rolling update leaves a residue (~1e-7 after a large
    return) where the window is constant, and its inverse would take all the weight."""
    x = returns.to_numpy()
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1:] = np.lib.stride_tricks.sliding_window_view(x, window, axis=0).std(axis=-1, ddof=1)
    return pd.DataFrame(out, index=returns.index, columns=returns.columns)


def _inverse_vol(vol: pd.DataFrame) -> pd.DataFrame:
    """Rows of weights ∝ 1 / ``vol`` (markets without a positive volatility get 0), or equal
    weights on rows where no market has one."""
    inv = (1.0 / vol.where(vol > 0)).fillna(0.0)
    has = (inv > 0).any(axis=1)
    weights = inv.div(inv.sum(axis=1).where(has, 1.0), axis=0)
    weights.loc[~has] = 1.0 / vol.shape[1]
    return weights


def _finite(values: pd.Series, message: str) -> np.ndarray:
    """``values`` as float64; DataError ``message`` with the first value that is not finite and its date."""
    x = values.astype(np.float64).to_numpy()
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise DataError(f"{message}, got {x[i]} on {values.index[i].date()}")
    return x


def _named(values: pd.Series) -> str:
    return f" {values.name!r}" if values.name is not None else ""


def _span(index: pd.Index) -> str:
    return f"{index[0].date()}..{index[-1].date()}" if len(index) else "(empty)"
