"""Backtest plots (matplotlib Agg canvas, no pyplot): equity curves with drawdowns, rolling Sharpe
ratios, reliability diagrams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from supsup_fin.backtest.metrics import rolling_sharpe
from supsup_fin.errors import DataError

if TYPE_CHECKING:
    from supsup_fin.backtest.report import BacktestResult


def _curves(result: BacktestResult, market: str, values: str = "equity") -> pd.DataFrame:
    """``values`` (a daily column) per strategy (columns) for a market or the portfolio, on its dates."""
    from supsup_fin.backtest.report import PORTFOLIO

    src = result.portfolio if market == PORTFOLIO else result.daily[result.daily.market == market]
    return src.pivot(index="date", columns="strategy", values=values).sort_index()


def _style(strategy: str) -> dict[str, float]:
    """The gated forecaster's lines stand out."""
    return {"linewidth": 1.6} if strategy.startswith("supsup") else {"linewidth": 0.9, "alpha": 0.8}


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
        style = _style(name)
        top.plot(eq.index, eq[name].to_numpy(), label=name, **style)
        bottom.plot(eq.index, (eq[name] / eq[name].cummax() - 1.0).to_numpy(), **style)
    top.set_yscale("log")
    top.set_ylabel("equity (log, after costs)")
    top.legend(loc="upper left", ncols=3, fontsize=8)
    top.set_title(f"{market}: walk-forward equity", fontsize=11)
    bottom.set_ylabel("drawdown")
    return fig


