"""Hypothesis strategies for raw price frames: the market input a user hands the loader, valid or broken.

Each example is a :class:`PriceCase`: the raw ``frame`` (a date index or a date column, ``close`` and
some of ``open high low volume``), the ``fault`` it carries (``"valid"`` for a clean one) and what a
loader's error must name for a row-specific fault: the ``column`` and the first offending ``date``
(``YYYY-MM-DD``, the exchange's calendar date). ``dates`` are the calendar dates the rows stand for;
``timezone`` is the exchange time zone a market must be configured with to read them back (set only
where the frame holds instants of another zone, such as UTC timestamps of Tokyo midnights).

Hypothesis draws only a few small integers (rows, seed, layout, fault, position); the values come
from numpy, so generation stays cheap.

>>> from reliability.frames import price_frames, valid_frames  # doctest: +SKIP
>>> @given(price_frames(max_rows=300))                     # doctest: +SKIP
... def test_x(case): frame, fault = case.frame, case.fault
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from hypothesis import strategies as st

OPTIONAL = ("open", "high", "low", "volume")
TIMEZONES = ("America/New_York", "Europe/Berlin", "Europe/London", "Asia/Tokyo", "Australia/Sydney")
"""Exchange zones whose local midnight always exists (their DST changes happen at 1-3 am)."""

VALID_LAYOUTS = (
    "index",        # DatetimeIndex named "date"
    "column",       # a datetime64 "date" column
    "strings",      # ISO-8601 "YYYY-MM-DD" strings in a "Date" column
    "unnamed",      # an unnamed DatetimeIndex (a CSV of it has an empty first header)
    "times",        # naive timestamps at 16:00, the close
    "tz-index",     # exchange-local midnights in a tz-aware index, across DST changes
    "tz-strings",   # exchange-local midnights as ISO strings with their offsets, across DST changes
    "utc",          # UTC ISO strings ("...Z") of exchange-local midnights; needs the market's timezone
)
VALUE_FAULTS = ("nan", "inf", "-inf", "zero", "negative", "string", "spike", "spike-run", "spike-last",
                "level-shift", "constant")
STRUCTURE_FAULTS = ("duplicate", "unsorted", "missing-date", "int-dates", "int-index", "no-close",
                    "no-date", "empty", "one-row", "short")
FAULTS = VALUE_FAULTS + STRUCTURE_FAULTS

SPIKE = 1e12
"""The factor a spike multiplies a close by: a unit or feed error, never a market move."""


class PriceCase(NamedTuple):
    """A raw prices frame and what a loader must say about it."""

    frame: pd.DataFrame
    fault: str
    column: str | None = None
    date: str | None = None
    dates: pd.DatetimeIndex | None = None
    timezone: str | None = None

    @property
    def description(self) -> str:
        where = "".join(f" {k}={v}" for k, v in (("column", self.column), ("date", self.date),
                                                  ("timezone", self.timezone)) if v is not None)
        return f"{self.fault} ({len(self.frame)} rows){where}"


def random_walk_frame(n: int, seed: int, start: str = "2003-01-02", columns: tuple[str, ...] = OPTIONAL
                      ) -> pd.DataFrame:
    """``n`` business days of a 1%-a-day random walk from ``start``: ``close`` and ``columns``, a ``date`` index."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0002, 0.01, n)))
    full = {"open": close * np.exp(rng.normal(0, 0.002, n)), "high": close * 1.01, "low": close * 0.99,
            "close": close, "volume": rng.integers(10**5, 10**7, n).astype(np.float64)}
    keep = [c for c in ("open", "high", "low", "close", "volume") if c == "close" or c in columns]
    return pd.DataFrame({c: full[c] for c in keep}, index=pd.bdate_range(start, periods=n, name="date"))


def _iso_with_offset(stamps: pd.DatetimeIndex) -> list[str]:
    return [t.isoformat() for t in stamps]


def with_layout(frame: pd.DataFrame, layout: str, tz: str) -> tuple[pd.DataFrame, str | None]:
    """``frame`` (a naive ``date`` index) written in ``layout``; also the timezone a loader needs, if any."""
    dates = frame.index
    body = frame.reset_index(drop=True)
    if layout == "index":
        return frame, None
    if layout == "column":
        return body.assign(date=dates.to_numpy())[["date", *frame.columns]], None
    if layout == "strings":
        return body.assign(Date=dates.strftime("%Y-%m-%d"))[["Date", *frame.columns]], None
    if layout == "unnamed":
        return frame.rename_axis(None), None
    if layout == "times":
        return frame.set_axis((dates + pd.Timedelta(hours=16)).rename("date")), None
    local = dates.tz_localize(tz)
    if layout == "tz-index":
        return frame.set_axis(local.rename("date")), None
    if layout == "tz-strings":
        return body.assign(date=_iso_with_offset(local))[["date", *frame.columns]], None
    if layout == "utc":
        utc = local.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        return body.assign(date=list(utc))[["date", *frame.columns]], tz
    raise ValueError(f"unknown layout {layout!r}; known: {list(VALID_LAYOUTS)}")


def _date_of(frame: pd.DataFrame, i: int) -> str:
    return frame.index[i].strftime("%Y-%m-%d")


