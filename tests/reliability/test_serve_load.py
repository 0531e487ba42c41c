"""The served champion under brief load (``benchmarks/serve_load.py``): 8 clients for 15 s against
``supsup-fin serve --workers 2``, 10 % malformed payloads.

No valid request fails, every malformed one gets a 400, the server keeps serving, and its memory
stays flat. The full run (60 s, workers 1 and 2): ``python benchmarks/serve_load.py``.

Reproduce: ``pytest tests/reliability/test_serve_load.py -m slow -q -s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))


@pytest.mark.slow
def test_under_load_no_valid_request_fails_and_memory_stays_flat(tmp_path: Path) -> None:
    from serve_load import main

    (row,) = main(["--seconds", "15", "--clients", "8", "--workers", "2", "--out", str(tmp_path / "load.json")])
    assert row["requests"] > 100 and row["malformed"] > 0, row
    assert row["errors"] == 0 and row["malformed_400"] == row["malformed"], row
    assert row["served_after"] and row["processes"] >= 3, row  # uvicorn and its 2 workers
    assert row["rss_end_mb"] - row["rss_start_mb"] < max(50.0, 0.1 * row["rss_start_mb"]), row
