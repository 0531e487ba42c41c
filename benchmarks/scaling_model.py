"""What a nightly retrain of many markets costs on N Dask workers (CPU) and on GPU workers, worked
out from measured per-market stage costs and per-task-step costs.

    python benchmarks/scaling_model.py                                  # 10,000 markets on 2, 8, 32, 128 workers
    python benchmarks/scaling_model.py --scale benchmarks/results/retrain_scale_dask.json --markets 10000 --workers 2 8 32 128

Reads (every figure printed comes from one of these or from a formula printed with it):

- ``--scale``: results of ``retrain_scale.py`` (default: ``retrain_scale_dask.json`` and
  ``retrain_scale_1000.json`` where present). Its Dask rows give, per stage, a least-squares fit
  ``seconds = a + b * markets`` measured on ``W`` workers; the one-market byte counts say what
  travels; ``prefect_task_run_s`` what one task run costs at the Prefect server.
- ``--logging``: results of ``retrain_scale.py --logging-only`` (log+register alone for up to
  10,000 cloned markets); where present its fit replaces the Dask rows' for the log+register stage.
- ``--steps-from``: per-task-step costs of the batched trainer on CPU (``mask_step.json`` and
  ``masks_speed_*.json`` rows with ``T`` masks and seconds per step).
- ``--gpu``: ``gpu_check.json``; its CUDA rows (``device_s_per_step`` against ``cpu_s_per_step``
  at ``T`` masks) scale the training term for GPU workers. Without a CUDA measurement the GPU rows
  are a bound: training taken as free, everything else as measured on CPU.

The model: ingest, features + regimes and mask training run as Dask tasks (one per market, one
training group per market): a stage measured at ``a + b m`` on ``W`` workers costs ``b W``
worker-seconds per market and ``a + b W M / N`` on ``N`` workers. Assembling, evaluating, logging
and registering run in the flow's own process (the driver) against the MLflow store: ``a + b M``
whatever ``N``. The Prefect server records every task run (4 per market): ``4 M r`` seconds, with
``r`` the measured wall time per empty task, is a floor under the Dask stages. Memory: a worker
holds one market at a time (its peak is the measured one); the driver holds every market
(``a + b M`` MiB from the measured peaks). Prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrain_scale import STAGES, line_fit, linearity

RESULTS = Path("benchmarks/results")
WORKER_STAGES = ("ingest", "features_regimes", "train_masks")
"""Stages whose work runs as Dask tasks; the others run in the flow's process."""
TASK_RUNS_PER_MARKET = 4
"""Prefect task runs per market on Dask: ingest, features, regimes, one training group."""


def _load(paths: list[Path]) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in paths if p.is_file()]


def step_costs(files: list[tuple[Path, dict]]) -> list[dict]:
    """Seconds per task-step of the batched trainer on CPU, one entry per row with ``T`` masks and a
    per-step time (``batched_s``, ``s_per_step`` or ``step_s``; ``*_ms`` in milliseconds)."""
    out = []
    for path, doc in files:
        for row in doc.get("rows", []):
            seconds = next((row[k] for k in ("batched_s", "s_per_step", "step_s") if k in row), None)
            if seconds is None:
                ms = next((row[k] for k in ("batched_ms", "ms_per_step", "step_ms") if k in row), None)
                seconds = None if ms is None else ms / 1000
            if seconds is not None and "T" in row:
                out.append({"file": str(path), "net": row.get("net", doc.get("net", "?")), "path": row.get("path", ""),
                            "T": row["T"], "batch": row.get("batch", "?"), "s_per_task_step": seconds / row["T"]})
    return out


def gpu_ratio(files: list[tuple[Path, dict]], tasks: float) -> dict | None:
    """The CUDA over CPU step-time ratio of a CUDA ``gpu_check`` run at the ``T`` nearest ``tasks``
    (masks trained together per market), else None."""
    for path, doc in files:
        rows = [r for r in doc.get("timings", []) if r.get("device_s_per_step")]
        if doc.get("device") == "cuda" and rows:
            r = min(rows, key=lambda r: (abs(r["T"] - tasks), r["T"]))
            return {"file": str(path), "device": doc.get("device_label", "cuda"), "T": r["T"],
                    "ratio": r["device_s_per_step"] / r["cpu_s_per_step"]}
    return None


