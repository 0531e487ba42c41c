"""Backtest plots (matplotlib Agg canvas, no pyplot): equity curves with drawdowns, per regime."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from supsup_fin.backtest.report import BacktestResult


def _curves(result: BacktestResult, market: str) -> pd.DataFrame:
    """Equity per strategy (columns) for a market or the portfolio, on its dates."""
    from supsup_fin.backtest.report import PORTFOLIO

    src = result.portfolio if market == PORTFOLIO else result.daily[result.daily.market == market]
    return src.pivot(index="date", columns="strategy", values="equity").sort_index()


def equity_figure(result: BacktestResult, market: str, strategies: list[str] | None = None) -> Figure:
    """Equity curves (log scale, after costs) and drawdowns of each strategy in one market.

    ``market`` may be ``"portfolio"`` (the equal-risk portfolio of every market).
    """
    eq = _curves(result, market)
    if strategies:
        eq = eq[[s for s in strategies if s in eq.columns]]
    fig = Figure(figsize=(12, 7), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    for name in eq.columns:
        style = {"linewidth": 1.6} if name.startswith("supsup") else {"linewidth": 0.9, "alpha": 0.8}
        top.plot(eq.index, eq[name].to_numpy(), label=name, **style)
        bottom.plot(eq.index, (eq[name] / eq[name].cummax() - 1.0).to_numpy(), **style)
    top.set_yscale("log")
    top.set_ylabel("equity (log, after costs)")
    top.legend(loc="upper left", ncols=3, fontsize=8)
    top.set_title(f"{market}: walk-forward equity", fontsize=11)
    bottom.set_ylabel("drawdown")
    return fig
