"""In-process latency of the gated forecaster: one market-day, and N markets at once.

    python benchmarks/forecast_latency.py [--markets 100] [--reps 200]
    python benchmarks/forecast_latency.py --quick       # 4 markets, 50 reps

Builds the forecaster with the library (no MLflow, no Prefect) on synthetic 10-year markets
(training steps do not change inference cost, so training is short), then times
``RegimeGatedForecaster.predict`` on each market's latest rows: one market-day in every gate
mode (wall clock, and the thread's CPU time, which a busy shared machine inflates less), then
all markets in a loop in the default mode. Writes JSON to --out, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from retrain_scale import bench_config, market_files

from supsup_fin.config import config_from_dict
from supsup_fin.data import load_prices
from supsup_fin.forecaster.prepare import build_features, fit_regimes
from supsup_fin.forecaster.mask_tasks import make_tasks
from supsup_fin.forecaster.training import build_forecaster, train_tasks
from supsup_fin.gate_modes import GATE_MODES


def build(n: int, tmp: Path):
    cfg = config_from_dict(bench_config(market_files(n, tmp), "threads", 1, steps=20))
    loaded = {m.name: load_prices(m, cfg.data, tmp) for m in cfg.markets}
    fs = {k: build_features(k, lp.frame, cfg) for k, lp in loaded.items()}
    rf = {k: fit_regimes(k, lp.frame, cfg.regimes, cfg.segments) for k, lp in loaded.items()}
    net, bank = train_tasks(make_tasks(fs, rf, cfg), cfg)
    return build_forecaster(fs, rf, net, bank, cfg), {k: lp.frame for k, lp in loaded.items()}


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def time_one(fc, market: str, window, mode: str, reps: int) -> dict:
    """Wall-clock percentiles of ``reps`` single forecasts, and the median CPU time of the thread."""
    for _ in range(5):
        fc.predict(market, window, mode)
    wall, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.thread_time(), time.perf_counter()
        fc.predict(market, window, mode)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return {**pct(wall), "cpu_p50_ms": round(float(np.percentile(cpu, 50)) * 1000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markets", type=int, default=100)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/forecast_latency.json"))
    a = ap.parse_args()
    if a.quick:
        a.markets, a.reps = 4, 50
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        fc, prices = build(a.markets, Path(tmp))
    windows = {m: p.iloc[-fc.min_rows:] for m, p in prices.items()}
    first = min(windows)
    load_before = os.getloadavg()
    rows = [{"case": "one market-day", "mode": mode, "markets": 1,
             **time_one(fc, first, windows[first], mode, a.reps)} for mode in GATE_MODES]
    batch = []
    for _ in range(max(a.reps // 10, 5)):
        t0 = time.perf_counter()
        for m, w in windows.items():
            fc.predict(m, w)
        batch.append(time.perf_counter() - t0)
    rows.append({"case": f"{a.markets} markets at once", "mode": fc.mode, "markets": a.markets, **pct(batch),
                 "per_market_p50_ms": round(float(np.percentile(batch, 50)) * 1000 / a.markets, 3)})
    for r in rows:
        print(json.dumps(r))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"cpus": os.cpu_count(), "torch_threads": 1, "min_rows": fc.min_rows,
                                 "load_avg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                                 "args": vars(a) | {"out": str(a.out)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
