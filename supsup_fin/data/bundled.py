"""Real daily series shipped inside the ``arch`` package: the offline source for demos and tests.

- ``sp500``, ``nasdaq``: OHLCV 1999-01-04..2018-12-31 (5,031 rows). ``close`` is ``Adj Close``;
  ``open high low`` are scaled by ``Adj Close / Close`` so each bar stays consistent.
- ``wti``: WTI crude daily close 1986-2019 (close only, 290 missing days kept as NaN for the
  health checks to repair).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd

from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)


def _adjusted_ohlcv(raw: pd.DataFrame) -> pd.DataFrame:
    factor = raw["Adj Close"] / raw["Close"]
    out = pd.DataFrame(
        {
            "open": raw["Open"] * factor,
            "high": raw["High"] * factor,
            "low": raw["Low"] * factor,
            "close": raw["Adj Close"].astype("float64"),
            "volume": raw["Volume"].astype("float64"),
        },
        index=raw.index,
    )
    out.index = pd.DatetimeIndex(out.index, name="date").as_unit("ns")
    return out


def load_sp500() -> pd.DataFrame:
    """S&P 500 index OHLCV, 1999-2018, adjusted (shape (5031, 5))."""
    from arch.data import sp500

    return _adjusted_ohlcv(sp500.load())


def load_nasdaq() -> pd.DataFrame:
    """NASDAQ Composite OHLCV, 1999-2018, adjusted (shape (5031, 5))."""
    from arch.data import nasdaq

    return _adjusted_ohlcv(nasdaq.load())


def load_wti() -> pd.DataFrame:
    """WTI crude oil spot close, 1986-2019 (shape (8611, 1), 290 NaN)."""
    from arch.data import wti

    raw = wti.load()
    out = pd.DataFrame({"close": raw["DCOILWTICO"].astype("float64")}, index=raw.index)
    out.index = pd.DatetimeIndex(out.index, name="date").as_unit("ns")
    return out


BUNDLED_DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "sp500": load_sp500,
    "nasdaq": load_nasdaq,
    "wti": load_wti,
}
"""Bundled dataset name -> loader returning a raw prices frame (not yet health-checked)."""


def load_bundled(name: str) -> pd.DataFrame:
    """Load a bundled dataset by name.

    Raises
    ------
    DataError
        ``name`` is not in :data:`BUNDLED_DATASETS` (the message lists the valid names).
    """
    try:
        loader = BUNDLED_DATASETS[name]
    except KeyError:
        raise DataError(f"unknown bundled dataset {name!r}; valid: {sorted(BUNDLED_DATASETS)}") from None
    logger.debug("loading bundled dataset %r", name)
    return loader()
