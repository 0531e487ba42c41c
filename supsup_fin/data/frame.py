"""The prices frame: its structural contract (:func:`validate_frame`, :func:`price_arrays`) and content hash.

A prices frame is a ``DataFrame`` indexed by a tz-naive ``DatetimeIndex`` named ``date``
(``datetime64[ns]``, normalised to midnight, strictly increasing, unique) with a required
float64 ``close`` (> 0) and optional float64 ``open high low volume``, in that column order.
Columns a source lacks are absent, never faked.
"""

from __future__ import annotations

import hashlib
import logging
import re
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


ADJ_CLOSE = "adj_close"
"""The adjusted close a file may hold beside ``close`` (``Adj Close`` in a Yahoo download)."""


def column_key(name: object) -> str:
    """A column name as it is matched: case-insensitive, outer blanks dropped, each run of spaces and
    underscores one ``_`` (``"Adj Close"``, ``"adj_close"`` and ``"ADJ  CLOSE"`` are ``"adj_close"``)."""
    return re.sub(r"[\s_]+", "_", str(name).strip().lower())


_UNNAMED = {column_key(n) for n in ("", "None", "index", "Unnamed: 0")}
"""Names an unnamed first column gets (``to_csv`` of an unnamed index, ``reset_index``); it is taken as the dates."""


def _date_source(df: pd.DataFrame, market: str, faults: list[str]
                 ) -> tuple[pd.DataFrame, str, pd.Series | pd.DatetimeIndex | None]:
    """The frame without its dates, the dates' column name and the raw dates (index, column, or None)."""
    if isinstance(df.index, pd.DatetimeIndex):
        return df, "date", df.index
    if column_key(df.index.name) == "date":
        df = df.reset_index()
    names = [column_key(c) for c in df.columns]
    col = next((c for c, n in zip(df.columns, names) if n == "date"), None)
    if col is None and len(df.columns) > 1 and names[0] in _UNNAMED:
        col = df.columns[0]
        logger.info("market %r: no 'date' column; taking the unnamed first column %r as the dates", market, str(col))
    if col is None:
        faults.append(f"expected a DatetimeIndex or a 'date' column, got a {type(df.index).__name__} and columns "
                      f"{[str(c) for c in df.columns]}")
        return df, "date", None
    return df.drop(columns=[col]), str(col), df[col].reset_index(drop=True)


def _after(dates: Sequence[object], pos: int) -> str:
    """`` (after D)`` naming the last date before row ``pos`` that is not missing (empty when none is)."""
    prev = next((d for d in dates[pos - 1::-1] if not pd.isna(d)), None) if pos > 0 else None
    return "" if prev is None else f" (after {prev if isinstance(prev, str) else _day(prev)})"


def _parse_dates(col: pd.Series, name: str, timezone: str | None, faults: list[str]) -> pd.DatetimeIndex | None:
    """ISO-8601 dates of a column, each tz-aware one at its wall clock (in ``timezone`` when given);
    ``NaT`` where a value cannot be read (the first is a fault); ``None`` when the column holds numbers."""
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return pd.DatetimeIndex(col)
    values = col.to_numpy(dtype=object)
    numbers = [i for i, v in enumerate(values) if isinstance(v, Real | np.number) and v == v]
    if pd.api.types.is_numeric_dtype(col.dtype) or numbers:
        first = numbers[0] if numbers else 0
        faults.append(f"column {name!r} holds integers or numbers, not dates (first {values[first]!r} at row {first}); "
                      "expected ISO-8601 dates (YYYY-MM-DD) or a DatetimeIndex")
        return None
    try:
        pd.to_datetime(col, format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError):
        instants = pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", utc=True, errors="coerce"))
        unread = instants.isna() & col.notna().to_numpy()
        bad = int(np.flatnonzero(unread)[0])
        faults.append(f"column {name!r} expected ISO-8601 dates (YYYY-MM-DD); first unparseable value "
                      f"{values[bad]!r} at row {bad}{_after(values, bad)}")
        col = col.where(~unread)
    try:
        return pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601"))
    except (ValueError, TypeError):  # offsets that change (DST) or naive and aware stamps mixed: row by row
        return pd.DatetimeIndex([_wall_clock(pd.Timestamp(v), timezone) for v in col.to_numpy(dtype=object)])


def _wall_clock(ts: pd.Timestamp, timezone: str | None) -> pd.Timestamp:
    if ts is pd.NaT or ts.tz is None:
        return ts
    return (ts.tz_convert(timezone) if timezone else ts).tz_localize(None)


