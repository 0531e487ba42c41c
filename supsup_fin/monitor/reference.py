"""Training references: what monitoring compares a market's recent rows with.

A market's reference is computed on its training rows when the forecaster is assembled and
stored as :attr:`~supsup_fin.forecaster.market_model.MarketModel.reference` in
``forecaster.json``:

- ``train_end``: the date of the last training row (``YYYY-MM-DD``);
- ``features``: per input feature (lag 0 of the scaled input window), the interior edges of
  ``monitor.psi_bins`` training-quantile bins (the outer bins are open-ended; tied quantiles
  merge, so a feature with a point mass has fewer bins), the fraction of training rows in
  each bin, and the range of the PSI of every ``monitor.drift_window``-row window of training
  rows: feature name -> ``{"edges": [B - 1], "fractions": [B], "psi_window", "psi_quantiles"}``
  (:func:`supsup_fin.monitor.drift.feature_psi` bins recent rows on them);
- ``hmm``: the training range of the HMM's mean predictive log-likelihood
  (:func:`supsup_fin.monitor.hmm.loglik_reference`);
- ``novelty``: the training ranges of SupSup's novel-task statistics over the market's masks
  (:func:`supsup_fin.monitor.novelty.novelty_reference`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.config import Config
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit, train_slice
from supsup_fin.monitor.hmm import GRID, loglik_reference
from supsup_fin.monitor.novelty import novelty_reference


def latest_inputs(X: np.ndarray, n_features: int) -> np.ndarray:
    """The lag-0 features of input windows: ``[n, n_features]`` float64 from ``X [n, lookback * n_features]``.

    :func:`~supsup_fin.features.input_windows` lays each window out oldest row first, so row t's
    own features are the last ``n_features`` columns.
    """
    return np.asarray(X[:, X.shape[1] - n_features:], dtype=np.float64)


def bin_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fraction of ``values [n]`` in each bin of the interior ``edges [B - 1]``: ``[B]``.

    Bin i holds ``edges[i-1] <= v < edges[i]``; the first and last bins are open-ended.
    """
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1) / len(values)


def window_psi(values: np.ndarray, edges: np.ndarray, fractions: np.ndarray, window: int) -> np.ndarray:
    """The PSI of every ``window``-row run of ``values [n]`` against ``fractions``: ``[n - window + 1]``.

    What a drift check would have read on each day of the training rows; its range is the
    feature's own threshold (overlapping rolling features such as a 60-day drawdown swing far
    beyond the usual 0.25 rule of thumb on undrifted data).
    """
    from supsup_fin.monitor.drift import psi_rows  # drift builds on this module

    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    counts = np.zeros((len(values) + 1, len(edges) + 1))
    counts[1:][np.arange(len(values)), idx] = 1.0
    counts = np.cumsum(counts, axis=0)
    return psi_rows(fractions, (counts[window:] - counts[:-window]) / window)


def feature_reference(
    values: np.ndarray, names: Sequence[str], bins: int, window: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Quantile bins of each column of ``values [n, F]`` (training rows) and the training fraction in each.

    Returns ``{name: {"edges": [B - 1], "fractions": [B]}}`` with ``B <= bins``; with ``window``
    also ``"psi_window"`` and ``"psi_quantiles"``: the training range of :func:`window_psi` on
    the :data:`~supsup_fin.monitor.hmm.GRID` of probabilities.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, col in zip(names, np.asarray(values, dtype=np.float64).T, strict=True):
        edges = np.unique(np.quantile(col, np.arange(1, bins) / bins))
        fractions = bin_fractions(col, edges)
        out[name] = {"edges": edges.tolist(), "fractions": fractions.tolist()}
        if window is not None and len(col) > window:
            rolling = window_psi(col, edges, fractions, window)
            out[name] |= {"psi_window": int(window), "psi_quantiles": np.quantile(rolling, GRID).round(6).tolist()}
    return out


def training_reference(
    fc: RegimeGatedForecaster, market: str, fs: FeatureSet, rf: RegimeFit, prices: pd.DataFrame, cfg: Config,
) -> dict[str, Any]:
    """The market's monitoring reference on its training rows (the keys are in the module docstring).

    Parameters
    ----------
    fc : the assembled forecaster (its feature names and lookback lay out ``fs.X``).
    fs, rf : the market's features and regime fit, as the forecaster was built from.
    prices : the market's whole price frame (the HMM part reads its ``train`` segment only).
    cfg : ``monitor.psi_bins`` and ``monitor.drift_window`` size the reference.
    """
    names = fc.feature_names
    if fs.X.shape[1] != fc.lookback * len(names):
        raise DataError(f"market {market!r}: input windows have {fs.X.shape[1]} columns, expected lookback "
                        f"{fc.lookback} x {len(names)} features")
    rows = fs.rows("train")
    return {
        "train_end": str(fs.dates[rows[-1]].date()),
        "features": feature_reference(latest_inputs(fs.X[rows], len(names)), names, cfg.monitor.psi_bins,
                                      cfg.monitor.drift_window),
        "hmm": loglik_reference(rf.model, train_slice(prices, cfg.segments), cfg.monitor.drift_window),
        "novelty": novelty_reference(fc, market, fs.X[rows], cfg.monitor.novelty),
    }


def attach_references(
    fc: RegimeGatedForecaster, features: dict[str, FeatureSet], regimes: dict[str, RegimeFit],
    prices: dict[str, pd.DataFrame], cfg: Config,
) -> None:
    """Set every market's :attr:`~supsup_fin.forecaster.market_model.MarketModel.reference` in ``fc``
    (:func:`training_reference`), in place."""
    for name, mm in fc.markets.items():
        ref = training_reference(fc, name, features[name], regimes[name], prices[name], cfg)
        fc.markets[name] = dataclasses.replace(mm, reference=ref)
