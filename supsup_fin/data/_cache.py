"""Per-ticker parquet cache with a JSON sidecar, each written atomically (:mod:`supsup_fin._atomic`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from supsup_fin._atomic import atomic_file, atomic_write_bytes

logger = logging.getLogger(__name__)


def cache_paths(cache_dir: Path, ticker: str) -> tuple[Path, Path]:
    """``(parquet, sidecar)`` paths of a ticker's cache under ``cache_dir/yahoo``.

    The file stem is the ticker percent-encoded (``^GSPC`` -> ``%5EGSPC``, ``.`` -> ``%2E``), so
    distinct tickers never share a file.
    """
    stem = quote(ticker, safe="").replace(".", "%2E")
    folder = Path(cache_dir) / "yahoo"
    return folder / f"{stem}.parquet", folder / f"{stem}.json"


def write_cache(cache_dir: Path, ticker: str, frame: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Write a ticker's frame and sidecar (``meta`` plus ticker, rows, first and last date)."""
    parquet, sidecar = cache_paths(cache_dir, ticker)
    with atomic_file(parquet) as tmp:
        frame.to_parquet(tmp)
    side = {
        "ticker": ticker,
        "rows": len(frame),
        "first_date": frame.index[0].strftime("%Y-%m-%d") if len(frame) else None,
        "last_date": frame.index[-1].strftime("%Y-%m-%d") if len(frame) else None,
        **meta,
    }
    atomic_write_bytes(sidecar, json.dumps(side, indent=2, sort_keys=True).encode("utf-8"))
    logger.debug("cached %d rows of %r at %s", len(frame), ticker, parquet)
    return parquet


def read_cache(cache_dir: Path, ticker: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The cached frame and sidecar of a ticker, or ``None`` when absent or unreadable."""
    parquet, sidecar = cache_paths(cache_dir, ticker)
    if not parquet.is_file():
        return None
    try:
        frame = pd.read_parquet(parquet)
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except (OSError, ValueError) as err:
        logger.warning("cache of %r at %s is unreadable (%s); ignoring it", ticker, parquet, err)
        return None
    if not isinstance(frame.index, pd.DatetimeIndex) or "close" not in frame.columns or frame.empty:
        logger.warning("cache of %r at %s is not a prices frame; ignoring it", ticker, parquet)
        return None
    frame.index = pd.DatetimeIndex(frame.index, name="date").as_unit("ns")
    return frame, meta