def _calendar_dates(dates: pd.DatetimeIndex, name: str, market: str, timezone: str | None, faults: list[str],
                    missing: np.ndarray) -> pd.DatetimeIndex | None:
    """The calendar date of each timestamp (the rule in :func:`validate_frame`), as ``datetime64[ns]``
    (``NaT`` kept); ``None`` when they are integers read as nanoseconds. ``missing`` marks empty cells."""
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        faults.append(f"column {name!r} has a missing date at row {pos}{_after(dates, pos)}")
    if dates.tz is not None:
        logger.debug("market %r: taking calendar dates in %s", market, timezone or dates.tz)
        dates = (dates.tz_convert(timezone) if timezone else dates).tz_localize(None)
    dates = dates.as_unit("ns")
    ns = dates[~dates.isna()].asi8
    if len(ns) > 1 and ns.min() >= 0 and ns.max() < _DAY_NS and (ns % _DAY_NS).any():
        faults.append(f"column {name!r} holds integers read as nanoseconds since 1970-01-01 (first {int(ns[0])}, "
                      f"{int(ns[1])}), not dates; expected ISO-8601 dates (YYYY-MM-DD) or a DatetimeIndex")
        return None
    return pd.DatetimeIndex(dates.normalize(), name="date")


def _order_faults(idx: pd.DatetimeIndex, raw: pd.DatetimeIndex, name: str, faults: list[str]) -> None:
    """Duplicated and decreasing dates among those that could be read."""
    known = ~idx.isna()
    dates = idx[known]
    dup = dates.duplicated()
    if dup.any():
        several = "; several timestamps on one day: intraday data?" if raw[known].is_unique else ""
        faults.append(f"column {name!r} has duplicated dates ({int(dup.sum())}), first "
                      f"{_day(dates[int(np.flatnonzero(dup)[0])])}{several}")
    back = np.flatnonzero(dates.asi8[1:] < dates.asi8[:-1])
    if back.size:
        i = int(back[0]) + 1
        faults.append(f"column {name!r} is not increasing: {_day(dates[i])} comes after {_day(dates[i - 1])}")


def _normalise_columns(df: pd.DataFrame, close: str, faults: list[str], market: str) -> pd.DataFrame:
    """The known columns (and ``adj_close`` when ``close`` names it), named by :func:`column_key`."""
    names = [column_key(c) for c in df.columns]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        faults.append(f"columns {dups} appear more than once (names are case-insensitive, spaces and "
                      "underscores alike)")
    df = df.set_axis(names, axis=1).loc[:, ~pd.Index(names).duplicated()]
    if close == ADJ_CLOSE and ADJ_CLOSE not in names:
        faults.append(f"no {ADJ_CLOSE!r} column (the market's close: {ADJ_CLOSE}); got columns {names}")
    elif close != ADJ_CLOSE and "close" not in names:
        hint = f" (to use {ADJ_CLOSE!r}, set the market's close: {ADJ_CLOSE})" if ADJ_CLOSE in names else ""
        faults.append(f"no 'close' column; got columns {names}{hint}")
    kept = [c for c in PRICE_COLUMNS if c in names] + ([ADJ_CLOSE] if close == ADJ_CLOSE and ADJ_CLOSE in names else [])
    extra = [n for n in names if n not in kept]
    if extra:
        logger.info("market %r: dropping columns outside the prices frame: %s", market, extra)
    return df[kept]


def _at(idx: pd.DatetimeIndex | None, i: int) -> str:
    """``on YYYY-MM-DD`` for row ``i``, or ``at row i`` when its date is unknown."""
    return f"at row {i}" if idx is None or pd.isna(idx[i]) else f"on {_day(idx[i])}"


