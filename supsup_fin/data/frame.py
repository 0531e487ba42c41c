"""The prices frame: its structural contract (:func:`validate_frame`, :func:`price_arrays`) and content hash.

A prices frame is a ``DataFrame`` indexed by a tz-naive ``DatetimeIndex`` named ``date``
(``datetime64[ns]``, normalised to midnight, strictly increasing, unique) with a required
float64 ``close`` (> 0) and optional float64 ``open high low volume``, in that column order.
Columns a source lacks are absent, never faked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from numbers import Real

import numpy as np
import pandas as pd

from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
"""Known columns, in canonical order."""

POSITIVE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
"""Columns whose values must be > 0 (``volume`` must be >= 0)."""

_HASH_VERSION = b"supsup-fin/prices-frame/v1"
_DAY_NS = 86_400 * 10**9


def _day(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%d")


_UNNAMED = {"", "none", "index", "unnamed: 0"}
"""Names an unnamed first column gets (``to_csv`` of an unnamed index, ``reset_index``); it is taken as the dates."""


def _date_source(df: pd.DataFrame, market: str) -> tuple[pd.DataFrame, str, pd.Series | pd.DatetimeIndex]:
    """The frame without its dates, the dates' column name and the raw dates (index or column)."""
    if isinstance(df.index, pd.DatetimeIndex):
        return df, "date", df.index
    if str(df.index.name).strip().lower() == "date":
        df = df.reset_index()
    names = [str(c).strip().lower() for c in df.columns]
    col = next((c for c, n in zip(df.columns, names) if n == "date"), None)
    if col is None and len(df.columns) > 1 and names[0] in _UNNAMED:
        col = df.columns[0]
        logger.info("market %r: no 'date' column; taking the unnamed first column %r as the dates", market, str(col))
    if col is None:
        raise DataError(
            f"market {market!r}: expected a DatetimeIndex or a 'date' column, "
            f"got a {type(df.index).__name__} and columns {[str(c) for c in df.columns]}"
        )
    return df.drop(columns=[col]), str(col), df[col].reset_index(drop=True)


def _after(dates: Sequence[object], pos: int) -> str:
    """`` (after D)`` naming the last date before row ``pos`` that is not missing (empty when none is)."""
    prev = next((d for d in dates[pos - 1::-1] if not pd.isna(d)), None) if pos > 0 else None
    return "" if prev is None else f" (after {prev if isinstance(prev, str) else _day(prev)})"


def _parse_dates(col: pd.Series, name: str, market: str, timezone: str | None) -> pd.DatetimeIndex:
    """ISO-8601 dates of a column, each tz-aware one at its wall clock (in ``timezone`` when given)."""
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return pd.DatetimeIndex(col)
    values = col.to_numpy(dtype=object)
    numbers = [i for i, v in enumerate(values) if isinstance(v, Real | np.number) and v == v]
    if pd.api.types.is_numeric_dtype(col.dtype) or numbers:
        first = numbers[0] if numbers else 0
        raise DataError(
            f"market {market!r}: column {name!r} holds integers or numbers, not dates (first {values[first]!r} at "
            f"row {first}); expected ISO-8601 dates (YYYY-MM-DD) or a DatetimeIndex"
        )
    try:
        instants = pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", utc=True))
    except (ValueError, TypeError, OverflowError):
        instants = pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", utc=True, errors="coerce"))
        bad = int(np.flatnonzero(instants.isna() & col.notna().to_numpy())[0])
        raise DataError(
            f"market {market!r}: column {name!r} expected ISO-8601 dates (YYYY-MM-DD); first unparseable "
            f"value {values[bad]!r} at row {bad}{_after(values, bad)}"
        ) from None
    try:
        return pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601"))
    except (ValueError, TypeError):  # offsets that change (DST) or naive and aware stamps mixed: row by row
        return pd.DatetimeIndex([_wall_clock(pd.Timestamp(v), timezone) for v in values])


def _wall_clock(ts: pd.Timestamp, timezone: str | None) -> pd.Timestamp:
    if ts is pd.NaT or ts.tz is None:
        return ts
    return (ts.tz_convert(timezone) if timezone else ts).tz_localize(None)


