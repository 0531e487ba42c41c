"""Per-regime descriptive statistics of daily log returns under given regime labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252


def regime_table(labels: np.ndarray, returns: np.ndarray, expected_durations: np.ndarray,
                 names: Sequence[str]) -> pd.DataFrame:
    """One row per regime: its share of the rows, its returns and its run lengths.

    Parameters
    ----------
    labels : numpy.ndarray
        Shape ``[n]``, regime index per row.
    returns : numpy.ndarray
        Shape ``[n]``, daily log returns.
    expected_durations : numpy.ndarray
        Shape ``[K]``, model-implied mean durations in trading days.
    names : sequence of str
        ``K`` regime names.

    Returns
    -------
    pandas.DataFrame
        Index ``names`` (``regime``); columns ``n_rows``, ``frequency``, ``mean_log_return``
        (daily), ``ann_volatility`` (std of daily log returns, ddof=1, times sqrt(252)),
        ``mean_duration_days`` (lengths of runs of equal labels; the first and last runs are
        censored) and ``expected_duration_days``. NaN where a regime has no rows.
    """
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    lengths = np.diff(np.r_[starts, len(labels)])
    rows = []
    for k in range(len(names)):
        mask = labels == k
        r = returns[mask]
        runs = lengths[labels[starts] == k]
        rows.append({
            "n_rows": int(mask.sum()),
            "frequency": float(mask.mean()),
            "mean_log_return": float(r.mean()) if len(r) else np.nan,
            "ann_volatility": (float(r.std(ddof=1) * np.sqrt(TRADING_DAYS_PER_YEAR))
                               if len(r) > 1 else np.nan),
            "mean_duration_days": float(runs.mean()) if len(runs) else np.nan,
            "expected_duration_days": float(expected_durations[k]),
        })
    return pd.DataFrame(rows, index=pd.Index(list(names), name="regime"))