def _value_fault(frame: pd.DataFrame, fault: str, i: int, k: int, rng: np.random.Generator
                 ) -> tuple[pd.DataFrame, str | None, str | None]:
    """``frame`` (naive date index) with ``fault`` from row ``i``; the column and date it starts at."""
    df = frame.copy()
    n = len(df)
    i = max(i, 1) if fault in ("spike-run", "level-shift") else i  # from row 0 it would be a new level, no fault
    if fault == "constant":
        df[[c for c in df.columns if c != "volume"]] = 100.0
        return df, None, None
    if fault in ("spike", "spike-run", "spike-last", "level-shift"):
        rows = {"spike": slice(i, i + 1), "spike-run": slice(i, min(n, i + k)), "spike-last": slice(n - 1, n),
                "level-shift": slice(i, n)}[fault]
        prices = [c for c in ("open", "high", "low", "close") if c in df.columns]
        df.iloc[rows, [df.columns.get_loc(c) for c in prices]] *= SPIKE
        start = n - 1 if fault == "spike-last" else i
        return df, "close", _date_of(df, start)
    col = str(rng.choice([c for c in df.columns if c != "volume" or fault in ("nan", "inf", "string", "negative")]))
    if fault == "string":
        token = str(rng.choice(["abc", "1,234.5", "#N/A!", "--", "12.3.4"]))
        text = df[col].astype(str)
        text.iloc[i] = token
        df[col] = text
        return df, col, _date_of(df, i)
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zero": 0.0, "negative": -1.0}[fault]
    df.iloc[i, df.columns.get_loc(col)] = value
    return df, col, _date_of(df, i)


def _structure_fault(frame: pd.DataFrame, fault: str, i: int, layout: str, tz: str
                     ) -> tuple[pd.DataFrame, str | None, str | None]:
    """``frame`` with a date or shape ``fault``, in ``layout`` where the fault allows."""
    n = len(frame)
    dates = frame.index
    if fault == "duplicate":
        i = max(1, i)
        moved = frame.set_axis(dates[:i].append(dates[i - 1:i]).append(dates[i + 1:]).rename("date"))
        return with_layout(moved, layout, tz)[0], "date", _date_of(frame, i - 1)
    if fault == "unsorted":
        i = min(i, n - 2)
        order = np.arange(n)
        order[[i, i + 1]] = order[[i + 1, i]]
        return with_layout(frame.set_axis(dates[order].rename("date")), layout, tz)[0], "date", _date_of(frame, i)
    if fault == "missing-date":
        i = max(1, i)
        shown = frame.reset_index(drop=True).assign(date=dates.strftime("%Y-%m-%d").to_numpy(dtype=object))
        shown.loc[i, "date"] = None
        return shown[["date", *frame.columns]], "date", _date_of(frame, i - 1)
    if fault == "int-dates":
        return frame.reset_index(drop=True).assign(date=np.arange(n))[["date", *frame.columns]], "date", None
    if fault == "int-index":  # integers read as nanoseconds since 1970-01-01
        return frame.set_axis(pd.DatetimeIndex(np.arange(n), name="date")), "date", None
    if fault == "no-close":
        return with_layout(frame.drop(columns="close"), layout, tz)[0], "close", None
    if fault == "no-date":
        return frame.reset_index(drop=True), "date", None
    if fault == "empty":
        return with_layout(frame.iloc[:0], layout, tz)[0], "close", None
    if fault == "one-row":
        return with_layout(frame.iloc[:1], layout, tz)[0], None, None
    if fault == "short":
        return with_layout(frame, layout, tz)[0], None, None
    raise ValueError(f"unknown fault {fault!r}; known: {list(FAULTS)}")


@st.composite
def valid_frames(draw: st.DrawFn, min_rows: int = 200, max_rows: int = 400,
                 layouts: tuple[str, ...] = VALID_LAYOUTS) -> PriceCase:
    """A clean random walk of ``min_rows..max_rows`` business days in one of ``layouts``."""
    n = draw(st.integers(min_rows, max_rows))
    seed = draw(st.integers(0, 2**16))
    columns = tuple(c for c in OPTIONAL if draw(st.booleans()))
    start = draw(st.sampled_from(("1999-01-04", "2008-09-01", "2019-10-01", "2023-03-01")))
    layout = draw(st.sampled_from(layouts))
    tz = draw(st.sampled_from(TIMEZONES))
    base = random_walk_frame(n, seed, start, columns)
    frame, timezone = with_layout(base, layout, tz)
    return PriceCase(frame, "valid", dates=base.index, timezone=timezone)


@st.composite
def price_frames(draw: st.DrawFn, min_rows: int = 200, max_rows: int = 400, short_rows: int = 60,
                 faults: tuple[str, ...] = ("valid", *FAULTS)) -> PriceCase:
    """A raw prices frame, valid or carrying one fault from ``faults``.

    Parameters
    ----------
    min_rows, max_rows : rows of the frames that are long enough for a model.
    short_rows : the ``"short"`` fault has ``2..short_rows - 1`` rows (set it to the model's minimum).
    faults : which faults to draw from (``"valid"``: no fault).
    """
    fault = draw(st.sampled_from(faults))
    if fault == "valid":
        return draw(valid_frames(min_rows, max_rows))
    n = draw(st.integers(2, max(2, short_rows - 1))) if fault == "short" else draw(st.integers(min_rows, max_rows))
    seed = draw(st.integers(0, 2**16))
    columns = tuple(c for c in OPTIONAL if draw(st.booleans()))
    i = draw(st.integers(0, n - 1))
    k = draw(st.integers(2, 5))
    layout = draw(st.sampled_from(("index", "column", "strings", "tz-index")))
    tz = draw(st.sampled_from(TIMEZONES))
    base = random_walk_frame(n, seed, "2010-01-04", columns)
    if fault in VALUE_FAULTS:
        broken, column, date = _value_fault(base, fault, i, k, np.random.default_rng(seed))
        frame = with_layout(broken, layout, tz)[0]
    else:
        frame, column, date = _structure_fault(base, fault, i, layout, tz)
    return PriceCase(frame, fault, column, date, base.index)
