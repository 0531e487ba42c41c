"""Yahoo source: cache, incremental update, rescaled history, retries, offline fallback.

No network: ``download`` is replaced by :class:`FakeYahoo`, which serves slices of a "true" history
in the shape ``yfinance.download`` 1.7 returns (MultiIndex columns ``("Close", "SPY")``, index named
``Date``). One test calls the real ``yfinance.download`` for a ticker that does not exist.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supsup_fin.config import DataConfig, MarketConfig, YahooConfig
from supsup_fin.data import load_prices
from supsup_fin.data._cache import cache_paths
from supsup_fin.data.yahoo import fetch_yahoo, flatten_yahoo, unreachable, yfinance_download
from supsup_fin.errors import DataError

TICKER = "SPY"
FIELDS = ["Close", "High", "Low", "Open", "Volume"]  # yfinance 1.7 order with auto_adjust=True


def truth(end: str = "2024-03-29", seed: int = 0) -> pd.DataFrame:
    """A clean daily OHLCV history from 2024-01-02."""
    idx = pd.bdate_range("2024-01-02", end, name="date").as_unit("ns")
    rng = np.random.default_rng(seed)
    close = 400 * np.exp(np.cumsum(rng.normal(0, 0.008, len(idx))))
    return pd.DataFrame({"open": close * 0.998, "high": close * 1.01, "low": close * 0.99, "close": close,
                         "volume": rng.integers(10**6, 10**7, len(idx)).astype(float)}, index=idx)


def yf_shape(frame: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """``frame`` as ``yfinance.download(ticker, auto_adjust=True)`` 1.7 returns it."""
    cols = pd.MultiIndex.from_product([FIELDS, [ticker]], names=["Price", "Ticker"])
    data = np.column_stack([frame[f.lower()].to_numpy() for f in FIELDS]) if len(frame) else np.empty((0, 5))
    out = pd.DataFrame(data, index=pd.DatetimeIndex(frame.index, name="Date"), columns=cols)
    return out.astype({(f, ticker): ("int64" if f == "Volume" else "float64") for f in FIELDS})


def yf_empty(ticker: str) -> pd.DataFrame:
    """What ``yfinance.download`` returns offline: no rows, MultiIndex columns."""
    cols = pd.MultiIndex.from_product([["Adj Close", *FIELDS], [ticker]], names=["Price", "Ticker"])
    return pd.DataFrame(index=pd.DatetimeIndex([], name="Date"), columns=cols)


class FakeYahoo:
    """Serves ``history`` sliced to ``[start, end)``; the first ``fail`` calls fail (``how``: ``empty``
    frame, ``timeout`` error, ``unreachable``: a host name that does not resolve)."""

    def __init__(self, history: pd.DataFrame, fail: int = 0, how: str = "empty") -> None:
        self.history, self.fail, self.how = history, fail, how
        self.calls: list[dict] = []

    def __call__(self, tickers: str, start: str, end: str, auto_adjust: bool, progress: bool, **kw) -> pd.DataFrame:
        self.calls.append({"tickers": tickers, "start": start, "end": end, "auto_adjust": auto_adjust,
                           "progress": progress, **kw})
        if self.fail > 0:
            self.fail -= 1
            if self.how == "unreachable":
                raise ConnectionError("Could not resolve host: query2.finance.yahoo.com")
            if self.how == "timeout":
                raise TimeoutError("Operation timed out after 30001 milliseconds")
            return yf_empty(tickers)
        h = self.history
        return yf_shape(h.loc[(h.index >= start) & (h.index < end)], tickers)


def data_cfg(retries: int = 2, **kw) -> DataConfig:
    return DataConfig(yahoo=YahooConfig(start=dt.date(2024, 1, 1), retries=retries, backoff_s=0.0, **kw))


MARKET = MarketConfig(name="spy", source="yahoo", ticker=TICKER)


def test_fresh_fetch_writes_cache(tmp_path: Path) -> None:
    hist = truth()
    fake = FakeYahoo(hist)
    lp = load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29 18:00", download=fake)
    assert lp.source == "yahoo" and lp.stale_days == 0 and lp.as_of == pd.Timestamp("2024-03-29")
    pd.testing.assert_frame_equal(lp.frame, hist, check_freq=False)
    (call,) = fake.calls
    assert call["start"] == "2024-01-01" and call["end"] == "2024-03-30"
    assert call["auto_adjust"] is True and call["progress"] is False
    parquet, sidecar = cache_paths(tmp_path, TICKER)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), hist, check_freq=False)
    meta = json.loads(sidecar.read_text())
    assert meta["fetched_at"].startswith("2024-03-29T18:00") and meta["rows"] == len(hist)
    assert sorted(p.name for p in parquet.parent.iterdir()) == ["SPY.json", "SPY.parquet"]  # no temp files


def test_incremental_update_appends_only_new_rows(tmp_path: Path) -> None:
    full = truth(end="2024-04-30")
    first = load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(full.loc[:"2024-03-29"]))
    # mark the cache: rows outside the overlap must survive untouched, proving nothing was refetched
    parquet, _ = cache_paths(tmp_path, TICKER)
    cached = pd.read_parquet(parquet)
    cached.loc[:"2024-02-29", "volume"] = 1.0
    cached.to_parquet(parquet)

    fake = FakeYahoo(full)
    lp = load_prices(MARKET, data_cfg(overlap_days=10), tmp_path, now="2024-04-30 23:00", download=fake)
    (call,) = fake.calls
    assert call["start"] == "2024-03-19"  # last cached 2024-03-29 minus 10 days
    assert lp.source == "yahoo" and lp.as_of == pd.Timestamp("2024-04-30")
    pd.testing.assert_frame_equal(lp.frame.loc[:"2024-03-29"], cached, check_freq=False)
    pd.testing.assert_frame_equal(lp.frame.loc["2024-04-01":], full.loc["2024-04-01":], check_freq=False)
    assert len(lp.frame) == len(full) and first.data_hash != lp.data_hash


def test_rescaled_history_triggers_full_refetch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supsup_fin.data")
    old = truth(end="2024-03-29")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(old))
    new = truth(end="2024-04-30")
    new[["open", "high", "low", "close"]] *= 0.7  # a split/dividend rescaled all adjusted history
    fake = FakeYahoo(new)
    lp = load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-30", download=fake)
    assert [c["start"] for c in fake.calls] == ["2024-03-19", "2024-01-01"]
    pd.testing.assert_frame_equal(lp.frame, new, check_freq=False)
    rets = lp.frame["close"].pct_change().abs()
    assert rets.max() < 0.05  # no false -30 % return at the seam
    assert "refetching" in caplog.text
    pd.testing.assert_frame_equal(pd.read_parquet(cache_paths(tmp_path, TICKER)[0]), new, check_freq=False)


def test_failed_refetch_serves_cache(tmp_path: Path) -> None:
    hist = truth(end="2024-03-29")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist))
    rescaled = FakeYahoo(hist * 0.7)
    calls: list[str] = []

    def flaky(**kw):  # the overlap comes back rescaled, then the network goes
        calls.append(kw["start"])
        return rescaled(**kw) if len(calls) == 1 else yf_empty(kw["tickers"])

    lp = load_prices(MARKET, data_cfg(retries=1), tmp_path, now="2024-04-01", download=flaky)
    assert calls == ["2024-03-19", "2024-01-01", "2024-01-01"]
    assert lp.source == "yahoo-cache" and lp.stale_days == 3
    pd.testing.assert_frame_equal(lp.frame, hist, check_freq=False)


def test_broken_download_leaves_cache_intact(tmp_path: Path) -> None:
    hist = truth(end="2024-03-29")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist))
    before = cache_paths(tmp_path, TICKER)[0].read_bytes()
    bad = truth(end="2024-04-30")
    bad.loc["2024-04-10", "close"] = -1.0
    with pytest.raises(DataError, match=r"'spy'.*'close'.*2024-04-10"):
        load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-30", download=FakeYahoo(bad))
    assert cache_paths(tmp_path, TICKER)[0].read_bytes() == before


def test_failures_serve_cache_with_staleness(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hist = truth(end="2024-03-29")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist))
    fake = FakeYahoo(hist, fail=10**6, how="timeout")
    lp = load_prices(MARKET, data_cfg(retries=2), tmp_path, now="2024-04-08 09:00", download=fake)
    assert lp.source == "yahoo-cache" and lp.stale_days == 10 and lp.as_of == pd.Timestamp("2024-03-29")
    assert len(fake.calls) == 3
    pd.testing.assert_frame_equal(lp.frame, hist, check_freq=False)
    (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "10 day(s) stale" in rec.getMessage() and "TimeoutError" in rec.getMessage()


def test_no_cache_and_failures_raise(tmp_path: Path) -> None:
    fake = FakeYahoo(truth(), fail=10**6, how="timeout")
    with pytest.raises(DataError) as err:
        load_prices(MARKET, data_cfg(retries=1), tmp_path, now="2024-03-29", download=fake)
    msg = str(err.value)
    assert "'SPY'" in msg and "'spy'" in msg and "after 2 attempt(s)" in msg and "TimeoutError" in msg
    assert "bundled" in msg
    assert len(fake.calls) == 2
    assert not cache_paths(tmp_path, TICKER)[0].exists()


UNREACHABLE = {
    "dns": (ConnectionError("Failed to perform, curl: (6) Could not resolve host: query2.finance.yahoo.com "
                            "(Domain name not found). See https://curl.se/libcurl/c/libcurl-errors.html first"),
            "Could not resolve host: query2.finance.yahoo.com"),
    "refused": (OSError("Failed to perform, curl: (7) Failed to connect to query2.finance.yahoo.com port 443 after "
                        "0 ms: Couldn't connect to server. See https://curl.se/libcurl/c/libcurl-errors.html"),
                "Failed to connect to query2.finance.yahoo.com port 443 after 0 ms: Couldn't connect to server"),
    "gaierror": (socket.gaierror(-3, "Temporary failure in name resolution"), "Temporary failure in name resolution"),
    "no-route": (OSError(113, "No route to host"), "No route to host"),
    "refused-socket": (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
}
TRANSIENT = {
    "timeout": TimeoutError("Operation timed out after 30001 milliseconds"),
    "curl-timeout": OSError("Failed to perform, curl: (28) Operation timed out after 30000 milliseconds"),
    "reset": ConnectionResetError(104, "Connection reset by peer"),
    "rate-limit": RuntimeError("Too Many Requests. Rate limited. Try after a while."),
}


@pytest.mark.parametrize("kind", list(UNREACHABLE))
def test_an_unreachable_yahoo_is_not_retried(tmp_path: Path, kind: str) -> None:
    error, reason = UNREACHABLE[kind]
    calls: list[str] = []
    sleeps: list[float] = []

    def down(**kw) -> pd.DataFrame:
        calls.append(kw["start"])
        raise error

    yc = YahooConfig(start=dt.date(2024, 1, 1), retries=3, backoff_s=2.0)
    with pytest.raises(DataError) as err:
        fetch_yahoo(TICKER, yc, tmp_path, market="spy", now="2024-03-29", download=down, sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []
    msg = str(err.value)
    assert "'spy'" in msg and "'SPY'" in msg and f"(unreachable, not retried: {type(error).__name__}" in msg, msg
    assert unreachable(error) == reason and "bundled" in msg


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_errors_are_retried(tmp_path: Path, kind: str) -> None:
    calls: list[str] = []

    def flaky(**kw) -> pd.DataFrame:
        calls.append(kw["start"])
        raise TRANSIENT[kind]

    assert unreachable(TRANSIENT[kind]) is None
    with pytest.raises(DataError, match=r"after 3 attempt\(s\)"):
        fetch_yahoo(TICKER, data_cfg(retries=2).yahoo, tmp_path, now="2024-03-29", download=flaky)
    assert len(calls) == 3


def test_an_unreachable_yahoo_serves_the_cache_at_once(tmp_path: Path) -> None:
    hist = truth(end="2024-03-29")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist))
    fake = FakeYahoo(hist, fail=10**6, how="unreachable")
    lp = load_prices(MARKET, data_cfg(retries=3), tmp_path, now="2024-04-01", download=fake)
    assert lp.source == "yahoo-cache" and lp.stale_days == 3 and len(fake.calls) == 1


def _offline_yfinance(tickers: str, **kw) -> pd.DataFrame:
    """What ``yfinance.download`` 1.7 does offline: it logs the failure and returns an empty frame."""
    log = logging.getLogger("yfinance")
    log.warning("Cookie/crumb fetch failed (DNSError), continuing without crumb")
    log.error(f"Failed to get ticker '{tickers}' reason: Failed to perform, curl: (6) Could not resolve host: "
              "query2.finance.yahoo.com (Domain name not found). See https://curl.se/libcurl/c/libcurl-errors.html "
              "first for more details.")
    log.error(f"['{tickers}']: possibly delisted; no timezone found")
    _offline_yfinance.kwargs = kw
    return yf_empty(tickers)


def test_yfinance_offline_is_a_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import yfinance

    monkeypatch.setattr(yfinance, "download", _offline_yfinance)
    with pytest.raises(ConnectionError, match=r"^Could not resolve host: query2\.finance\.yahoo\.com$"):
        yfinance_download(tickers="SPY", start="2024-01-01", end="2024-03-29", progress=False)
    assert _offline_yfinance.kwargs["threads"] is False  # its records are logged on this thread

    def unknown(tickers: str, **kw) -> pd.DataFrame:
        logging.getLogger("yfinance").error(f"['{tickers}']: possibly delisted; no timezone found")
        return yf_empty(tickers)

    monkeypatch.setattr(yfinance, "download", unknown)
    assert yfinance_download(tickers="NOPE", start="2024-01-01", end="2024-03-29").empty  # a failed attempt


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_and_backoff_honoured(tmp_path: Path, retries: int) -> None:
    fake = FakeYahoo(truth(), fail=10**6, how="empty")
    sleeps: list[float] = []
    yc = YahooConfig(start=dt.date(2024, 1, 1), retries=retries, backoff_s=0.5)
    with pytest.raises(DataError, match="empty response"):
        fetch_yahoo(TICKER, yc, tmp_path, now="2024-03-29", download=fake, sleep=sleeps.append)
    assert len(fake.calls) == retries + 1 and len(sleeps) == retries
    for i, s in enumerate(sleeps):
        assert 0.5 * 2**i <= s <= 1.25 * 0.5 * 2**i  # exponential with up to 25 % jitter


def test_transient_failures_then_success(tmp_path: Path) -> None:
    hist = truth()
    fake = FakeYahoo(hist, fail=2, how="empty")
    lp = load_prices(MARKET, data_cfg(retries=2), tmp_path, now="2024-03-29", download=fake)
    assert lp.source == "yahoo" and len(fake.calls) == 3
    pd.testing.assert_frame_equal(lp.frame, hist, check_freq=False)


def test_changed_start_refetches_everything(tmp_path: Path) -> None:
    hist = truth()
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist.loc["2024-02-01":]))
    moved = DataConfig(yahoo=YahooConfig(start=dt.date(2023, 12, 1), retries=0, backoff_s=0.0))
    fake = FakeYahoo(hist)
    lp = load_prices(MARKET, moved, tmp_path, now="2024-03-29", download=fake)
    assert [c["start"] for c in fake.calls] == ["2023-12-01"]
    pd.testing.assert_frame_equal(lp.frame, hist, check_freq=False)


def test_corrupt_cache_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parquet, _ = cache_paths(tmp_path, TICKER)
    parquet.parent.mkdir(parents=True)
    parquet.write_bytes(b"not parquet")
    fake = FakeYahoo(truth())
    lp = load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=fake)
    assert lp.source == "yahoo" and fake.calls[0]["start"] == "2024-01-01"
    assert "unreadable" in caplog.text


def test_flatten_multiindex_layouts() -> None:
    hist = truth().iloc[:5]
    raw = yf_shape(hist, "^GSPC")
    pd.testing.assert_frame_equal(flatten_yahoo(raw, "^GSPC"), hist, check_freq=False)
    swapped = raw.swaplevel(axis=1)  # group_by="ticker" layout
    pd.testing.assert_frame_equal(flatten_yahoo(swapped, "^GSPC"), hist, check_freq=False)
    flat = raw.droplevel("Ticker", axis=1)  # multi_level_index=False
    pd.testing.assert_frame_equal(flatten_yahoo(flat, "^GSPC"), hist, check_freq=False)
    both = pd.concat([yf_shape(hist * 2, "QQQ"), raw], axis=1)
    pd.testing.assert_frame_equal(flatten_yahoo(both, "^GSPC"), hist, check_freq=False)
    twice = pd.concat([raw, raw.iloc[[-1]] * 1.01])  # today's bar sent twice
    assert flatten_yahoo(twice, "^GSPC")["close"].iloc[-1] == hist["close"].iloc[-1] * 1.01
    assert len(flatten_yahoo(twice, "^GSPC")) == 5
    with pytest.raises(ValueError, match="empty"):
        flatten_yahoo(yf_empty("SPY"), "SPY")


def test_cache_file_names_are_distinct_and_safe(tmp_path: Path) -> None:
    names = {cache_paths(tmp_path, t)[0].name for t in ("^GSPC", "_GSPC", "BRK.B", "BRK-B", "EURUSD=X", "a/b")}
    assert len(names) == 6 and all("/" not in n and not n.startswith(".") for n in names)


def test_real_yfinance_offline_counts_as_failure(tmp_path: Path) -> None:
    """Offline Yahoo is unreachable; online this ticker does not exist (an empty frame): both fail."""
    market = MarketConfig(name="ghost", source="yahoo", ticker="SUPSUP-NO-SUCH-TICKER-0")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="SUPSUP-NO-SUCH-TICKER-0.*(unreachable, not retried|empty response).*bundled"):
        load_prices(market, data_cfg(retries=0, timeout_s=5.0), tmp_path, now="2024-03-29")
    assert time.perf_counter() - t0 < 30


def test_old_latest_row_warns_even_when_the_download_succeeds(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A delisted ticker keeps answering with its old history: say how old it is."""
    with caplog.at_level(logging.WARNING, logger="supsup_fin.data"):
        lp = load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-30", download=FakeYahoo(truth()))
    assert lp.source == "yahoo" and lp.stale_days == 32
    assert any("32 day(s) old" in r.getMessage() and "'SPY'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="supsup_fin.data"):
        load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-01", download=FakeYahoo(truth()))
    assert not [r for r in caplog.records if "old" in r.getMessage()]


def _served(*frames: pd.DataFrame):
    """A download answering with ``frames`` in turn (each ``yf_shape``d), recording each ``start``."""
    calls: list[str] = []

    def download(tickers: str, start: str, end: str, **kw) -> pd.DataFrame:
        calls.append(start)
        h = frames[min(len(calls), len(frames)) - 1]
        return yf_shape(h.loc[(h.index >= start) & (h.index < end)], tickers)

    download.calls = calls
    return download


def _close_only(download):
    def only(**kw) -> pd.DataFrame:
        out = download(**kw)
        return out.loc[:, out.columns.get_level_values(0) == "Close"]
    return only


@pytest.mark.parametrize(
    "partial",
    [lambda h: h.drop(h.index[[3, 40]]), lambda h: h.iloc[5:], lambda h: h.loc[:"2024-03-20"], None],
    ids=["rows-missing-inside", "rows-cut-at-start", "rows-cut-at-end", "columns-missing"],
)
def test_a_partial_download_is_a_failed_attempt_and_never_cached(tmp_path: Path, partial) -> None:
    hist = truth(end="2024-03-29")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist))
    parquet = cache_paths(tmp_path, TICKER)[0]
    before = parquet.read_bytes()
    new = truth(end="2024-04-30")
    new[["open", "high", "low", "close"]] *= 0.7  # rescaled: the next fetch replaces the whole history
    bad = _close_only(_served(new)) if partial is None else _served(partial(new))
    lp = load_prices(MARKET, data_cfg(retries=1), tmp_path, now="2024-04-30", download=bad)
    assert lp.source == "yahoo-cache" and lp.stale_days == 32  # the overlap, then twice a partial refetch
    assert parquet.read_bytes() == before
    good = _served(partial(new) if partial else new, new)
    lp = load_prices(MARKET, data_cfg(retries=1), tmp_path, now="2024-04-30", download=good)
    assert lp.source == "yahoo" and good.calls[-1] == "2024-01-01"
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), new, check_freq=False)


