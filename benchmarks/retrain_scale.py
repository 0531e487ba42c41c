"""Retrain time for many synthetic markets (10 years of daily data each, 3 regimes, no BIC search),
in one process (threads) and on a local Dask cluster.

    python benchmarks/retrain_scale.py [--markets 25 50 100] [--runners threads dask] [--workers 2]
    python benchmarks/retrain_scale.py --quick          # 2 and 4 markets, 30 steps: a smoke run

Each run uses a fresh workspace (own MLflow store); prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from supsup_fin.data.synthetic import generate_synthetic

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def market_files(n: int, root: Path, seed: int = 0) -> list[dict]:
    """``n`` synthetic markets (alternating presets), 2009-2018 business days, as CSV files."""
    markets = []
    for preset, count in (("easy", (n + 1) // 2), ("hard", n // 2)):
        if not count:
            continue
        draw = generate_synthetic(preset, n_markets=count, seed=seed, start="2009-01-01", end="2018-12-31")
        for name, frame in draw.prices.items():
            path = root / f"{name}.csv"
            frame.reset_index().to_csv(path, index=False)
            markets.append({"name": name, "source": "file", "path": str(path), "asset_class": "synthetic"})
    return markets


def bench_config(markets: list[dict], runner: str, workers: int, steps: int | None, threads: int = 1,
                 groups: str = "all") -> dict:
    tree = {
        "name": "bench", "markets": markets,
        "segments": {"train": [None, "2014-12-31"], "valid": ["2015-01-01", "2016-12-31"], "test": ["2017-01-01", None]},
        "regimes": {"n_states": 3, "n_restarts": 1},
        "tracking": {"experiment": "bench", "model_name": "bench", "carry_over": False},
        "runtime": {"threads": threads, "task_runner": runner, "n_workers": workers, "threads_per_worker": 1,
                    "max_workers": 2, "training_groups": groups},
    }
    if steps:
        tree["training"] = {"steps": steps}
    return tree


def one(n: int, runner: str, workers: int, steps: int | None, threads: int = 1, groups: str = "all") -> dict:
    from pipelines.retrain import run_retrain
    from supsup_fin.config import config_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = config_from_dict(bench_config(market_files(n, root), runner, workers, steps, threads, groups))
        t0 = time.perf_counter()
        summary = run_retrain(cfg, root / "ws")
        wall = time.perf_counter() - t0
    return {"markets": n, "runner": runner, "workers": workers if runner == "dask" else 1,
            "torch_threads": threads, "groups": "market" if runner == "dask" else groups,
            "tasks": len(summary["tasks"]), "wall_s": round(wall, 1), "per_market_s": round(wall / n, 2),
            **{f"{k}_s": v for k, v in summary["timings_s"].items()}}


def main() -> None:
    from pipelines import prefect_defaults

    prefect_defaults()  # before anything imports Prefect (it reads its settings then)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markets", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--runners", nargs="+", default=["threads", "dask"], choices=["threads", "dask"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's 300)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (runtime.threads; Dask workers always use 1 each)")
    ap.add_argument("--groups", choices=["all", "market"], default="all",
                    help="one process: one batched training group, or one per market (Dask: always market)")
    ap.add_argument("--quick", action="store_true", help="2 and 4 markets, 30 steps")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/retrain_scale.json"))
    a = ap.parse_args()
    if a.quick:
        a.markets, a.steps = [2, 4], 30
    rows = []
    for n in a.markets:
        for runner in a.runners:
            rows.append(one(n, runner, a.workers, a.steps, a.threads if runner == "threads" else 1, a.groups))
            print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                                 "python": sys.version.split()[0], "args": vars(a) | {"out": str(a.out)}, "rows": rows},
                                indent=1))


if __name__ == "__main__":
    main()