def _to_float(col: pd.Series, name: str, idx: pd.DatetimeIndex | None, faults: list[str]) -> np.ndarray:
    """The column as float64; a value that is not a number is a fault and becomes NaN."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype="float64", na_value=np.nan)
    values = col.to_numpy(dtype=object)
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype="float64", copy=True)
    bad = (np.isnan(numbers) & col.notna().to_numpy()) | np.array([isinstance(v, bool | np.bool_) for v in values])
    if bad.any():  # numeric strings (a column pandas read as text) are numbers; anything else is not
        i = int(np.flatnonzero(bad)[0])
        faults.append(f"column {name!r} must be numeric; first non-numeric value {values[i]!r} {_at(idx, i)} "
                      f"(dtype {col.dtype}, {int(bad.sum())} such value(s))")
        numbers[bad] = np.nan
    return numbers


def _range_faults(name: str, vals: np.ndarray, idx: pd.DatetimeIndex | None, faults: list[str]) -> None:
    bad = np.isinf(vals) | ((vals <= 0) if name in POSITIVE_COLUMNS or name == ADJ_CLOSE else (vals < 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rule = ">= 0" if name == "volume" else "> 0"
        faults.append(f"column {name!r} must be finite and {rule}; {int(bad.sum())} bad value(s), first "
                      f"{float(vals[i])!r} {_at(idx, i)}")


def _adjusted(df: pd.DataFrame, market: str) -> pd.DataFrame:
    """``adj_close`` as ``close``, ``open high low`` scaled by ``adj_close / close`` (dropped without a ``close``)."""
    adj = df.pop(ADJ_CLOSE)
    bars = [c for c in ("open", "high", "low") if c in df.columns]
    if "close" in df.columns:
        df[bars] = df[bars].mul(adj / df["close"], axis=0)
    elif bars:
        logger.info("market %r: dropping %s: no unadjusted 'close' to scale them to %r", market, bars, ADJ_CLOSE)
        df = df.drop(columns=bars)
    df["close"] = adj
    return df[[c for c in PRICE_COLUMNS if c in df.columns]]


def validate_frame(df: pd.DataFrame, market: str, *, timezone: str | None = None, close: str = "close",
                   origin: str | None = None) -> pd.DataFrame:
    """Check the structural contract of a prices frame and return it in canonical form.

    Dates come from a ``DatetimeIndex``, else from a ``date`` column (an unnamed first column, as
    ``to_csv`` writes an unnamed index, is taken as one) of datetimes or ISO-8601 strings.
    Each row's date is a calendar date, by one rule:

    - a tz-aware timestamp (a tz-aware index, or a string with an offset: ``Z``, ``+01:00``) is
      converted to ``timezone`` (the exchange's zone) when one is given, else kept in its own
      offset; its calendar date there is the row's date. So ``2024-03-04T23:00:00Z`` is
      2024-03-05 with ``timezone="Europe/Berlin"`` and 2024-03-04 without; offsets that change
      across a DST switch are read row by row;
    - a naive timestamp or a plain date is taken as given;
    - a time of day is then dropped (16:00 on 2024-03-04 is 2024-03-04).

    Column names are matched by :func:`column_key`: case-insensitive, spaces and underscores alike
    (``Adj Close`` is ``adj_close``).

    Parameters
    ----------
    df : DataFrame, shape (n_rows, n_columns)
        Prices indexed by date (or with a date column); columns other than
        ``open high low close volume`` (and ``adj_close`` when ``close`` names it) are dropped.
    market : str
        Market name, used in error messages.
    timezone : str, optional
        The exchange's IANA time zone (:attr:`MarketConfig.timezone`).
    close : {"close", "adj_close"}
        Which column is the close (:attr:`MarketConfig.close`). With ``"adj_close"`` the adjusted
        column becomes ``close`` and ``open high low`` are scaled by ``adj_close / close`` row by row,
        so a bar stays consistent (without a ``close`` column they are dropped).
    origin : str, optional
        Where the frame came from, named in errors after the market (``prices file '/data/spy.csv'``).

    Returns
    -------
    DataFrame, shape (n_rows, k)
        A new frame: float64 columns in canonical order, index ``date`` as tz-naive
        ``datetime64[ns]`` at midnight. Numeric strings become numbers.
        Missing values (NaN) are allowed here; :func:`check_health` deals with them.

    Raises
    ------
    DataError
        Every structural fault found, in one error: a missing ``close`` or date column, dates that
        are integers or not ISO-8601, an empty frame, missing/duplicated/unsorted dates, non-numeric
        or non-finite values, prices <= 0 or negative volume; each names the column and the first
        bad value and its date (or row); the message names the market (and ``origin``).
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"market {market!r}: expected a pandas DataFrame, got {type(df).__name__}")
    faults: list[str] = []
    body, date_col, raw_dates = _date_source(df, market, faults)
    body = _normalise_columns(body, close, faults, market)
    if len(body) == 0:
        faults.append(f"the prices frame is empty (no rows in column {close!r})")
        _raise(faults, market, origin)
    idx = None
    if raw_dates is not None:
        missing = np.asarray(pd.isna(raw_dates))
        if not isinstance(raw_dates, pd.DatetimeIndex):
            raw_dates = _parse_dates(raw_dates, date_col, timezone, faults)
        if raw_dates is not None:
            idx = _calendar_dates(raw_dates, date_col, market, timezone, faults, missing)
        if idx is not None:
            _order_faults(idx, raw_dates, date_col, faults)
    columns = {c: _to_float(body[c], c, idx, faults) for c in body.columns}
    for c, vals in columns.items():
        _range_faults(c, vals, idx, faults)
    _raise(faults, market, origin)
    out = pd.DataFrame(columns, index=idx, columns=list(body.columns))
    return _adjusted(out, market) if close == ADJ_CLOSE else out


def _raise(faults: list[str], market: str, origin: str | None) -> None:
    """Raise one :class:`DataError` holding every fault (nothing when there is none)."""
    if not faults:
        return
    where = f"market {market!r}: {origin}: " if origin else f"market {market!r}: "
    if len(faults) == 1:
        raise DataError(where + faults[0])
    listed = "; ".join(f"({i}) {f}" for i, f in enumerate(faults, 1))
    raise DataError(f"{where}{len(faults)} structural faults: {listed}")


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