def test_an_incremental_update_fills_a_date_an_earlier_download_skipped(tmp_path: Path) -> None:
    full = truth(end="2024-04-30")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(full.loc[:"2024-03-29"]))
    skipped = full.drop(pd.Timestamp("2024-04-24"))
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-26", download=FakeYahoo(skipped.loc[:"2024-04-26"]))
    assert pd.Timestamp("2024-04-24") not in pd.read_parquet(cache_paths(tmp_path, TICKER)[0]).index
    lp = load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-30", download=FakeYahoo(full))
    pd.testing.assert_frame_equal(lp.frame, full, check_freq=False)


def test_a_failed_cache_write_serves_the_download_and_keeps_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    hist = truth(end="2024-04-30")
    load_prices(MARKET, data_cfg(), tmp_path, now="2024-03-29", download=FakeYahoo(hist.loc[:"2024-03-29"]))
    parquet = cache_paths(tmp_path, TICKER)[0]
    before = parquet.read_bytes()

    def full_disk(self, path, *args, **kw) -> None:
        Path(path).write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    lp = load_prices(MARKET, data_cfg(), tmp_path, now="2024-04-30", download=FakeYahoo(hist))
    assert lp.source == "yahoo" and lp.as_of == pd.Timestamp("2024-04-30")
    assert parquet.read_bytes() == before
    assert sorted(p.name for p in parquet.parent.iterdir()) == ["SPY.json", "SPY.parquet"]  # no temp file left
    assert "could not write the cache" in caplog.text and "No space left" in caplog.text
