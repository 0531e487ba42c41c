"""From decided positions to fills, costs and returns; and the equal-risk portfolio.

Positions are decided by :mod:`supsup_fin.decision` (from class probabilities, or a rule's signal).

Timing (one convention everywhere): the decision ``d_t`` is made at the close of day t from
data up to t, filled at the close of t+1, and held until the next fill. So the position held
over day s (close s-1 -> close s) is ``d_{s-2}``; trading costs are charged on the fill day::

    held_s  = d_{s-1}                       (the position after the close of s)
    cost_s  = |held_s - held_{s-1}| * (cost_bps + slippage_bps) / 1e4
    ret_s   = held_{s-1} * r_s - cost_s     (r_s = close_s / close_{s-1} - 1)

Positions are rebalanced daily, in units of the market's notional (+1 long, -1 short).
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
    """
    if not decision.index.equals(close.index):
        raise DataError(
            f"simulate: decisions and closes need one index; got {len(decision)} decision dates "
            f"{_span(decision.index)} and {len(close)} close dates {_span(close.index)}")
    c = close.astype(np.float64).to_numpy()
    if not np.isfinite(c).all() or (c <= 0).any():
        bad = close.index[~(np.isfinite(c) & (c > 0))][0]
        raise DataError(f"simulate: closes must be finite and positive, got {close.loc[bad]!r} on {bad.date()}")
    d = decision.astype(np.float64).fillna(0.0).to_numpy()
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


def equal_risk_portfolio(returns: dict[str, pd.Series], asset_returns: dict[str, pd.Series], vol_window: int) -> pd.DataFrame:
    """Combine markets' strategy returns with equal-risk weights on their common calendar.

    The calendar is the union of the markets' dates (a market's return is 0 on a day it does
    not trade). Weights are inverse trailing volatilities of each market's own asset returns
    over ``vol_window`` days, normalised to sum to 1, known at the previous close (so day s
    uses volatilities up to s-1); markets without a full window yet share equally among
    themselves. Returns ``ret``, ``equity`` and one ``w_<market>`` column per market.
    """
    if not returns:
        raise DataError("equal_risk_portfolio: no markets given")
    calendar = sorted(set().union(*(s.index for s in returns.values())))
    idx = pd.DatetimeIndex(calendar)
    rets = pd.DataFrame({m: s.reindex(idx).fillna(0.0) for m, s in returns.items()})
    assets = pd.DataFrame({m: asset_returns[m].reindex(idx).fillna(0.0) for m in returns})
    vol = assets.rolling(vol_window, min_periods=vol_window).std().shift(1)
    inv = (1.0 / vol.where(vol > 0)).fillna(0.0)
    has = (inv > 0).any(axis=1)
    weights = inv.div(inv.sum(axis=1).where(has, 1.0), axis=0)
    weights.loc[~has] = 1.0 / rets.shape[1]
    ret = (weights * rets).sum(axis=1)
    out = pd.DataFrame({"ret": ret, "equity": (1.0 + ret).cumprod()}, index=idx)
    for m in rets:
        out[f"w_{m}"] = weights[m]
    return out


def _span(index: pd.Index) -> str:
    return f"{index[0].date()}..{index[-1].date()}" if len(index) else "(empty)"
