"""A user's prices file (CSV or parquet) in the prices-frame layout.

The file holds a ``date`` column (ISO-8601 dates, or timestamps with an offset, read by the rule in
:func:`supsup_fin.data.frame.validate_frame`; an unnamed first column, as ``to_csv`` writes a
frame's unnamed index, is taken as the dates) or, for parquet, a date index, plus ``close`` and
optionally ``open high low volume``; column names are case-insensitive.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)

_CSV = (".csv", ".csv.gz", ".txt")
_PARQUET = (".parquet", ".pq")


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
        The file does not exist, has an unsupported suffix or cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"market {market!r}: prices file {str(path)!r} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(_CSV):
            df = pd.read_csv(path)
        elif name.endswith(_PARQUET):
            df = pd.read_parquet(path)
        else:
            raise DataError(
                f"market {market!r}: prices file {str(path)!r} has an unsupported suffix; "
                f"expected one of {list(_CSV + _PARQUET)}"
            )
    except DataError:
        raise
    except (OSError, ValueError) as err:
        raise DataError(f"market {market!r}: cannot read prices file {str(path)!r}: {err}") from None
    logger.debug("read %d rows from %s for market %r", len(df), path, market)
    return df
