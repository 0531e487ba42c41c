"""Continual-learning scores of the walk-forward: each window's task re-scored as the bank grows.

Window j's task is its new training rows (those after window j-1's last training row); a window
that brings a market no new rows (its data ended before the window's training end) is no task of
that market's: it gets neither a column nor a row of the market's matrix. After
every later window i, the gated masks of window j are re-run from the bank as it then stands,
and the fine-tuned dense net (trained on each window's new rows only) is re-scored: ``acc[i, j]``.
From that lower-triangular matrix come the average accuracy, backward transfer (BWT) and
forgetting of Lopez-Paz & Ranzato (2017). Old masks are never retrained, so any change of a
mask column would be forgetting (a shared-state bug); a dense net that keeps learning forgets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from supsup_fin.backtest.dense import DenseBank
from supsup_fin.backtest.fitting import WindowFit, forecaster_for
from supsup_fin.config import Config
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import FrameInputs
from supsup_fin.masks import FrozenNet, MaskBank


def continual_mode(cfg: Config) -> str:
    """The gate mode whose accuracy the continual scores follow: the configured one if it is run."""
    return cfg.gating.mode if cfg.gating.mode in cfg.backtest.modes else cfg.backtest.modes[0]


def tasks(fits: Sequence[WindowFit]) -> list[WindowFit]:
    """The fits (oldest first) whose window brought new training rows: the market's tasks."""
    return [fit for fit in fits if len(fit.new_rows)]


def mask_accuracy_row(cfg: Config, fits: Sequence[WindowFit], net: FrozenNet, bank: MaskBank,
                      prices: pd.DataFrame, inputs: dict[tuple[str, str], FrameInputs] | None = None) -> list[float]:
    """Accuracy of each of one market's tasks (:func:`tasks` of its window fits, oldest first) on its
    own rows, its gated masks re-run (mode :func:`continual_mode`) from ``net`` and ``bank`` as they
    stand now.

    ``prices`` is the market's whole frame; each forecast reads the rows up to its date.
    ``inputs`` keeps each task's features and rolling regime posterior (keyed by market and window
    tag) across calls: they depend on the window's model and prices only, so re-scoring after a
    later window re-runs just the masks.
    Returns one accuracy per task (NaN where no row has a forecast and a known class).
    """
    mode = continual_mode(cfg)
    inputs = {} if inputs is None else inputs
    row = []
    for fit in tasks(fits):
        market = fit.market
        dates, y = fit.features.dates[fit.new_rows], fit.features.y[fit.new_rows]
        forecaster = forecaster_for([fit], cfg, net, bank)
        key = (market, fit.window.tag)
        if key not in inputs:
            idx = prices.index.get_indexer(dates)
            inputs[key] = forecaster.frame_inputs(market, prices.iloc[max(0, idx[0] - forecaster.min_rows + 1): idx[-1] + 1])
        fi = inputs[key]
        probs = np.full((len(dates), len(forecaster.classes)), np.nan)
        routed, _ = forecaster.route_frame(market, fi, mode)
        at = fi.dates[fi.rows].get_indexer(dates)
        probs[at >= 0] = routed[at[at >= 0]]
        ok = np.isfinite(probs).all(axis=1) & (y >= 0)
        row.append(float((probs[ok].argmax(axis=1) == y[ok]).mean()) if ok.any() else np.nan)
    return row


def dense_accuracy_row(dense: DenseBank, name: str, fits: Sequence[WindowFit]) -> list[float]:
    """Accuracy of the dense net ``name`` on each of one market's tasks (:func:`tasks` of its fits)."""
    row = []
    for fit in tasks(fits):
        X, y = fit.features.X[fit.new_rows], fit.features.y[fit.new_rows]
        ok = np.isfinite(X).all(axis=1) & (y >= 0)
        p = dense.predict_proba(name, X[ok]) if ok.any() else np.zeros((0, 1))
        row.append(float((p.argmax(axis=1) == y[ok]).mean()) if ok.any() else np.nan)
    return row


def square(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Lower-triangular accuracy rows (row i: after window i, one value per window so far) ->
    the square matrix ``[T, T]`` (NaN above the diagonal)."""
    acc = np.full((len(rows), len(rows)), np.nan)
    for i, r in enumerate(rows):
        acc[i, : len(r)] = r
    return acc


def continual_scores(acc: np.ndarray) -> dict[str, float]:
    """Average accuracy, backward transfer and forgetting from ``acc [T, T]``.

    ``acc[i, j]`` is the accuracy on window j after training window i; entries above the
    diagonal may be NaN and are ignored, the others must be finite.

    Returns
    -------
    dict
        ``avg_accuracy`` (mean of the last row), ``bwt`` (mean over j < T-1 of
        ``acc[T-1, j] - acc[j, j]``) and ``forgetting`` (mean over j < T-1 of
        ``max_{j <= i < T-1} acc[i, j] - acc[T-1, j]``); both 0.0 when T = 1.
    """
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise DataError(f"continual_scores: expected a square [T, T] accuracy matrix, got shape {a.shape}")
    low = np.tril(np.ones_like(a, dtype=bool))
    if not np.isfinite(a[low]).all():
        i, j = np.argwhere(low & ~np.isfinite(a))[0]
        raise DataError(f"continual_scores: expected finite accuracies on and below the diagonal, "
                        f"got {a[i, j]} at [{i}, {j}]")
    t = a.shape[0]
    last = a[-1]
    if t == 1:
        return {"avg_accuracy": float(last.mean()), "bwt": 0.0, "forgetting": 0.0}
    before = range(t - 1)
    bwt = np.mean([last[j] - a[j, j] for j in before])
    forgetting = np.mean([a[j:t - 1, j].max() - last[j] for j in before])
    return {"avg_accuracy": float(last.mean()), "bwt": float(bwt), "forgetting": float(forgetting)}


def continual_table(markets: Sequence[str], acc: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """:func:`continual_scores` per market and strategy.

    Parameters
    ----------
    markets : the markets, in the table's order.
    acc : strategy -> market -> ``acc [T, T]``; a market missing for a strategy gets no row.

    Returns
    -------
    pd.DataFrame indexed by ``(market, strategy)`` with ``avg_accuracy``, ``bwt``, ``forgetting``
    and ``tasks`` (T: the windows that brought the market new rows); an empty frame without any row.
    """
    records = [{"market": market, "strategy": strategy, **continual_scores(by_market[market]),
                "tasks": len(by_market[market])}
               for market in markets for strategy, by_market in acc.items() if market in by_market]
    return pd.DataFrame(records).set_index(["market", "strategy"]) if records else pd.DataFrame()