def _calendar_dates(dates: pd.DatetimeIndex, name: str, market: str, timezone: str | None) -> pd.DatetimeIndex:
    """The calendar date of each timestamp (the rule in :func:`validate_frame`), as ``datetime64[ns]``."""
    if dates.hasnans:
        pos = int(np.flatnonzero(dates.isna())[0])
        raise DataError(f"market {market!r}: column {name!r} has a missing date at row {pos}{_after(dates, pos)}")
    if dates.tz is not None:
        logger.debug("market %r: taking calendar dates in %s", market, timezone or dates.tz)
        dates = (dates.tz_convert(timezone) if timezone else dates).tz_localize(None)
    dates = dates.as_unit("ns")
    ns = dates.asi8
    if len(ns) > 1 and ns.min() >= 0 and ns.max() < _DAY_NS and (ns % _DAY_NS).any():
        raise DataError(
            f"market {market!r}: column {name!r} holds integers read as nanoseconds since 1970-01-01 "
            f"(first {int(ns[0])}, {int(ns[1])}), not dates; expected ISO-8601 dates (YYYY-MM-DD) or a DatetimeIndex"
        )
    return pd.DatetimeIndex(dates.normalize(), name="date")


def _normalise_columns(df: pd.DataFrame, market: str) -> pd.DataFrame:
    names = [str(c).strip().lower() for c in df.columns]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DataError(f"market {market!r}: columns {dups} appear more than once (names are case-insensitive)")
    df = df.set_axis(names, axis=1)
    if "close" not in names:
        raise DataError(f"market {market!r}: no 'close' column; got columns {names}")
    extra = [n for n in names if n not in PRICE_COLUMNS]
    if extra:
        logger.info("market %r: dropping columns outside the prices frame: %s", market, extra)
    return df[[c for c in PRICE_COLUMNS if c in names]]


def _to_float(col: pd.Series, name: str, market: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.astype("float64")
    values = col.to_numpy(dtype=object)
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype="float64")
    bad = (np.isnan(numbers) & col.notna().to_numpy()) | np.array([isinstance(v, bool | np.bool_) for v in values])
    if bad.any():  # numeric strings (a column pandas read as text) are numbers; anything else is not
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"market {market!r}: column {name!r} must be numeric; first non-numeric value "
            f"{values[i]!r} on {_day(col.index[i])} (dtype {col.dtype}, {int(bad.sum())} such value(s))"
        )
    return pd.Series(numbers, index=col.index)


