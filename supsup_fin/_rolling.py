"""Window-exact rolling statistics.

Each value at row t is computed from rows ``t - window + 1 .. t`` alone, by the same
operations whatever came before, so a statistic is bitwise identical on any suffix of a
series that still covers its window (pandas' online rolling sums are not: their
floating-point error depends on where the series starts). The first ``window - 1`` rows
are NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(x: np.ndarray, window: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return sliding_window_view(x, window) if len(x) >= window else np.empty((0, window))


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    if len(values):
        out[n - len(values):] = values
    return out


def log_returns(close: np.ndarray) -> np.ndarray:
    """``log(c_t / c_{t-1})``, NaN at row 0. Shape ``[n]``."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full(len(close), np.nan)
    out[1:] = np.log(close[1:]) - np.log(close[:-1])
    return out


def rolling_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Sum over the last ``window`` rows. Shape ``[n]``."""
    return _pad(_windows(x, window).sum(axis=-1), len(x))


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last ``window`` rows. Shape ``[n]``."""
    return _pad(_windows(x, window).mean(axis=-1), len(x))


def rolling_std(x: np.ndarray, window: int, ddof: int = 1) -> np.ndarray:
    """Standard deviation over the last ``window`` rows. Shape ``[n]``."""
    return _pad(_windows(x, window).std(axis=-1, ddof=ddof), len(x))


def rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    """Maximum over the last ``window`` rows. Shape ``[n]``."""
    return _pad(_windows(x, window).max(axis=-1), len(x))
