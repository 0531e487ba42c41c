"""Market data: sources (yahoo, bundled, synthetic, file), the prices-frame contract, health checks,
and the true-parameter oracle of the synthetic source.

>>> lp = load_prices(market_cfg, cfg.data, cache_dir)   # doctest: +SKIP
>>> lp.frame.columns.tolist(), lp.source, lp.stale_days  # doctest: +SKIP
"""

from __future__ import annotations

from supsup_fin.data.bundled import BUNDLED_DATASETS
from supsup_fin.data.frame import PRICE_COLUMNS, frame_hash, validate_frame
from supsup_fin.data.health import Finding, HealthReport, check_health
from supsup_fin.data.load import LoadedPrices, load_prices
from supsup_fin.data.oracle import oracle_filter, oracle_proba, oracle_smooth
from supsup_fin.data.synthetic import (
    SYNTHETIC_PRESETS,
    SyntheticMarkets,
    SyntheticPreset,
    generate_synthetic,
)

__all__ = [
    "BUNDLED_DATASETS",
    "PRICE_COLUMNS",
    "SYNTHETIC_PRESETS",
    "Finding",
    "HealthReport",
    "LoadedPrices",
    "SyntheticMarkets",
    "SyntheticPreset",
    "check_health",
    "frame_hash",
    "generate_synthetic",
    "load_prices",
    "oracle_filter",
    "oracle_proba",
    "oracle_smooth",
    "validate_frame",
]