def rolling_sharpe_figure(result: BacktestResult, strategies: Sequence[str] | None = None,
                          window: int = 63) -> Figure:
    """Rolling annualised Sharpe ratio (after costs) of each strategy, one panel per market.

    Parameters
    ----------
    result : BacktestResult
    strategies : sequence of str, optional
        The lines, in this order (names a panel lacks are left out of it); None: every strategy.
    window : int
        Trading days per Sharpe ratio (see :func:`~supsup_fin.backtest.metrics.rolling_sharpe`).

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas; ``fig.axes`` holds the portfolio's panel first (when there is a
        portfolio), then one per market, sharing the date axis.
    """
    from supsup_fin.backtest.report import PORTFOLIO

    panels = ([] if result.portfolio.empty else [PORTFOLIO]) + sorted(result.forecasts.closes)
    fig = Figure(figsize=(12, 1.0 + 2.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, market in zip(axes, panels):
        ret = _curves(result, market, "ret")
        for name in ret.columns if strategies is None else [s for s in strategies if s in ret.columns]:
            rs = rolling_sharpe(ret[name], window)
            ax.plot(rs.index, rs.to_numpy(), label=name, **_style(name))
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_ylabel(market, fontsize=9)
        ax.tick_params(labelsize=7)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="upper left", ncols=4, fontsize=8)
    axes[0].set_title(f"rolling {window}-day Sharpe ratio (annualised, after costs)", fontsize=11)
    return fig


_CALIBRATION_COLUMNS = ("strategy", "class", "mean_predicted", "observed", "count")


def calibration_ece(calibration: pd.DataFrame) -> pd.Series:
    """Classwise expected calibration error of each strategy in a reliability table.

    Parameters
    ----------
    calibration : pd.DataFrame, shape (n_rows, >= 5)
        :attr:`BacktestResult.calibration`: one row per strategy, class and non-empty probability
        bin with at least ``strategy``, ``class``, ``mean_predicted``, ``observed`` and ``count``
        (see :func:`supsup_fin.backtest.metrics.calibration_table`).

    Returns
    -------
    pd.Series, shape (n_strategies,)
        Indexed by strategy, in the table's order. An ``ece`` column, if the table has one, is
        taken as it is (one value per strategy). Otherwise the one-vs-rest bins give
        ``mean_c sum_b (n_cb / n_c) |observed_cb - mean_predicted_cb|``: the binned gap of
        :func:`~supsup_fin.backtest.metrics.expected_calibration_error`, per class instead of on
        the top label (the table keeps no top-label bins). On two classes whose predicted class
        always has probability above 1/2 the two coincide.
    """
    _check_calibration(calibration)
    if "ece" in calibration.columns:
        ece = calibration.groupby("strategy", sort=False)["ece"]
        if (ece.nunique(dropna=False) > 1).any():
            raise DataError("calibration_ece: expected one ece value per strategy, got several for "
                            f"{list(ece.nunique(dropna=False).loc[lambda s: s > 1].index)}")
        return ece.first().astype(np.float64).rename("ece")
    gap = calibration["count"] * (calibration["observed"] - calibration["mean_predicted"]).abs()
    by_class = (pd.DataFrame({"strategy": calibration["strategy"], "class": calibration["class"],
                              "gap": gap, "count": calibration["count"]})
                .groupby(["strategy", "class"], sort=False)[["gap", "count"]].sum())
    per_class = by_class["gap"] / by_class["count"]
    return per_class.groupby(level="strategy", sort=False).mean().astype(np.float64).rename("ece")


def _check_calibration(calibration: pd.DataFrame) -> None:
    missing = [c for c in _CALIBRATION_COLUMNS if c not in calibration.columns]
    if missing:
        raise DataError(f"reliability: expected a calibration table with columns {list(_CALIBRATION_COLUMNS)}, "
                        f"missing {missing} (got {list(calibration.columns)})")
    if calibration.empty:
        raise DataError("reliability: the calibration table is empty (no strategy with probabilities)")


def reliability_figure(calibration: pd.DataFrame, strategies: Sequence[str] | None = None) -> Figure:
    """Reliability diagram of each strategy's class probabilities, one panel per strategy.

    Each panel plots, per class, the observed frequency of that class against the mean predicted
    probability of each bin (one line with markers per class; marker area proportional to the
    bin's share of the strategy's rows) over the dashed diagonal of perfect calibration. Points
    below the diagonal are over-confident. The title gives the strategy's :func:`calibration_ece`.

    Parameters
    ----------
    calibration : pd.DataFrame, shape (n_rows, >= 5)
        :attr:`BacktestResult.calibration` (columns ``strategy``, ``class``, ``mean_predicted``,
        ``observed``, ``count``; an optional ``ece``).
    strategies : sequence of str, optional
        The panels, in this order; None: every strategy in the table, in its order.

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas (no pyplot); ``fig.axes`` holds exactly one axes per strategy, laid out
        on a grid of at most four columns.
    """
    _check_calibration(calibration)
    present = list(pd.unique(calibration["strategy"]))
    names = present if strategies is None else list(strategies)
    unknown = [s for s in names if s not in present]
    if unknown or not names:
        raise DataError(f"reliability_figure: expected strategies of the calibration table {present}, "
                        f"got {names}")
    ece = calibration_ece(calibration)
    classes = list(pd.unique(calibration["class"]))
    colours = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    ncols = min(len(names), 4)
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(names):]:
        fig.delaxes(ax)
    for ax, name in zip(axes, names):
        rows = calibration[calibration["strategy"] == name]
        ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", linewidth=0.8, linestyle="--", label="_diagonal")
        for cls in classes:
            g = rows[rows["class"] == cls].sort_values("mean_predicted")
            if g.empty:
                continue
            x, y = g["mean_predicted"].to_numpy(np.float64), g["observed"].to_numpy(np.float64)
            share = g["count"].to_numpy(np.float64) / g["count"].sum()
            ax.plot(x, y, color=colours[cls], linewidth=1.0, label=str(cls))
            ax.scatter(x, y, s=6.0 + 200.0 * share, color=colours[cls], alpha=0.8, edgecolors="none")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(f"{name}  (ECE {ece[name]:.3f})", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.supxlabel("mean predicted probability (marker area: share of rows in the bin)", fontsize=9)
    fig.supylabel("observed frequency", fontsize=9)
    axes[0].legend(title="class", fontsize=7, title_fontsize=7, loc="upper left")
    return fig
