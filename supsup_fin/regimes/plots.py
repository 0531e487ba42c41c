"""Regime plots, drawn with matplotlib's Agg canvas (no pyplot, no global backend change)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from supsup_fin._figures import save_png

if TYPE_CHECKING:
    from supsup_fin.regimes.model import RegimeModel


_COLOURS: dict[str, str] = {
    "calm": "tab:green", "normal": "tab:blue", "volatile": "tab:orange", "turbulent": "tab:red",
    "bear": "tab:red", "sideways": "tab:gray", "bull": "tab:green",
}
"""Each named regime's colour, whatever its position: good times green, bad times red."""


def _colours(names: list[str]) -> list:
    """One colour per regime name: :data:`_COLOURS` when every name has one, else a red-to-green
    colormap along the names (``bear, sideways_1, .., bull``; ``regime_0 ..`` ascending
    volatility runs green to red)."""
    if all(n in _COLOURS for n in names):
        return [_COLOURS[n] for n in names]
    k = len(names)
    if k == 1:
        return ["tab:gray"]
    cmap = colormaps["RdYlGn" if names[-1] == "bull" else "RdYlGn_r"]
    return [cmap(0.05 + 0.9 * i / (k - 1)) for i in range(k)]


def _shade(ax: Axes, index: pd.DatetimeIndex, labels: np.ndarray, colours: list) -> None:
    """Shade each run of equal labels from its first date to the next run's first date."""
    x = mdates.date2num(index.to_pydatetime())
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
    edges = np.r_[x, x[-1] + step]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    for k, colour in enumerate(colours):
        runs = [(edges[s], edges[e] - edges[s]) for s, e in zip(starts, ends) if labels[s] == k]
        if runs:
            ax.broken_barh(runs, (0, 1), transform=ax.get_xaxis_transform(),
                           facecolors=colour, alpha=0.35, linewidth=0)


def plot_regimes(
    prices: pd.DataFrame, model: RegimeModel, path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Save a PNG of the price with filtered and smoothed regimes, and the filtered posteriors.

    Panels: (1) close on a log scale shaded by the filtered argmax regime (causal, what a
    decision at t could know); (2) the same shaded by the smoothed argmax (look-ahead
    labels); (3) the filtered probabilities stacked. Each regime is coloured by its name (see
    :data:`_COLOURS`), so ``turbulent`` and ``bear`` are red in either order.

    Parameters
    ----------
    prices : pandas.DataFrame
        Prices frame, ``n`` rows.
    model : RegimeModel
        Fitted model.
    path : str or os.PathLike
        Output PNG; written to a temporary file in the same folder and renamed.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    filtered = model.filter_proba(prices)
    smoothed = model.smooth_proba(prices)
    index = filtered.index
    close = prices["close"].loc[index]
    colours = _colours(list(model.names_))

    fig = Figure(figsize=(12, 8))  # fixed margins: a constrained layout doubles the drawing time
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[2, 2, 1],
                        gridspec_kw={"left": 0.075, "right": 0.985, "top": 0.925, "bottom": 0.045, "hspace": 0.22})
    for ax, proba, label in ((axes[0], filtered, "filtered P(z_t | x_1..t)"),
                             (axes[1], smoothed, "smoothed P(z_t | x_1..n), looks ahead")):
        _shade(ax, index, proba.to_numpy().argmax(axis=1), colours)
        ax.plot(index, close.to_numpy(), color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("close (log)")
        ax.set_title(f"argmax regime, {label}", fontsize=10)
    axes[2].stackplot(index, filtered.to_numpy().T, labels=list(model.names_), colors=colours,
                      alpha=0.8)
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("filtered prob.")
    axes[2].legend(loc="upper left", ncols=model.n_states_, fontsize=8)
    if title:
        fig.suptitle(title)

    return save_png(fig, path)
