"""Monitoring plots (matplotlib Agg canvas, no pyplot): the rolling log-loss gap of each model
version to the class prior, and the top-label reliability of the scored forecasts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from supsup_fin.errors import DataError
from supsup_fin.monitor.scoring import by_date, ece, reliability_table


def loss_gap_figure(scores: pd.DataFrame, market: str, window: int) -> Figure:
    """The rolling mean (over ``window`` matured forecasts) of log-loss minus the class prior's,
    one line per model version of ``market``, over a zero line: knowing nothing.

    Below zero the version beats the prior. A version's first ``window - 1`` points average the
    forecasts matured so far.

    Parameters
    ----------
    scores : pd.DataFrame
        Rows of the scores table (:func:`~supsup_fin.monitor.scoring.score_rows`).
    market : str
    window : int

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas, one axes; its lines are the versions (``v<version>``, oldest first), then
        the zero line.
    """
    rows = scores[scores["market"] == market]
    if rows.empty:
        raise DataError(f"loss_gap_figure: no scored forecasts of market {market!r}; "
                        f"the scores hold {sorted(map(str, scores['market'].unique()))}")
    if window < 1:
        raise DataError(f"loss_gap_figure: expected a window of at least 1 forecast, got {window}")
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for version, g in rows.groupby("model_version", sort=True):
        g = by_date(g)
        gap = (g["log_loss"] - g["prior_log_loss"]).astype(np.float64).rolling(window, min_periods=1).mean()
        ax.plot(g["_date"].to_numpy(), gap.to_numpy(), marker=".", markersize=3, linewidth=1.2, label=f"v{version}")
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--", label="knowing nothing (class prior)")
    ax.set_ylabel("log-loss minus the prior's")
    ax.legend(loc="upper left", ncols=4, fontsize=8)
    ax.set_title(f"{market}: rolling log-loss gap to the class prior over {window} matured forecasts "
                 "(below 0: better than the prior)", fontsize=10)
    ax.tick_params(labelsize=8)
    return fig


def reliability_figure(scores: pd.DataFrame, bins: int) -> Figure:
    """Top-label reliability diagram: accuracy against mean confidence per bin of
    :func:`~supsup_fin.monitor.scoring.reliability_table` (marker area: the bin's share of the
    forecasts), over the dashed diagonal of perfect calibration; the title gives the ECE.

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas, one axes; one line per class count in the scores.
    """
    table = reliability_table(scores, bins)
    table = table[table["count"] > 0]
    if table.empty:
        raise DataError("reliability_figure: no scored forecasts")
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", linewidth=0.8, linestyle="--")
    for i, (n_classes, g) in enumerate(table.groupby("n_classes", sort=True)):
        x, y = g["confidence"].to_numpy(np.float64), g["accuracy"].to_numpy(np.float64)
        share = g["count"].to_numpy(np.float64) / table["count"].sum()
        ax.plot(x, y, color=f"C{i}", linewidth=1.0, label=f"{n_classes} classes")
        ax.scatter(x, y, s=6.0 + 200.0 * share, color=f"C{i}", alpha=0.8, edgecolors="none")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("mean confidence (max p)", fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"top-label reliability (ECE {ece(scores, bins):.3f}, n {int(table['count'].sum())})", fontsize=10)
    return fig
