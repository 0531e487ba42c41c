"""Causal HMM observations: validate prices, compute raw features, standardise them.

Two features per trading day t, both built from ``close`` up to and including t only:

- ``log_return``: ``log(c_t) - log(c_{t-1})``;
- ``log_vol``: ``log`` of the sample standard deviation (ddof=1) of the last ``vol_window``
  log returns, floored at :data:`VOL_FLOOR` so that a run of stale prices gives a finite value.

Both come from :mod:`supsup_fin._rolling`, whose statistics are window-exact: a feature row is
bitwise the same whatever came before its window. The first ``vol_window`` price rows have no
complete window and are dropped, so the feature index is a suffix of the prices' dates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from supsup_fin._rolling import log_returns, rolling_std
from supsup_fin.errors import DataError

FEATURE_NAMES: tuple[str, str] = ("log_return", "log_vol")
"""Column names of the default observation matrix, in order."""

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "return_vol": FEATURE_NAMES,
    "return": ("log_return",),
}
"""Named observation sets. ``return``: daily log returns only (no overlapping windows, so the
HMM's conditional independence holds; the volatility is the state's variance)."""

VOL_FLOOR: float = 1e-8
"""Smallest realised volatility taken into the log (a window of identical prices has vol 0)."""


def _day(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%d")


def _check_dates(index: pd.DatetimeIndex, purpose: str) -> None:
    """Raise ``DataError`` at the first missing date or the first date not after its predecessor."""
    missing = np.asarray(index.isna())
    if missing.any():
        i = int(np.argmax(missing))
        after = f", after {_day(index[i - 1])}" if i > 0 else ""
        raise DataError(f"{purpose}: column 'date' expected a date in every row, got a missing date "
                        f"at row {i}{after}")
    ns = index.asi8
    back = np.flatnonzero(ns[1:] <= ns[:-1]) + 1
    if back.size:
        i = int(back[0])
        what = (f"{_day(index[i])} twice (rows {i - 1} and {i})" if ns[i] == ns[i - 1]
                else f"{_day(index[i])} after {_day(index[i - 1])} (row {i})")
        raise DataError(f"{purpose}: column 'date' expected strictly increasing, unique dates, got "
                        f"{what}; {back.size} row(s) not after the row before")


def validate_prices(prices: object, min_rows: int, purpose: str) -> pd.DataFrame:
    """Check the structural contract of a prices frame.

    Parameters
    ----------
    prices : object
        Expected: a ``DataFrame`` indexed by a strictly increasing ``DatetimeIndex`` with a
        float column ``close`` that is finite and > 0.
    min_rows : int
        Fewest rows ``purpose`` needs.
    purpose : str
        Who asks (and for which market), the start of every error message (e.g.
        ``"market 'spx': RegimeModel.fit"``).

    Returns
    -------
    pandas.DataFrame
        ``prices`` itself (not copied).

    Raises
    ------
    DataError
        Naming what was expected and what came; for a bad row, its column (``date`` for the
        index) and the first offending date.
    """
    if not isinstance(prices, pd.DataFrame):
        raise DataError(f"{purpose}: expected a prices DataFrame, got {type(prices).__name__}")
    if "close" not in prices.columns:
        raise DataError(
            f"{purpose}: expected a 'close' column, got columns {list(map(str, prices.columns))}"
        )
    if not isinstance(prices.index, pd.DatetimeIndex):
        raise DataError(
            f"{purpose}: expected a DatetimeIndex named 'date', got {type(prices.index).__name__}"
        )
    if len(prices) < min_rows:
        raise DataError(f"{purpose}: expected at least {min_rows} price rows, got {len(prices)}")
    _check_dates(prices.index, purpose)
    column = prices["close"]
    close = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(close)
    if bad.any():
        first = int(np.argmax(bad))
        raw = column.iloc[first]
        shown = repr(raw) if np.isnan(close[first]) and not pd.isna(raw) else repr(float(close[first]))
        raise DataError(
            f"{purpose}: column 'close' expected finite numbers, got {shown} on "
            f"{_day(prices.index[first])} ({int(bad.sum())} missing, infinite or non-numeric rows)"
        )
    nonpos = close <= 0
    if nonpos.any():
        first = int(np.argmax(nonpos))
        raise DataError(
            f"{purpose}: column 'close' expected prices > 0, got {float(close[first])!r} on "
            f"{_day(prices.index[first])} ({int(nonpos.sum())} non-positive rows)"
        )
    return prices


def validate_close(close: object, vol_window: int, purpose: str) -> np.ndarray:
    """Check a close array: 1-D, more than ``vol_window`` prices, all finite and > 0.

    Returns
    -------
    numpy.ndarray
        Shape ``[n]``, ``close`` as float64.

    Raises
    ------
    DataError
        Naming what was expected and what came.
    """
    close = np.asarray(close, dtype=np.float64)
    if close.ndim != 1 or len(close) <= vol_window:
        raise DataError(f"{purpose}: expected a 1-D close array of more than vol_window={vol_window} "
                        f"prices, got shape {close.shape}")
    bad = ~(np.isfinite(close) & (close > 0))
    if bad.any():
        raise DataError(f"{purpose}: expected finite prices > 0, got {int(bad.sum())} other values, "
                        f"first {float(close[np.argmax(bad)])!r} at position {int(np.argmax(bad))}")
    return close


def raw_feature_array(close: np.ndarray, vol_window: int, feature_set: str = "return_vol") -> np.ndarray:
    """Unscaled observations of a validated close array (the one place they are computed).

    Parameters
    ----------
    close : numpy.ndarray
        Shape ``[n]``, float64, ``n > vol_window``, finite and > 0.
    vol_window : int
        Window (rows of log returns) of the realised volatility. The first ``vol_window``
        rows are dropped for every feature set, so all sets share one index.
    feature_set : str
        A key of :data:`FEATURE_SETS`.

    Returns
    -------
    numpy.ndarray
        Shape ``[n - vol_window, d]``: log return, log realised volatility (``return_vol``),
        or log return only (``return``).
    """
    ret = log_returns(close)
    vol = rolling_std(ret, vol_window)
    out = np.empty((len(close) - vol_window, 2))
    out[:, 0] = ret[vol_window:]
    out[:, 1] = np.log(np.maximum(vol[vol_window:], VOL_FLOOR))
    return out[:, : len(FEATURE_SETS[feature_set])].copy()


def raw_features(prices: pd.DataFrame, vol_window: int, feature_set: str = "return_vol"
                 ) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Unscaled observations of a validated prices frame, and their dates.

    Parameters
    ----------
    prices : pandas.DataFrame
        Validated prices frame with ``n`` rows, ``n > vol_window``.
    vol_window, feature_set
        As in :func:`raw_feature_array`.

    Returns
    -------
    features : numpy.ndarray
        Shape ``[n - vol_window, d]``: :func:`raw_feature_array` of the ``close`` column.
    index : pandas.DatetimeIndex
        Shape ``[n - vol_window]``: ``prices.index[vol_window:]``.
    """
    close = prices["close"].to_numpy(dtype=np.float64)
    return raw_feature_array(close, vol_window, feature_set), prices.index[vol_window:]


