"""The retrain-scale summary and the 10,000-market projection on constructed measurements with a
known answer (``benchmarks/retrain_scale.py``, ``benchmarks/scaling_model.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from retrain_scale import STAGES, linearity
from scaling_model import project, step_costs

COST = {"ingest": (10.0, 0.05), "features_regimes": (5.0, 0.4), "train_masks": (30.0, 2.0), "evaluate": (1.0, 0.3),
        "log_register": (8.0, 0.1)}
"""Per stage ``(a, b)``: seconds = a + b * markets on 2 workers."""


def _row(n: int) -> dict:
    stages = {f"{k}_s": a + b * n for k, (a, b) in COST.items()}
    return {"markets": n, "runner": "dask", "workers": 2, "tasks": 4 * n, "wall_s": sum(stages.values()),
            "peak_rss_mb": 700 + 1.5 * n, **stages}


def test_linearity_recovers_each_stage_line_and_the_per_market_ratio() -> None:
    lin = linearity([_row(20), _row(100), _row(1000)])["dask"]
    for stage in STAGES:
        assert (lin["stages"][stage]["intercept"], lin["stages"][stage]["slope"]) == pytest.approx(COST[stage])
    assert lin["slope"] == pytest.approx(sum(b for _, b in COST.values()))
    assert lin["driver_peak_rss_mb"] == {"intercept": 700.0, "slope": 1.5}
    wall = {n: _row(n)["wall_s"] / n for n in (100, 1000)}
    assert lin["reference_size"] == 100 and lin["ratio_largest_to_reference"] == pytest.approx(wall[1000] / wall[100], abs=1e-3)


def test_projection_splits_worker_and_driver_stages_and_keeps_the_prefect_floor() -> None:
    fit = linearity([_row(20), _row(100)])["dask"]
    m, n = 10_000, 8
    row = project(fit, m, n, prefect_s=0.05)
    assert row["train_masks"] == pytest.approx(30 + 2.0 * 2 * m / n)  # 2 measured workers' seconds over 8
    assert row["log_register"] == pytest.approx(8 + 0.1 * m)  # the driver's: the same on any N
    assert row["prefect_floor"] == pytest.approx(4 * m * 0.05)
    worker = sum(row[s] for s in ("ingest", "features_regimes", "train_masks"))
    assert row["total"] == pytest.approx(max(worker, row["prefect_floor"]) + row["evaluate"] + row["log_register"], abs=0.2)
    assert project(fit, m, n, prefect_s=None, train_factor=0.0)["train_masks"] == pytest.approx(30)
    fit["stages"]["evaluate"]["intercept"] = -4.0  # small sizes' noise: no negative fixed cost
    assert project(fit, m, n, prefect_s=None)["evaluate"] == pytest.approx(0.3 * m)
    assert row["driver_rss_mb"] == pytest.approx(700 + 1.5 * m)


def test_step_costs_read_seconds_and_milliseconds_per_step() -> None:
    files = [(Path("a.json"), {"rows": [{"net": "demo", "T": 8, "batch": "128", "batched_s": 0.008},
                                        {"T": 4, "ms_per_step": 2.0}, {"net": "no T", "batched_s": 1.0}]})]
    assert [s["s_per_task_step"] for s in step_costs(files)] == pytest.approx([0.001, 0.0005])
