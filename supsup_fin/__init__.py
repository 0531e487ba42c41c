"""supsup-fin: market-regime forecasting with Supermasks in Superposition."""

from __future__ import annotations

__version__ = "0.1.0"
