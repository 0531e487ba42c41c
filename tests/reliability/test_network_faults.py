"""Network faults injected into the Yahoo source, one load per business day, as a daily pipeline runs.

A seeded fake of ``yfinance.download`` answers each call with the true history or a fault: a
connection error, a timeout, Yahoo's rate-limit error, an empty frame, or a partial one (rows cut at
the end, at the start or in the middle; columns missing). Now and then the true history is rescaled
(a dividend), which forces a full refetch, and now and then the cache write fails half-way.

Expected: failed attempts are retried with backoff (the sleep is injected: no test time spent), except
a connection error (a host name that does not resolve: Yahoo is unreachable), which ends the load's
downloads at once; when every attempt fails the cache is served with its staleness (``source == "yahoo-cache"``,
``stale_days``); with no cache the load raises a :class:`DataError` naming market and ticker; and
the cache never holds a partial download: after every load it has every column, no hole, every date
it had before, and the values of one version of the true history. The probe prints its figures.

Reproduce: ``pytest tests/reliability/test_network_faults.py -q -s`` (``-m slow``: 100 seeded runs).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from yfinance.exceptions import YFRateLimitError

from conftest import SEED
from data.test_data_yahoo import truth, yf_empty, yf_shape
from supsup_fin.config import DataConfig, MarketConfig, YahooConfig
from supsup_fin.data import load_prices
from supsup_fin.data._cache import cache_paths, read_cache
from supsup_fin.errors import DataError

TICKER = "SPY"
MARKET = MarketConfig(name="spy", source="yahoo", ticker=TICKER)
DATA = DataConfig(yahoo=YahooConfig(start=dt.date(2024, 1, 1), retries=2, backoff_s=1.0, overlap_days=10))
UNREACHABLE = ("connection", "outage")
"""Faults that say Yahoo cannot be reached (the host name does not resolve): never retried."""
FAULTS = {"ok": 0.46, "connection": 0.08, "timeout": 0.08, "rate-limit": 0.08, "empty": 0.08,
          "rows-end": 0.06, "rows-start": 0.06, "rows-middle": 0.05, "columns": 0.05}


class FaultyYahoo:
    """``yfinance.download`` over a moving true history, failing at random (seeded)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.history = truth(end="2024-06-28")
        self.versions = [self.history]
        self.now = self.history.index[0]
        self.cached = False  # partial frames only once a cache exists: without one they cannot be told apart
        self.down = False  # a whole day's outage: every call fails
        self.injected: Counter = Counter()
        self.kinds: list[str] = []  # every call's kind, in order

    def visible(self) -> pd.DataFrame:
        return self.history.loc[self.history.index <= self.now]

    def rescale(self) -> None:
        """A dividend: Yahoo's adjusted history before today shrinks by 2%."""
        h = self.history.copy()
        past = h.index <= self.now
        h.loc[past, ["open", "high", "low", "close"]] *= 0.98
        self.history = h
        self.versions.append(h)

    def __call__(self, tickers: str, start: str, end: str, **kw: object) -> pd.DataFrame:
        kind = str(self.rng.choice(list(FAULTS), p=list(FAULTS.values())))
        if not self.cached and kind.startswith(("rows", "columns")):
            kind = "ok"
        kind = "outage" if self.down else kind
        self.injected[kind] += 1
        self.kinds.append(kind)
        h = self.visible()
        h = h.loc[(h.index >= start) & (h.index < end)]
        cut = int(self.rng.integers(1, 4))
        if kind in ("connection", "outage"):
            raise ConnectionError("Failed to perform, curl: (6) Could not resolve host: query2.finance.yahoo.com")
        if kind == "timeout":
            raise TimeoutError("Operation timed out after 30001 milliseconds")
        if kind == "rate-limit":
            raise YFRateLimitError()
        if kind == "empty":
            return yf_empty(tickers)
        if kind == "rows-end":
            h = h.iloc[:-cut]
        elif kind == "rows-start":
            h = h.iloc[cut:]
        elif kind == "rows-middle" and len(h) > 2:
            h = h.drop(h.index[self.rng.choice(np.arange(1, len(h) - 1), min(cut, len(h) - 2), replace=False)])
        out = yf_shape(h, tickers)
        return out.loc[:, out.columns.get_level_values(0) == "Close"] if kind == "columns" else out


def _full_disk(self: pd.DataFrame, path: object, *args: object, **kw: object) -> None:
    """``DataFrame.to_parquet`` on a full disk: half a file, then an error."""
    Path(str(path)).write_bytes(b"PAR1 half a file")
    raise OSError(28, "No space left on device")


def _check_cache(cache: pd.DataFrame, before: pd.DataFrame | None, fake: FaultyYahoo) -> tuple[int, int, set]:
    """Assert the cache has every column, the true history's start and one version's values.

    Returns the rows lost since ``before`` (a cached date now missing), the cached last date a later
    download withdrew, and the dates missing inside the cache (a download skipped them after the
    cache's end: no calendar tells them from holidays).
    """
    assert list(cache.columns) == ["open", "high", "low", "close", "volume"]
    full = fake.history.index
    assert cache.index[0] == full[0], "history cut at the start"
    assert any(np.allclose(cache.to_numpy(), v.loc[cache.index].to_numpy(), rtol=1e-12) for v in fake.versions)
    holes = set(full[(full > cache.index[0]) & (full < cache.index[-1]) & ~full.isin(cache.index)])
    lost = set() if before is None else set(before.index[~before.index.isin(cache.index)])
    withdrawn = {d for d in lost if d == before.index[-1]}
    return len(lost - withdrawn), len(withdrawn), holes


