"""The prices frame: its structural contract (:func:`validate_frame`, :func:`price_arrays`) and content hash.

A prices frame is a ``DataFrame`` indexed by a tz-naive ``DatetimeIndex`` named ``date``
(``datetime64[ns]``, normalised to midnight, strictly increasing, unique) with a required
float64 ``close`` (> 0) and optional float64 ``open high low volume``, in that column order.
Columns a source lacks are absent, never faked.
"""

from __future__ import annotations

import hashlib
import logging
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


def _day(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%d")


def _as_datetime_index(df: pd.DataFrame, market: str) -> pd.DataFrame:
    """Use a ``date`` column (any case) as the index when the index is not already dates."""
    if isinstance(df.index, pd.DatetimeIndex):
        return df
    date_cols = [c for c in df.columns if str(c).strip().lower() == "date"]
    if not date_cols:
        raise DataError(
            f"market {market!r}: expected a DatetimeIndex or a 'date' column, "
            f"got a {type(df.index).__name__} and columns {[str(c) for c in df.columns]}"
        )
    col = date_cols[0]
    try:
        dates = pd.to_datetime(df[col], format="ISO8601")
    except (ValueError, TypeError):
        parsed = pd.to_datetime(df[col], format="ISO8601", errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy() & df[col].notna().to_numpy())
        where = f"; first unparseable value {df[col].iloc[int(bad[0])]!r} at row {int(bad[0])}" if bad.size else ""
        raise DataError(f"market {market!r}: column 'date' expected ISO-8601 dates (YYYY-MM-DD){where}") from None
    return df.drop(columns=[col]).set_index(pd.DatetimeIndex(dates))


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
    for date, value in col.items():
        is_null = value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)
        if not is_null and (not isinstance(value, Real) or isinstance(value, bool | np.bool_)):
            raise DataError(
                f"market {market!r}: column {name!r} must be numeric; first non-numeric value "
                f"{value!r} on {_day(date)} (dtype {col.dtype})"
            )
    return pd.to_numeric(col, errors="coerce").astype("float64")


def validate_frame(df: pd.DataFrame, market: str) -> pd.DataFrame:
    """Check the structural contract of a prices frame and return it in canonical form.

    Parameters
    ----------
    df : DataFrame, shape (n_rows, n_columns)
        Prices indexed by date (or with a ``date`` column); column names are case-insensitive,
        columns other than ``open high low close volume`` are dropped.
    market : str
        Market name, used in error messages.

    Returns
    -------
    DataFrame, shape (n_rows, k)
        A new frame: float64 columns in canonical order, index ``date`` as tz-naive
        ``datetime64[ns]`` at midnight. A tz-aware index keeps its wall-clock dates.
        Missing values (NaN) are allowed here; :func:`check_health` deals with them.

    Raises
    ------
    DataError
        Missing ``close`` column, empty frame, missing/duplicated/unsorted dates, non-numeric or
        non-finite values, prices <= 0 or negative volume; the message names the market,
        the column and the first bad date.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"market {market!r}: expected a pandas DataFrame, got {type(df).__name__}")
    df = _normalise_columns(_as_datetime_index(df, market), market)
    if len(df) == 0:
        raise DataError(f"market {market!r}: the prices frame is empty (no rows in column 'close')")

    idx = df.index
    if idx.hasnans:
        pos = int(np.flatnonzero(idx.isna())[0])
        raise DataError(f"market {market!r}: column 'date' has a missing date at row {pos}")
    if idx.tz is not None:
        logger.debug("market %r: dropping time zone %s from the index", market, idx.tz)
        idx = idx.tz_localize(None)
    idx = idx.as_unit("ns")
    if not (idx == idx.normalize()).all():
        idx = idx.normalize()
    idx = pd.DatetimeIndex(idx, name="date")

    dup = idx.duplicated()
    if dup.any():
        first = idx[int(np.flatnonzero(dup)[0])]
        raise DataError(
            f"market {market!r}: column 'date' has duplicated dates ({int(dup.sum())}), first {_day(first)}"
        )
    if len(idx) > 1:
        back = np.flatnonzero(idx.asi8[1:] < idx.asi8[:-1])
        if back.size:
            i = int(back[0]) + 1
            raise DataError(
                f"market {market!r}: column 'date' is not increasing: {_day(idx[i])} comes after "
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


_DAY_NS = 86_400 * 10**9


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