def fit_scaler(raw: np.ndarray, index: pd.DatetimeIndex, feature_set: str, purpose: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation (ddof=0) of training observations, for :func:`standardise`.

    Parameters
    ----------
    raw : numpy.ndarray
        Shape ``[n, d]``, from :func:`raw_features` with ``feature_set``.
    index : pandas.DatetimeIndex
        Shape ``[n]``, their dates (named in the error).
    feature_set : str
        A key of :data:`FEATURE_SETS`.
    purpose : str
        What the scaler is for, used in the error message.

    Returns
    -------
    mean, std : numpy.ndarray
        Shape ``[d]`` each.

    Raises
    ------
    DataError
        If a feature is constant (a constant price series has zero volatility).
    """
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    if not (std > 0).all():
        names = FEATURE_SETS[feature_set]
        raise DataError(f"{purpose}: expected varying features, got constant "
                        f"{[names[i] for i in np.flatnonzero(std <= 0)]} (a constant price "
                        f"series has zero volatility) over {_day(index[0])}..{_day(index[-1])}")
    return mean, std


def standardise(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(raw - mean) / std`` column by column (element-wise, so row-wise exact).

    Parameters
    ----------
    raw : numpy.ndarray
        Shape ``[n, d]``.
    mean, std : numpy.ndarray
        Shape ``[d]``, fitted on the training window.

    Returns
    -------
    numpy.ndarray
        Shape ``[n, d]``.
    """
    return (raw - mean) / std