def validate_frame(df: pd.DataFrame, market: str, *, timezone: str | None = None) -> pd.DataFrame:
    """Check the structural contract of a prices frame and return it in canonical form.

    Dates come from a ``DatetimeIndex``, else from a ``date`` column (any case; an unnamed first
    column, as ``to_csv`` writes an unnamed index, is taken as one) of datetimes or ISO-8601 strings.
    Each row's date is a calendar date, by one rule:

    - a tz-aware timestamp (a tz-aware index, or a string with an offset: ``Z``, ``+01:00``) is
      converted to ``timezone`` (the exchange's zone) when one is given, else kept in its own
      offset; its calendar date there is the row's date. So ``2024-03-04T23:00:00Z`` is
      2024-03-05 with ``timezone="Europe/Berlin"`` and 2024-03-04 without; offsets that change
      across a DST switch are read row by row;
    - a naive timestamp or a plain date is taken as given;
    - a time of day is then dropped (16:00 on 2024-03-04 is 2024-03-04).

    Parameters
    ----------
    df : DataFrame, shape (n_rows, n_columns)
        Prices indexed by date (or with a date column); column names are case-insensitive,
        columns other than ``open high low close volume`` are dropped.
    market : str
        Market name, used in error messages.
    timezone : str, optional
        The exchange's IANA time zone (:attr:`MarketConfig.timezone`).

    Returns
    -------
    DataFrame, shape (n_rows, k)
        A new frame: float64 columns in canonical order, index ``date`` as tz-naive
        ``datetime64[ns]`` at midnight. Numeric strings become numbers.
        Missing values (NaN) are allowed here; :func:`check_health` deals with them.

    Raises
    ------
    DataError
        Missing ``close`` or date column, dates that are integers or not ISO-8601, an empty frame,
        missing/duplicated/unsorted dates, non-numeric or non-finite values, prices <= 0 or
        negative volume; the message names the market, the column and the first bad date.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"market {market!r}: expected a pandas DataFrame, got {type(df).__name__}")
    body, date_col, raw_dates = _date_source(df, market)
    df = _normalise_columns(body, market)
    if len(df) == 0:
        raise DataError(f"market {market!r}: the prices frame is empty (no rows in column 'close')")
    if not isinstance(raw_dates, pd.DatetimeIndex):
        raw_dates = _parse_dates(raw_dates, date_col, market, timezone)
    idx = _calendar_dates(raw_dates, date_col, market, timezone)
    df = df.set_axis(idx)

    dup = idx.duplicated()
    if dup.any():
        first = idx[int(np.flatnonzero(dup)[0])]
        several = "; several timestamps on one day: intraday data?" if raw_dates.is_unique else ""
        raise DataError(
            f"market {market!r}: column {date_col!r} has duplicated dates ({int(dup.sum())}), first {_day(first)}"
            f"{several}"
        )
    if len(idx) > 1:
        back = np.flatnonzero(idx.asi8[1:] < idx.asi8[:-1])
        if back.size:
            i = int(back[0]) + 1
            raise DataError(
                f"market {market!r}: column {date_col!r} is not increasing: {_day(idx[i])} comes after "
                f"{_day(idx[i - 1])}"
            )

    out = pd.DataFrame(
        {c: _to_float(df[c], c, market).to_numpy() for c in df.columns}, index=idx, columns=list(df.columns)
    )
    for c in out.columns:
        vals = out[c].to_numpy()
        bad = np.isinf(vals) | ((vals <= 0) if c in POSITIVE_COLUMNS else (vals < 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            rule = "> 0" if c in POSITIVE_COLUMNS else ">= 0"
            raise DataError(
                f"market {market!r}: column {c!r} must be finite and {rule}; {int(bad.sum())} bad "
                f"value(s), first {float(vals[i])!r} on {_day(idx[i])}"
            )
    return out


def price_arrays(prices: pd.DataFrame, market: str) -> tuple[dict[str, np.ndarray], pd.DatetimeIndex]:
    """The columns of ``validate_frame(prices, market)`` as contiguous float64 arrays, and its dates.

    A frame already in the canonical form :func:`validate_frame` returns (known columns in
    canonical order, tz-naive ``datetime64[ns]`` dates at midnight, strictly increasing, numeric
    values it accepts) is checked by a few numpy reductions instead, and its own values (as
    float64, the cast ``validate_frame`` makes) and dates come back; any other frame goes through
    ``validate_frame``, to be canonicalised or refused. The live forecast's fast path.

    Parameters
    ----------
    prices : DataFrame, shape (n_rows, n_columns)
        Any frame :func:`validate_frame` takes.
    market : str
        Market name, used in error messages.

    Returns
    -------
    columns : dict name -> ndarray ``[n_rows]`` float64, in canonical column order
    dates : DatetimeIndex ``[n_rows]``

    Raises
    ------
    DataError
        Whatever :func:`validate_frame` refuses.
    """
    values = canonical_values(prices)
    frame = prices
    if values is None:
        frame = validate_frame(prices, market)
        values = frame.to_numpy(dtype=np.float64)
    return {c: np.ascontiguousarray(values[:, j]) for j, c in enumerate(frame.columns)}, frame.index


def canonical_values(prices: object) -> np.ndarray | None:
    """``prices``' values ``[n, k]`` where ``validate_frame`` would return the same values and dates
    and raise nothing; ``None`` otherwise."""
    if not (isinstance(prices, pd.DataFrame) and isinstance(prices.index, pd.DatetimeIndex)
            and prices.index.dtype == np.dtype("datetime64[ns]") and len(prices)):
        return None
    cols = list(prices.columns)
    if "close" not in cols or cols != [c for c in PRICE_COLUMNS if c in cols]:
        return None
    ns = prices.index.asi8
    if ns[0] == np.iinfo(np.int64).min or (ns % _DAY_NS).any() or (ns[1:] <= ns[:-1]).any():
        return None  # NaT, a time of day, or dates not strictly increasing
    values = prices.to_numpy()
    if values.dtype != np.float64:  # a non-numeric or bool column makes it object or bool
        return None
    positive = [j for j, c in enumerate(cols) if c in POSITIVE_COLUMNS]
    if np.isinf(values).any() or (values[:, positive] <= 0).any():
        return None
    if "volume" in cols and (values[:, cols.index("volume")] < 0).any():
        return None
    return values


def frame_hash(df: pd.DataFrame) -> str:
    """SHA-256 of a prices frame's content, independent of pandas' pickling and version.

    Hashes a version tag, the row count, the index as int64 nanoseconds, and per column its name
    and values as float64 little-endian bytes (NaN canonicalised, ``-0.0`` as ``0.0``).

    Parameters
    ----------
    df : DataFrame, shape (n_rows, k)
        A frame with a ``DatetimeIndex`` (normally the output of :func:`validate_frame`).

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    if not isinstance(df.index, pd.DatetimeIndex):
        raise DataError(f"frame_hash needs a DatetimeIndex, got {type(df.index).__name__}")
    idx = df.index.tz_localize(None) if df.index.tz is not None else df.index
    h = hashlib.sha256(_HASH_VERSION)
    h.update(np.int64(len(df)).astype("<i8").tobytes())
    h.update(idx.as_unit("ns").asi8.astype("<i8").tobytes())
    for name in df.columns:
        vals = df[name].to_numpy(dtype="float64", na_value=np.nan) + 0.0
        vals[np.isnan(vals)] = np.nan
        h.update(str(name).encode("utf-8") + b"\x00")
        h.update(vals.astype("<f8").tobytes())
    return h.hexdigest()