def _ended_once_unreachable(kinds: list[str], now: pd.Timestamp) -> bool:
    """Whether one load's download calls (their fault kinds, in order) met an unreachable Yahoo; it must
    have been the last call."""
    met = [i for i, k in enumerate(kinds) if k in UNREACHABLE]
    assert met in ([], [len(kinds) - 1]), f"{now.date()}: a download retried after Yahoo was unreachable: {kinds}"
    return bool(met)


def probe_network(seed: int, folder: Path, days: int = 60) -> Counter:
    """One load per business day for ``days`` days under injected faults; the figures."""
    rng = np.random.default_rng(seed)
    fake = FaultyYahoo(rng)
    sleeps: list[float] = []
    figures: Counter = Counter()
    parquet, _ = cache_paths(folder, TICKER)
    holes: set = set()
    for now in fake.history.index[20:20 + days]:
        fake.now = now
        if rng.random() < 0.04:
            fake.rescale()
        before = read_cache(folder, TICKER)
        before_frame = None if before is None else before[0]
        fake.cached = before is not None
        fake.down = now == fake.history.index[20] or rng.random() < 0.03  # the first day is down
        calls = sum(fake.injected.values())
        broken_write = rng.random() < 0.05
        with pytest.MonkeyPatch.context() as mp:
            if broken_write:
                mp.setattr(pd.DataFrame, "to_parquet", _full_disk)
            try:
                lp = load_prices(MARKET, DATA, folder, now=now, download=fake, sleep=sleeps.append)
            except DataError as err:
                figures["loads ended by an unreachable Yahoo"] += _ended_once_unreachable(fake.kinds[calls:], now)
                assert before is None, f"{now.date()}: an error with a cache to serve: {err}"
                assert "'spy'" in str(err) and "'SPY'" in str(err) and "no cache" in str(err)
                figures["errors (no cache yet)"] += 1
                continue
        figures["loads ended by an unreachable Yahoo"] += _ended_once_unreachable(fake.kinds[calls:], now)
        after = read_cache(folder, TICKER)
        assert not [p for p in parquet.parent.iterdir() if p.name.endswith(".tmp")], "a temporary file left"
        if lp.source == "yahoo-cache":
            assert before is not None
            pd.testing.assert_frame_equal(after[0], before_frame)
            assert lp.stale_days == (now - before_frame.index[-1]).days
            figures["cache fallbacks"] += 1
            figures["stale days served"] += lp.stale_days
        else:
            assert lp.source == "yahoo"
            figures["downloads served"] += 1
            figures["cache writes failed (cache kept)"] += broken_write
            if broken_write:
                assert before is None and after is None or after[0].equals(before_frame)
        if after is not None:
            lost, withdrawn, now_holes = _check_cache(after[0], before_frame, fake)
            assert lost == 0, f"{now.date()}: {lost} cached row(s) lost"
            figures["rows lost"] += lost
            figures["last cached row withdrawn by a refetch"] += withdrawn
            figures["dates skipped after the cache's end"] += len(now_holes - holes)
            figures["skipped dates filled later"] += len(holes - now_holes)
            holes = now_holes
            figures["rows behind at the end of a load"] += int((fake.visible().index > after[0].index[-1]).sum())
        figures["download calls"] += sum(fake.injected.values()) - calls
    figures["skipped dates left at the end"] = len(holes)
    figures["retries (backoff sleeps)"] = len(sleeps)
    figures["rescales"] = len(fake.versions) - 1
    b = DATA.yahoo.backoff_s
    assert all(b <= s <= 1.25 * b * 2 ** (DATA.yahoo.retries - 1) for s in sleeps)
    for kind, n in fake.injected.items():
        figures[f"injected {kind}"] = n
    return figures


def _report(figures: Counter, what: str) -> None:
    print(f"\n{what}" + "".join(f"\n  {k:34s} {v}" for k, v in sorted(figures.items())))


def test_network_faults_retry_fall_back_and_never_cache_a_partial_download(tmp_path: Path) -> None:
    figures = probe_network(SEED, tmp_path)
    _report(figures, f"network faults, seed SUPSUP_TEST_SEED={SEED}, 60 daily loads")
    assert figures["rows lost"] == 0
    assert figures["cache fallbacks"] > 0 and figures["retries (backoff sleeps)"] > 0
    assert figures["errors (no cache yet)"] >= 1
    assert figures["loads ended by an unreachable Yahoo"] > 0
    assert all(figures[f"injected {k}"] > 0 for k in FAULTS)


@pytest.mark.slow
def test_network_faults_many_seeds(tmp_path: Path) -> None:
    total: Counter = Counter()
    for seed in range(100):
        total.update(probe_network(SEED * 1000 + seed, tmp_path / str(seed), days=100))  # keeps the zeros
    _report(total, "network faults, 100 seeded runs of 100 daily loads")
    assert total["rows lost"] == 0
