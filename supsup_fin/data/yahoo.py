"""Yahoo Finance prices through yfinance, with a per-ticker parquet cache and incremental updates.

One call of :func:`fetch_yahoo`:

1. No cache (or one written for another ``yahoo.start``): download from ``yahoo.start``.
2. A cache: download from ``last cached date - overlap_days`` and compare the closes on the dates
   both hold (rtol 1e-6; the last cached row is left out of the comparison when others exist, as it
   may have been a bar of a session still in progress). Equal: keep the cached rows before the
   download's first date, take the download's rows from there on (the fresh version of the overlap,
   which also fills a date a cached download lacked) and keep any cached date it lacks. Different,
   or no common date: adjusted history was rescaled (a dividend or split), so download the whole
   series from ``yahoo.start`` again.
3. Each download is tried ``1 + retries`` times with exponential backoff and jitter. An exception,
   an empty frame (what ``yfinance.download`` returns for an unknown ticker) or a partial frame is a
   failed attempt. Partial, against the cache: a column the cache has is missing, the rows end
   before the cache's last date, or a cached date inside the download's range is missing (the
   cache's last date excepted when later rows came: Yahoo withdraws a bar now and then). So the
   cache never loses a column or a date to a partial download. A failure that says Yahoo cannot be
   reached at all (a host name that does not resolve, no route to the host, a refused connection:
   :func:`unreachable`) ends the download at once: retries are for transient faults (timeouts,
   throttling, a bad response), and offline a retry only adds its backoff. ``yfinance.download``
   logs such a failure and returns an empty frame; :func:`yfinance_download` reads the records it
   logged and raises :class:`ConnectionError`.
4. When every attempt fails (or one finds Yahoo unreachable), serve the cache with a logged
   warning saying how stale it is (source ``"yahoo-cache"``); with no cache, raise :class:`DataError`.
5. The cache is written atomically (:mod:`supsup_fin._atomic`); if the write fails (a full disk)
   the download is still served, with a warning, and the cache stays as it was.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.config import YahooConfig
from supsup_fin.data._cache import cache_paths, read_cache, write_cache
from supsup_fin.data.frame import PRICE_COLUMNS, validate_frame
from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)

Download = Callable[..., pd.DataFrame | None]
"""``yfinance.download``-like: called with keywords ``tickers, start, end, interval, auto_adjust,
progress, timeout`` (``start``/``end`` as ``YYYY-MM-DD``, ``end`` exclusive)."""

_RTOL = 1e-6
_jitter = random.Random()


_CURL_UNREACHABLE = re.compile(r"curl: \((?:5|6|7)\) (.+?)(?= \(|\. See|$)")
"""curl's codes for a proxy or host name that does not resolve (5, 6) and a failed connect (7)."""
_UNREACHABLE = re.compile(
    r"(?i)(?:could not resolve host|name or service not known|temporary failure in name resolution|"
    r"nodename nor servname provided|getaddrinfo failed|connection refused|no route to host|"
    r"network is unreachable).*?(?= \(|\. |$)")


def unreachable(error: BaseException | str) -> str | None:
    """Why ``error`` says Yahoo cannot be reached at all, or ``None`` for any other failure.

    Unreachable: a host name that does not resolve, no route to the host, a refused connection
    (curl's errors 5, 6, 7, the socket's wording, :class:`socket.gaierror`,
    :class:`ConnectionRefusedError`). A timeout, a reset connection or an HTTP error is not: it
    may pass on a retry.
    """
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    found = _CURL_UNREACHABLE.search(text)
    if found:
        return found.group(1)
    found = _UNREACHABLE.search(text)
    if found:
        return found.group(0)
    return text if isinstance(error, socket.gaierror | ConnectionRefusedError) else None


