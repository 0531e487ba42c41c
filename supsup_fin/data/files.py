"""A user's prices file (CSV or parquet) in the prices-frame layout.

Layout, read by :func:`read_price_file` and checked by :func:`supsup_fin.data.frame.validate_frame`:

- dates: a ``date`` column (any case), an unnamed first column (what ``DataFrame.to_csv`` writes for
  a frame's unnamed index), or, for parquet, a date index; ISO-8601 dates (``2024-03-04``) or
  timestamps (a time of day is dropped; one with an offset, ``2024-03-04T21:00:00Z``, takes its
  calendar date in the market's ``timezone`` when one is set);
- prices: ``close`` and optionally ``open high low volume``; other columns are dropped. Names are
  case-insensitive and spaces and underscores alike, so a Yahoo download's
  ``Date, Open, High, Low, Close, Adj Close, Volume`` is read as is;
- which close: the market's ``close`` option. ``close`` (the default) takes the ``Close`` column as
  written; ``adj_close`` takes ``Adj Close`` (dividends and splits adjusted) as the close and scales
  ``open high low`` by ``adj_close / close`` on each row, so each bar stays consistent.

A file that breaks the layout is refused with one :class:`~supsup_fin.errors.DataError` naming the
market, the file and every structural fault found.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)

_CSV = (".csv", ".csv.gz", ".txt")
_PARQUET = (".parquet", ".pq")


def file_origin(path: str | Path) -> str:
    """How errors name a prices file: ``prices file '<path>'``."""
    return f"prices file {str(path)!r}"


def read_price_file(path: str | Path, market: str) -> pd.DataFrame:
    """Read a CSV or parquet prices file (not yet validated).

    Parameters
    ----------
    path : str or Path
        ``.csv`` / ``.csv.gz`` / ``.txt`` (comma-separated) or ``.parquet`` / ``.pq``.
    market : str
        Market name, used in error messages.

    Returns
    -------
    DataFrame, shape (n_rows, k)
        As read: a parquet date index is kept, a CSV's dates are a column.

    Raises
    ------
    DataError
        The file does not exist, has an unsupported suffix, is empty or cannot be parsed.
    """
    path = Path(path)
    where = f"market {market!r}: {file_origin(path)}"
    if not path.is_file():
        raise DataError(f"{where} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(_CSV):
            df = pd.read_csv(path)
        elif name.endswith(_PARQUET):
            df = pd.read_parquet(path)
        else:
            raise DataError(f"{where} has an unsupported suffix; expected one of {list(_CSV + _PARQUET)}")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{where} is empty; expected a header row (date, close, ...) and a row per day") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: cannot read it: {err}") from None
    logger.debug("read %d rows from %s for market %r", len(df), path, market)
    return df
