"""Data and regime commands: ``ingest`` and ``regimes``."""

from __future__ import annotations