def project(fit: dict, markets: int, workers: int, prefect_s: float | None, train_factor: float = 1.0) -> dict:
    """Seconds per stage for ``markets`` on ``workers`` (see the module docstring; a fitted intercept
    below 0, noise of small sizes, counts as 0), the Prefect floor, the total and the driver's peak
    memory."""
    w = fit["workers"]
    row: dict = {"workers": workers}
    for stage in STAGES:
        a, b = max(fit["stages"][stage]["intercept"], 0.0), fit["stages"][stage]["slope"]
        if stage in WORKER_STAGES:
            row[stage] = a + b * w * markets / workers * (train_factor if stage == "train_masks" else 1.0)
        else:
            row[stage] = a + b * markets
    dask = sum(row[s] for s in WORKER_STAGES)
    row["prefect_floor"] = TASK_RUNS_PER_MARKET * markets * prefect_s if prefect_s is not None else None
    row["total"] = max(dask, row["prefect_floor"] or 0.0) + sum(row[s] for s in STAGES if s not in WORKER_STAGES)
    mem = fit["driver_peak_rss_mb"]
    row["driver_rss_mb"] = mem["intercept"] + mem["slope"] * markets
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


def _hours(s: float | None) -> str:
    return "" if s is None else f"{s:,.0f} s ({s / 3600:.2f} h)" if s >= 3600 else f"{s:,.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=Path, nargs="+",
                    default=[RESULTS / "retrain_scale_dask.json", RESULTS / "retrain_scale_1000.json"])
    ap.add_argument("--logging", type=Path, default=RESULTS / "retrain_logging.json")
    ap.add_argument("--steps-from", type=Path, nargs="+",
                    default=[RESULTS / "mask_step.json", *sorted(RESULTS.glob("masks_speed_*.json"))])
    ap.add_argument("--gpu", type=Path, nargs="+", default=[RESULTS / "gpu_check.json"])
    ap.add_argument("--markets", type=int, default=10_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8, 32, 128])
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling_model.json")
    a = ap.parse_args()

    scale = _load(a.scale)
    rows = [r for _, doc in scale for r in doc["rows"] if r["runner"] == "dask"]
    if not rows:
        raise SystemExit(f"no Dask rows in {[str(p) for p in a.scale]}: run benchmarks/retrain_scale.py --runners dask")
    fit = linearity(rows)["dask"]
    logging = _load([a.logging])
    probe = logging[0][1]["logging_probe"] if logging else []
    if probe:
        fit["stages"]["log_register"] = line_fit([r["markets"] for r in probe], [r["log_register_s"] for r in probe])
    probes = [r["prefect_task_run_s"] for r in rows if "prefect_task_run_s" in r]
    prefect_s = max(probes) if probes else None
    travel = next((doc["travel_bytes_per_market"] for _, doc in scale if doc.get("travel_bytes_per_market")), None)
    worker_rss = max((max(r["worker_peak_rss_mb"]) for r in rows if r.get("worker_peak_rss_mb")), default=None)
    tasks_per_market = rows[-1]["tasks"] / rows[-1]["markets"]
    steps = step_costs(_load(a.steps_from))
    gpu = gpu_ratio(_load(a.gpu), tasks_per_market)

    print(f"Measured (Dask, {fit['workers']} workers; sizes {fit['sizes']} from {[str(p) for p, _ in scale]}"
          + (f"; log_register from {a.logging}, sizes {[r['markets'] for r in probe]}" if probe else "") + "):")
    print("| stage | runs on | a (s) | b (s per market) | worker-s per market (b W) |\n|---|---|---:|---:|---:|")
    for stage in STAGES:
        f = fit["stages"][stage]
        where = "Dask workers" if stage in WORKER_STAGES else "driver + MLflow store"
        per = f"{f['slope'] * fit['workers']:.3f}" if stage in WORKER_STAGES else ""
        print(f"| {stage} | {where} | {f['intercept']:.1f} | {f['slope']:.4f} | {per} |")
    print(f"Prefect: {prefect_s} s per empty task run (max over the Dask rows' probes), x{TASK_RUNS_PER_MARKET} per market"
          if prefect_s is not None else "Prefect: no probe measured (retrain_scale.py --prefect-probe): no floor")
    print(f"Memory: worker peak {worker_rss} MiB (max over workers and rows); driver {fit['driver_peak_rss_mb']['intercept']:.0f}"
          f" + {fit['driver_peak_rss_mb']['slope']:.2f} MiB per market")
    train_worker_s = fit["stages"]["train_masks"]["slope"] * fit["workers"]
    if steps:
        near = min(steps, key=lambda s: (abs(s["T"] - tasks_per_market), s["s_per_task_step"]))
        print(f"Per task-step on CPU ({len(steps)} rows; the cheapest at the T nearest {tasks_per_market:.0f} masks): "
              f"{near['s_per_task_step'] * 1000:.3f} ms ({near['net']} net {near['path']}, T={near['T']}, batch {near['batch']}, "
              f"{near['file']}); the retrain's training, {train_worker_s:.2f} worker-s per market, is "
              f"{tasks_per_market:.0f} tasks x {train_worker_s / tasks_per_market / near['s_per_task_step']:.0f} such "
              "task-steps (steps run, checkpoint scoring and calibration included)")
    if travel:
        print("Bytes per market through the scheduler:", ", ".join(f"{k} {v:,}" for k, v in travel.items()))

    formulas = {
        "worker stage": "a + b * W * M / N", "driver stage": "a + b * M", "a": "the fitted intercept, 0 if below",
        "prefect floor": f"{TASK_RUNS_PER_MARKET} * M * r", "total": "max(sum of worker stages, prefect floor) + driver stages",
        "driver memory": "a + b * M (MiB)",
        "gpu train": "train worker stage * (cuda s/step / cpu s/step at T)" if gpu else
                     "0: no CUDA measurement; the GPU rows are a bound with training free",
    }
    cpu = [project(fit, a.markets, n, prefect_s) for n in a.workers]
    gpu_rows = [project(fit, a.markets, n, prefect_s, gpu["ratio"] if gpu else 0.0) for n in a.workers]
    cols = ["workers", *STAGES, "prefect_floor", "total", "driver_rss_mb"]
    for title, table in ((f"{a.markets:,} markets, CPU Dask workers (1 thread each)", cpu),
                         (f"{a.markets:,} markets, GPU workers: " + (
                             f"training x{gpu['ratio']:.3f} ({gpu['device']}, T={gpu['T']}, {gpu['file']})" if gpu else
                             "NO GPU MEASUREMENT - training taken as free (a lower bound), the rest as on CPU"), gpu_rows)):
        print(f"\n{title}\n| " + " | ".join(cols) + " |\n|" + "---:|" * len(cols))
        for r in table:
            print("| " + " | ".join(_hours(r[c]) if c not in ("workers", "driver_rss_mb") else f"{r[c]:,}" for c in cols)
                  + " |")
    print("\nFormulas (M markets, N workers, W measured workers, r Prefect seconds per task run):",
          json.dumps(formulas, indent=1))
    a.out.write_text(json.dumps({
        "inputs": {"scale": [str(p) for p, _ in scale], "logging": str(a.logging) if probe else None,
                   "steps": sorted({s["file"] for s in steps}),
                   "gpu": gpu["file"] if gpu else None},
        "measured": {"fit": fit, "prefect_task_run_s": prefect_s, "worker_peak_rss_mb": worker_rss,
                     "travel_bytes_per_market": travel, "tasks_per_market": tasks_per_market,
                     "train_worker_s_per_market": train_worker_s, "step_costs": steps, "gpu": gpu},
        "formulas": formulas, "markets": a.markets, "cpu": cpu, "gpu": gpu_rows}, indent=1))


if __name__ == "__main__":
    main()
