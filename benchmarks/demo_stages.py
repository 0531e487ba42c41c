"""Time `supsup-fin demo` end to end and by stage, as a user runs it (fresh workspace each run).

    python benchmarks/demo_stages.py [--runs 2] [--out benchmarks/results/demo_stages.json]

Prints a table (one row per run: total wall time, the flow's stage times, the registry forecast)
and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ["ingest", "features_regimes", "train_masks", "evaluate", "log_register"]


def one_run() -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SUPSUP_FIN_HOME": home}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "supsup_fin.cli", "demo", "--json"], env=env,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    out = json.loads(proc.stdout)
    flow_total = sum(out["timings_s"].values())
    return {"wall_s": round(wall, 2), "demo_elapsed_s": out["elapsed_s"], **out["timings_s"],
            "flow_stages_s": round(flow_total, 2),
            "other_s": round(out["elapsed_s"] - flow_total, 2),  # Prefect server start-up, forecast from the registry
            "n_tasks": len(out["tasks"]), "aliases": out["registered_model"]["aliases"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_stages.json"))
    args = ap.parse_args()
    rows = [one_run() for _ in range(args.runs)]
    cols = ["wall_s", "demo_elapsed_s", *STAGES, "other_s", "n_tasks"]
    print(" | ".join(f"{c:>16}" for c in ["run", *cols]))
    for i, r in enumerate(rows):
        print(" | ".join(f"{v:>16}" for v in [i, *[r[c] for c in cols]]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
                                    "runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