class _FetchFailed(Exception):
    """Every attempt of one download failed, or one said Yahoo is unreachable (``offline``: why)."""

    def __init__(self, attempts: int, last_error: str, offline: str | None = None) -> None:
        super().__init__(last_error)
        self.attempts = attempts
        self.last_error = last_error
        self.offline = offline

    def describe(self) -> str:
        """``after N attempt(s) (last error: ...)`` or ``(unreachable, not retried: ...)``."""
        if self.offline:
            return f"(unreachable, not retried: {self.last_error})"
        return f"after {self.attempts} attempt(s) (last error: {self.last_error})"


@dataclass(frozen=True, eq=False)
class YahooFetch:
    """Result of :func:`fetch_yahoo`: the raw (unvalidated) frame and where it came from."""

    frame: pd.DataFrame
    source: str  # "yahoo" | "yahoo-cache"
    mode: str  # "full" | "incremental" | "refetch" | "cache"
    attempts: int


class _ThreadMessages(logging.Filter):
    """Collects the messages of the records the creating thread logs (the records pass on unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())
        return True


def yfinance_download(**kwargs: Any) -> pd.DataFrame | None:
    """Call ``yfinance.download`` on this thread (``threads=False``) and return its frame.

    When it returns no rows and one of the records it logged during the call says Yahoo cannot be
    reached (:func:`unreachable`), :class:`ConnectionError` is raised with that reason. The
    deprecation warnings yfinance triggers in pandas are ignored (set in the process's filters, not
    in a ``catch_warnings`` block: that block restores the filters of the thread that leaves it
    last, so downloads on parallel threads would drop each other's).

    Raises
    ------
    ConnectionError
        Yahoo cannot be reached: a host name that does not resolve, no route, a refused connection.
    """
    import yfinance

    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"yfinance")
    logged = _ThreadMessages()
    yf_logger = logging.getLogger("yfinance")
    yf_logger.addFilter(logged)
    try:
        raw = yfinance.download(**{"threads": False, **kwargs})
    finally:
        yf_logger.removeFilter(logged)
    if raw is None or len(raw) == 0:
        reason = next((r for r in map(unreachable, logged.messages) if r), None)
        if reason:
            raise ConnectionError(reason)
    return raw


def flatten_yahoo(raw: pd.DataFrame | None, ticker: str) -> pd.DataFrame:
    """Turn a ``yfinance.download`` frame into prices-frame columns (not yet validated).

    Accepts flat columns or MultiIndex ``(field, ticker)`` / ``(ticker, field)`` columns, picks
    ``ticker``'s fields, lower-cases them and keeps ``open high low close volume``; dates are made
    tz-naive (wall clock), sorted, and a repeated date keeps its last row.

    Raises
    ------
    ValueError
        ``raw`` is ``None``, empty, or holds no close for ``ticker``.
    """
    if raw is None or not isinstance(raw, pd.DataFrame) or raw.empty:
        raise ValueError(f"empty response for {ticker!r} (no network, or an unknown ticker)")
    df = raw
    fields = {c.lower() for c in ("Open", "High", "Low", "Close", "Adj Close", "Volume")}
    if isinstance(df.columns, pd.MultiIndex):
        levels = [{str(v).lower() for v in df.columns.get_level_values(i)} for i in range(df.columns.nlevels)]
        field_level = next((i for i, lv in enumerate(levels) if lv & fields), None)
        if field_level is None or df.columns.nlevels != 2:
            raise ValueError(f"unexpected columns for {ticker!r}: {list(df.columns)}")
        tick_level = 1 - field_level
        tickers = list(dict.fromkeys(df.columns.get_level_values(tick_level)))
        match = [t for t in tickers if str(t).upper() == ticker.upper()]
        if not match and len(tickers) == 1:
            match = tickers
        if not match:
            raise ValueError(f"no columns for {ticker!r} in response; tickers {tickers}")
        df = df.xs(match[0], axis=1, level=tick_level)
    df = df.set_axis([str(c).strip().lower() for c in df.columns], axis=1)
    if "close" not in df.columns and "adj close" in df.columns:
        df = df.rename(columns={"adj close": "close"})
    if "close" not in df.columns:
        raise ValueError(f"no 'close' column for {ticker!r}; got {list(df.columns)}")
    df = df[[c for c in PRICE_COLUMNS if c in df.columns]].astype("float64")
    idx = pd.DatetimeIndex(df.index)
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    df.index = pd.DatetimeIndex(idx.normalize(), name="date").as_unit("ns")
    if df.index.has_duplicates:  # yfinance has returned today's bar twice; the last one is the latest
        logger.info("response for %r repeats %d date(s); keeping the last row of each", ticker,
                    int(df.index.duplicated().sum()))
        df = df.loc[~df.index.duplicated(keep="last")]
    df = df.sort_index()
    if df["close"].isna().all():
        raise ValueError(f"response for {ticker!r} has no close values")
    return df


def _partial(fresh: pd.DataFrame, cache: pd.DataFrame | None, start: pd.Timestamp) -> str | None:
    """Why a download from ``start`` is partial against the cache (see the module docstring), or ``None``."""
    if cache is None:
        return None
    cols = [c for c in cache.columns if c not in fresh.columns]
    if cols:
        return f"partial response: no {cols} column(s), which the cache has"
    last = cache.index[-1]
    if fresh.index[-1] < last:
        return f"partial response: rows end {fresh.index[-1].date()}, before the cache's last date {last.date()}"
    held = cache.index[(cache.index >= start) & (cache.index < last)]
    lost = held[~held.isin(fresh.index)]
    if len(lost):
        return f"partial response: {len(lost)} cached date(s) missing, first {lost[0].date()}"
    return None


def _download(
    download: Download, ticker: str, start: pd.Timestamp, end: pd.Timestamp, yahoo: YahooConfig,
    sleep: Callable[[float], None], cache: pd.DataFrame | None,
) -> tuple[pd.DataFrame, int]:
    attempts = yahoo.retries + 1
    last = "no attempt made"
    for i in range(attempts):
        try:
            raw = download(tickers=ticker, start=start.strftime("%Y-%m-%d"), end=end.strftime("%Y-%m-%d"),
                           interval="1d", auto_adjust=True, progress=False, timeout=yahoo.timeout_s)
            fresh = flatten_yahoo(raw, ticker)
            partial = _partial(fresh, cache, start)
            if partial is None:
                return fresh, i + 1
            last = partial
        except Exception as err:  # any failure of a third-party download is one failed attempt
            last = f"{type(err).__name__}: {err}"
            why = unreachable(err)
            if why:
                logger.info("download of %r %s..%s: Yahoo is unreachable (%s); not retrying", ticker,
                            start.date(), end.date(), why)
                raise _FetchFailed(i + 1, last, why) from None
        logger.info("download of %r %s..%s failed (attempt %d/%d): %s", ticker, start.date(), end.date(),
                    i + 1, attempts, last)
        if i + 1 < attempts:
            delay = yahoo.backoff_s * 2**i * (1.0 + 0.25 * _jitter.random())
            if delay > 0:
                sleep(delay)
    raise _FetchFailed(attempts, last)


def _overlap_equal(cache: pd.DataFrame, fresh: pd.DataFrame) -> bool:
    if list(cache.columns) != list(fresh.columns):
        return False
    common = cache.index.intersection(fresh.index)
    if len(common) > 1:
        common = common[common != cache.index[-1]]
    if len(common) == 0:
        return False
    a = cache.loc[common, "close"].to_numpy()
    b = fresh.loc[common, "close"].to_numpy()
    return bool(np.allclose(a, b, rtol=_RTOL, atol=0.0, equal_nan=True))


def _now(now: pd.Timestamp | str | None) -> pd.Timestamp:
    ts = pd.Timestamp.now() if now is None else pd.Timestamp(now)
    return ts.tz_localize(None) if ts.tz is not None else ts


def stale_days(as_of: pd.Timestamp, now: pd.Timestamp | str | None) -> int:
    """Calendar days from ``as_of`` to ``now``'s date (wall clock; never negative)."""
    return max(0, int((_now(now).normalize() - pd.Timestamp(as_of).normalize()).days))


def fetch_yahoo(
    ticker: str,
    yahoo: YahooConfig,
    cache_dir: Path,
    *,
    market: str | None = None,
    now: pd.Timestamp | str | None = None,
    download: Download | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> YahooFetch:
    """Fetch a ticker's daily adjusted prices, updating its cache (see the module docstring).

    Parameters
    ----------
    ticker : str
        Yahoo symbol (``SPY``, ``^GSPC``...).
    yahoo : YahooConfig
        Start date, retries, backoff, overlap window and timeout.
    cache_dir : Path
        Root of the cache; files go to ``cache_dir/yahoo/``.
    market : str, optional
        Market name for messages (defaults to the ticker).
    now : Timestamp, optional
        The current time (tz-aware values keep their wall clock); the download ends at its date.
    download : callable, optional
        Replaces ``yfinance.download`` (tests inject recorded frames and failures).
    sleep : callable
        Called with each backoff delay in seconds.

    Returns
    -------
    YahooFetch
        ``frame`` of shape (n_days, k) with prices-frame columns, not yet validated.

    Raises
    ------
    DataError
        Every attempt failed and there is no cache, or the download breaks the prices-frame
        structure (the cache is then left as it was).
    """
    market = market or ticker
    download = download or yfinance_download
    now_ts = _now(now)
    end = now_ts.normalize() + pd.Timedelta(days=1)  # yfinance's end is exclusive
    full_start = pd.Timestamp(yahoo.start)
    cached = read_cache(cache_dir, ticker)
    cache = cached[0] if cached else None
    moved = cached is not None and cached[1].get("start") != str(yahoo.start)
    if moved:
        logger.info("market %r: cache of %r starts from %s, configured start is %s: downloading it all",
                    market, ticker, cached[1].get("start"), yahoo.start)
    used = 0
    try:
        if cache is None or moved:
            frame, used = _download(download, ticker, full_start, end, yahoo, sleep, cache)
            mode = "full"
        else:
            last = cache.index[-1]
            start = max(full_start, last - pd.Timedelta(days=yahoo.overlap_days))
            fresh, used = _download(download, ticker, start, end, yahoo, sleep, cache)
            if _overlap_equal(cache, fresh):
                frame = pd.concat([cache.loc[~cache.index.isin(fresh.index)], fresh]).sort_index()
                mode = "incremental"
                logger.info("market %r: %r cache up to %s verified on the overlap; %d new row(s)", market,
                            ticker, last.date(), int((fresh.index > last).sum()))
            else:
                logger.info("market %r: %r closes on the overlap since %s differ from the cache "
                            "(history rescaled by a dividend or split); refetching from %s", market,
                            ticker, start.date(), full_start.date())
                frame, more = _download(download, ticker, full_start, end, yahoo, sleep, cache)
                used += more
                mode = "refetch"
    except _FetchFailed as err:
        used += err.attempts
        parquet, _ = cache_paths(cache_dir, ticker)
        if cache is None:
            raise DataError(
                f"market {market!r}: could not download ticker {ticker!r} from Yahoo {err.describe()} and there "
                f"is no cache at {str(parquet)!r}; for offline use configure the bundled source (source: bundled, "
                "dataset: sp500 | nasdaq | wti)"
            ) from None
        days = stale_days(cache.index[-1], now_ts)
        logger.warning("market %r: Yahoo download of %r failed %s; serving the cache up to %s, %d day(s) stale",
                       market, ticker, err.describe(), cache.index[-1].date(), days)
        return YahooFetch(cache, "yahoo-cache", "cache", used)

    frame = validate_frame(frame, market)  # a broken download raises here and never reaches the cache
    try:
        write_cache(cache_dir, ticker, frame, {"fetched_at": now_ts.isoformat(), "start": str(yahoo.start),
                                               "mode": mode})
    except OSError as err:
        logger.warning("market %r: could not write the cache of %r (%s); serving the download, the cache "
                       "stays as it was", market, ticker, err)
    return YahooFetch(frame, "yahoo", mode, used)
