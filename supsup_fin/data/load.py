"""One entry point for every source: ``source -> validate_frame -> check_health -> LoadedPrices``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from supsup_fin.config import DataConfig, MarketConfig
from supsup_fin.data.bundled import load_bundled
from supsup_fin.data.files import file_origin, read_price_file
from supsup_fin.data.frame import frame_hash, validate_frame
from supsup_fin.data.health import HealthReport, check_health
from supsup_fin.data.synthetic import generate_synthetic
from supsup_fin.data.yahoo import Download, fetch_yahoo, stale_days

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("yahoo", "yahoo-cache", "bundled", "synthetic", "file")


@dataclass(frozen=True, eq=False)
class LoadedPrices:
    """A market's validated, repaired prices and where they came from.

    Attributes
    ----------
    market : str
        The market's configured name.
    frame : DataFrame, shape (n_days, k)
        The prices frame after validation and health repairs.
    source : str
        ``"yahoo"``, ``"yahoo-cache"`` (download failed, cache served), ``"bundled"``,
        ``"synthetic"`` or ``"file"``.
    as_of : Timestamp
        Last date of ``frame``.
    stale_days : int
        Calendar days from ``as_of`` to ``now`` for ``yahoo`` / ``yahoo-cache``; 0 for offline sources.
    health : HealthReport
        What the content checks found and did.
    data_hash : str
        :func:`frame_hash` of ``frame``.
    """

    market: str
    frame: pd.DataFrame
    source: str
    as_of: pd.Timestamp
    stale_days: int
    health: HealthReport
    data_hash: str


def load_prices(
    market: MarketConfig,
    data: DataConfig,
    cache_dir: Path,
    *,
    now: pd.Timestamp | str | None = None,
    download: Download | None = None,
    sleep: Callable[[float], None] | None = None,
) -> LoadedPrices:
    """Load one market's prices from its configured source, validated and health-checked.

    Parameters
    ----------
    market : MarketConfig
        Which source and locator (ticker, dataset, path; ``seed`` for synthetic); ``timezone``
        converts tz-aware timestamps before their calendar date is taken and ``close`` picks a
        file's close column (the rules are in :func:`~supsup_fin.data.frame.validate_frame`).
    data : DataConfig
        Health-check policies and Yahoo settings.
    cache_dir : Path
        Root of the download cache (Yahoo only).
    now : Timestamp, optional
        The current time, for the Yahoo download end and ``stale_days`` (default: now).
    download : callable, optional
        Replaces ``yfinance.download`` (see :data:`supsup_fin.data.yahoo.Download`).
    sleep : callable, optional
        Replaces ``time.sleep`` for the Yahoo retry backoff.

    Returns
    -------
    LoadedPrices

    Raises
    ------
    DataError
        The source cannot deliver, the frame is structurally broken (every fault in one error; a
        file's names its path), or a check set to ``error`` fired.
    """
    days = 0
    if market.source == "yahoo":
        got = fetch_yahoo(str(market.ticker), data.yahoo, Path(cache_dir), market=market.name, now=now,
                          download=download, sleep=sleep or time.sleep)
        raw, source = got.frame, got.source
    elif market.source == "bundled":
        raw, source = load_bundled(str(market.dataset)), "bundled"
    elif market.source == "synthetic":
        draw = generate_synthetic(str(market.dataset), 1, seed=market.seed)
        raw, source = next(iter(draw.prices.values())), "synthetic"
    else:
        raw, source = read_price_file(str(market.path), market.name), "file"

    origin = file_origin(str(market.path)) if source == "file" else None
    frame = validate_frame(raw, market.name, timezone=market.timezone, close=market.close, origin=origin)
    frame, report = check_health(frame, market.name, data)
    as_of = frame.index[-1]
    if source in ("yahoo", "yahoo-cache"):
        days = stale_days(as_of, now)
        if source == "yahoo" and days > data.yahoo.stale_warn_days:
            logger.warning("market %r: Yahoo's latest row for %r is %s, %d day(s) old (more than "
                           "data.yahoo.stale_warn_days=%d): delisted ticker or a feed delay?", market.name,
                           market.ticker, as_of.date(), days, data.yahoo.stale_warn_days)
    logger.info("market %r: %d rows from %s, as of %s (%d day(s) stale), %d health finding(s)", market.name,
                len(frame), source, as_of.date(), days, len(report.findings))
    return LoadedPrices(market.name, frame, source, as_of, days, report, frame_hash(frame))
