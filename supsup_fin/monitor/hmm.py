"""HMM drift: how likely recent observations are under a market's fitted regimes.

Each row's one-step predictive log-likelihood ``log p(x_t | x_1..t-1)``
(:meth:`~supsup_fin.regimes.RegimeModel.predictive_log_likelihood`) is averaged over the last
``window`` rows. On the training rows that rolling mean has a range; a recent mean below a low
quantile of it says the market now produces observations none of the fitted regimes explains
(a new mean, volatility or persistence). The reference keeps the training range as a grid of
quantiles, so any quantile can be read off it later.

Everything here is causal: the filter runs forward from the series' first row, so the value at t
uses rows up to t only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.errors import DataError
from supsup_fin.regimes import RegimeModel

GRID = np.linspace(0.0, 1.0, 201)
"""Probabilities at which the reference stores the training range (steps of 0.5 %)."""


def loglik_series(model: RegimeModel, prices: pd.DataFrame, window: int) -> pd.Series:
    """Mean predictive log-likelihood over the last ``window`` rows up to each date (NaN before)."""
    ll = model.predictive_log_likelihood(prices)
    return ll.rolling(window, min_periods=window).mean().rename("mean_log_likelihood")


def loglik_reference(model: RegimeModel, train_prices: pd.DataFrame, window: int) -> dict[str, Any]:
    """The training range of :func:`loglik_series`: ``{"window", "n_rows", "grid", "quantiles"}``.

    ``quantiles[i]`` is the ``grid[i]`` quantile of the rolling mean over the training rows.
    """
    roll = loglik_series(model, train_prices, window).dropna().to_numpy()
    if len(roll) < 2:
        raise DataError(f"{model.market or 'market'}: {len(roll)} training rows of {window}-row log-likelihood "
                        f"means; need at least 2 (train rows >= window + vol_window + 1)")
    return {"window": int(window), "n_rows": int(len(roll) + window - 1), "grid": GRID.round(4).tolist(),
            "quantiles": np.quantile(roll, GRID).round(6).tolist()}


def reference_quantile(reference: dict[str, Any], q: float) -> float:
    """The ``q`` quantile of the training range stored in ``reference`` (linear between grid points)."""
    return float(np.interp(q, reference["grid"], reference["quantiles"]))


def hmm_check(model: RegimeModel, prices: pd.DataFrame, reference: dict[str, Any], quantile: float) -> dict[str, Any]:
    """The HMM drift check on ``prices``' last rows: a check row shared with the feature checks.

    Returns ``{"check": "hmm", "name": "log_likelihood", "value", "threshold", "breach",
    "window_start", "window_end", "detail"}``: ``value`` is the mean predictive log-likelihood of
    the last ``reference["window"]`` rows, ``threshold`` the training range's ``quantile``
    quantile; ``breach`` when the value is below it.
    """
    window = int(reference["window"])
    series = loglik_series(model, prices, window).dropna()
    if series.empty:
        raise DataError(f"{model.market or 'market'}: the HMM drift check needs at least "
                        f"{window + model.vol_window + 1} rows of prices, got {len(prices)}")
    value, threshold = float(series.iloc[-1]), reference_quantile(reference, quantile)
    start = prices.index[-window]
    return {
        "check": "hmm", "name": "log_likelihood", "value": round(value, 6), "threshold": round(threshold, 6),
        "breach": bool(value < threshold), "window_start": str(start.date()), "window_end": str(series.index[-1].date()),
        "detail": f"mean predictive log-likelihood {value:.3f} over the last {window} rows; training "
                  f"{quantile:g} quantile {threshold:.3f}",
    }
