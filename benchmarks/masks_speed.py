"""Batched supermask training vs a per-task loop, against the machine's own roofline.

    python benchmarks/masks_speed.py [--quick] [--out benchmarks/results/masks_speed.json]

For each network (the demo's 64→256→256→3 and 64→1024→1024→10), T ∈ {1, 8, 32, 128} masks and
two batch settings (mini-batches of 128 rows per task; full batch, 1,400 rows per task), it times
one training step of

- **batched**: ``train_masks`` on all T tasks at once (one forward and backward per step);
- **loop**: the reference, ``train_masks`` on one task at a time (the same layer code, each task
  with its own optimizer, as the SupSup reference trainer does). Its step time for T tasks is the
  sum of the per-task step times; at T > 4 four tasks are timed and the mean is scaled by T
  (every task has the same shapes and work).

Step times come from the trainer's own progress callback (steps 10 → 30, after 10 warm-up
steps), so set-up (validation, hashing, bit packing) is not counted. Each configuration runs in a
fresh subprocess (peak RSS is per configuration); the loop and the batched trainer alternate
``--rounds`` times and the fastest round of each is kept (the machine is shared, so the fastest
is the least disturbed).

The same run measures the fp32 GEMM peak (best of 2048² matmuls) and the memory bandwidth (best
of 256 MiB copies). Per step: FLOPs = T·B·(2Σ|W_l| forward + 2Σ|W_l| weight gradients +
2Σ_{l>0}|W_l| input gradients); bytes = the unavoidable traffic of the mask parameters, 24 bytes
per weight per task (read scores, read and write the momentum buffer, write scores, write and
read their gradient) plus 12 bytes per activation (write, read forward, read backward). Roofline
bound = max(FLOPs ÷ peak, bytes ÷ bandwidth); the table gives the measured step ÷ bound.

Accuracy parity: both trainers are run to the end (300 steps on the demo net for T ≤ 32; 150
on the wide net at T = 8) on synthetic 64-d Gaussian-class tasks and test accuracy is compared (the trainer's group independence makes the
bits identical, which is also checked). Storage: bits per weight per mask and 100 masks of the
64→512→512→10 net (300,032 weights) as saved on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supsup_fin.masks import FrozenNet, train_masks

NETS = {"demo": (64, 256, 256, 3), "wide": (64, 1024, 1024, 10)}
FULL_ROWS = 1400


def synthetic_tasks(sizes, n_tasks: int, rows: int, seed: int = 0, test: int = 0):
    """Gaussian-class tasks: task t has its own class centres in ``sizes[0]`` dimensions."""
    out = {}
    for t in range(n_tasks):
        rng = np.random.default_rng(seed * 100_003 + t)
        centers = rng.normal(size=(sizes[-1], sizes[0])) * 0.6
        y = rng.integers(0, sizes[-1], rows + test)
        x = (centers[y] + rng.normal(size=(rows + test, sizes[0]))).astype(np.float32)
        out[f"task{t:03d}"] = (x[:rows], y[:rows], x[rows:], y[rows:])
    return out


def step_time(net, tasks, batch, steps: int) -> float:
    """Seconds per step of one ``train_masks`` call, from its progress callback (10 → steps)."""
    stamps = {}

    def progress(step, _steps, _losses):
        stamps[step] = time.perf_counter()

    train_masks(net, tasks, steps=steps, batch_size=batch, progress=progress)
    return (stamps[steps] - stamps[10]) / (steps - 10)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_config(net_name: str, n_tasks: int, batch: str, steps: int, rounds: int) -> dict:
    """Run in a subprocess: time the loop and the batched trainer, report peak RSS."""
    sizes = NETS[net_name]
    net = FrozenNet(sizes, seed=0)
    data = synthetic_tasks(sizes, n_tasks, FULL_ROWS)
    tasks = {n: (d[0], d[1]) for n, d in data.items()}
    bs = 128 if batch == "128" else None
    base = rss_mb()
    n_loop = min(n_tasks, 4)
    loop_times, batched_times, rss_loop = [], [], 0.0
    for _ in range(rounds):
        per = [step_time(net, {n: tasks[n]}, bs, steps) for n in list(tasks)[:n_loop]]
        loop_times.append(float(np.mean(per)) * n_tasks)
        rss_loop = max(rss_loop, rss_mb())
        batched_times.append(step_time(net, tasks, bs, steps))
    return {"loop_s": min(loop_times), "batched_s": min(batched_times), "loop_rounds_s": loop_times,
            "batched_rounds_s": batched_times, "rss_base_mb": base, "rss_loop_mb": rss_loop,
            "rss_batched_mb": rss_mb(), "loop_tasks_timed": n_loop}


def machine_limits() -> dict:
    """Best-of fp32 GEMM GFLOP/s (2048² and 1024²) and copy bandwidth GB/s (256 MiB)."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(6):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    bw = 0.0
    for _ in range(8):
        t = time.perf_counter()
        dst.copy_(src)
        bw = max(bw, 2 * src.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return {"gemm_gflops": best, "bandwidth_gbs": bw}


def work(sizes, n_tasks: int, rows: int) -> tuple[float, float]:
    shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
    weights = sum(o * i for o, i in shapes)
    flops = n_tasks * rows * (4 * weights + 2 * sum(o * i for o, i in shapes[1:]))
    acts = n_tasks * rows * sum(sizes)
    return flops, n_tasks * weights * 24 + acts * 12


def parity(sizes, n_tasks: int, batch, steps: int) -> dict:
    """Train T tasks batched and one by one to the end; compare test accuracy and bits."""
    net = FrozenNet(sizes, seed=0)
    data = synthetic_tasks(sizes, n_tasks, FULL_ROWS, seed=1, test=600)
    tasks = {n: (d[0], d[1]) for n, d in data.items()}
    t0 = time.perf_counter()
    together = train_masks(net, tasks, steps=steps, batch_size=batch)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = {n: train_masks(net, {n: tasks[n]}, steps=steps, batch_size=batch)[n] for n in tasks}
    t_loop = time.perf_counter() - t0

    def acc(mask, d):
        return float((net(d[2], mask=mask).argmax(1).numpy() == d[3]).mean())

    a_b = [acc(together[n], data[n]) for n in tasks]
    a_l = [acc(alone[n], data[n]) for n in tasks]
    same = all(all(torch.equal(p, q) for p, q in zip(together[n].layers, alone[n].layers)) for n in tasks)
    return {"acc_batched": float(np.mean(a_b)), "acc_loop": float(np.mean(a_l)),
            "diff_pt": 100 * (float(np.mean(a_b)) - float(np.mean(a_l))), "bits_identical": same,
            "train_s_batched": t_batched, "train_s_loop": t_loop}


def storage() -> dict:
    sizes = (64, 512, 512, 10)
    net = FrozenNet(sizes, seed=0)
    rng = np.random.default_rng(0)
    tasks = {f"m{k:03d}": (rng.normal(size=(8, 64)).astype(np.float32), rng.integers(0, 10, 8)) for k in range(100)}
    bank = train_masks(net, tasks, steps=1, batch_size=8)
    n_weights = sum(o * i for o, i in net.shapes)
    with tempfile.TemporaryDirectory() as tmp:
        path = bank.save(Path(tmp) / "bank")
        bits_file = (path / "masks.safetensors").stat().st_size
        meta_file = (path / "bank.json").stat().st_size
    return {"net": list(sizes), "n_weights": n_weights, "n_masks": 100, "packed_bytes": bank.nbytes_bits(),
            "bits_per_weight_per_mask": 8 * bank.nbytes_bits() / (100 * n_weights),
            "file_bits_per_weight_per_mask": 8 * bits_file / (100 * n_weights),
            "safetensors_bytes": bits_file, "bank_json_bytes": meta_file,
            "total_mb": (bits_file + meta_file) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min): demo net, T in {1, 8}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--ts", nargs="+", type=int, default=[1, 8, 32, 128])
    ap.add_argument("--batches", nargs="+", default=["128", "full"], choices=["128", "full"])
    ap.add_argument("--skip", nargs="*", default=["wide:full:128"], help="NET:BATCH:T configurations not run")
    ap.add_argument("--parity", choices=["full", "short", "none"], default="full")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/masks_speed.json")
    ap.add_argument("--one", nargs=4, metavar=("NET", "T", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        net_name, t, batch, steps = args.one
        print(json.dumps(measure_config(net_name, int(t), batch, int(steps), args.rounds)))
        return
    t_start = time.perf_counter()
    limits = machine_limits()
    print(f"fp32 GEMM peak {limits['gemm_gflops']:.0f} GFLOP/s, copy bandwidth {limits['bandwidth_gbs']:.1f} GB/s "
          f"({torch.get_num_threads()} threads)")
    if args.quick:
        plan = [("demo", t, b, 30, 1) for b in ("128", "full") for t in (1, 8)]
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    else:
        plan = []
        for net_name in args.nets:
            for b in args.batches:
                for t in args.ts:
                    if f"{net_name}:{b}:{t}" in args.skip:
                        continue  # e.g. wide, full batch, T=128: ~1.2 TFLOP per step; bounded below
                    big = net_name == "wide" and t >= 32 or t == 128
                    plan.append((net_name, t, b, 20 if big else 30, 1 if big else args.rounds))
    rows = []
    for net_name, t, b, steps, rounds in plan:
        cmd = [sys.executable, __file__, "--rounds", str(rounds), "--one", net_name, str(t), b, str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        sizes = NETS[net_name]
        rows_per_task = 128 if b == "128" else FULL_ROWS
        flops, nbytes = work(sizes, t, rows_per_task)
        bound = max(flops / (limits["gemm_gflops"] * 1e9), nbytes / (limits["bandwidth_gbs"] * 1e9))
        row = {"net": net_name, "sizes": list(sizes), "T": t, "batch": b, "steps_timed": steps - 10,
               "rounds": rounds, **r, "speedup": r["loop_s"] / r["batched_s"],
               "gflops_batched": flops / r["batched_s"] / 1e9, "gflops_loop": flops / r["loop_s"] / 1e9,
               "pct_peak_batched": 100 * flops / r["batched_s"] / 1e9 / limits["gemm_gflops"],
               "flops": flops, "bytes": nbytes, "roofline_s": bound, "batched_over_roofline": r["batched_s"] / bound,
               "bound_by": "compute" if flops / (limits["gemm_gflops"] * 1e9) >= nbytes / (limits["bandwidth_gbs"] * 1e9) else "memory"}
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"limits": limits, "rows": rows, "partial": True}, indent=2))
        print(f"{net_name:>5} T={t:<4} batch={b:<5} loop {1e3 * row['loop_s']:8.1f} ms  batched {1e3 * row['batched_s']:8.1f} ms  "
              f"x{row['speedup']:5.2f}  {row['gflops_batched']:6.1f} GFLOP/s ({row['pct_peak_batched']:4.1f} % peak)  "
              f"roofline {1e3 * bound:7.1f} ms ({row['bound_by']}) ratio {row['batched_over_roofline']:5.2f}  "
              f"peak RSS {row['rss_batched_mb']:.0f} MB", flush=True)
    # Bound for the configuration not run.
    skipped = []
    for key in [] if args.quick else args.skip:
        net_name, b, t = key.split(":")
        rows_per_task = 128 if b == "128" else FULL_ROWS
        flops, nbytes = work(NETS[net_name], int(t), rows_per_task)
        bound = max(flops / (limits["gemm_gflops"] * 1e9), nbytes / (limits["bandwidth_gbs"] * 1e9))
        skipped.append({"net": net_name, "T": int(t), "batch": b, "flops": flops, "roofline_s": bound,
                        "roofline_s_at_290_gflops": flops / 290e9,
                        "activation_mb": int(t) * rows_per_task * sum(NETS[net_name]) * 4 / 1e6,
                        "why": "not run: too long for this run's time budget on a shared 2-core machine"})
        print(f"skipped {key}: {flops / 1e9:.0f} GFLOP per step, roofline {bound:.2f} s here "
              f"({flops / 290e9:.2f} s at 290 GFLOP/s), {skipped[-1]['activation_mb']:.0f} MB of activations")
    parity_rows = []
    parity_plan = {"full": [("demo", 1, 128, 300), ("demo", 8, 128, 300), ("demo", 32, 128, 300), ("wide", 8, 128, 150)],
                   "short": [("demo", 8, 128, 300), ("demo", 32, 128, 100)], "none": []}[args.parity]
    if args.quick:
        parity_plan = [("demo", 8, 128, 60)]
    for net_name, t, batch, steps in parity_plan:
        p = {"net": net_name, "T": t, "batch": "full" if batch is None else batch, "steps": steps,
             **parity(NETS[net_name], t, batch, steps)}
        parity_rows.append(p)
        print(f"parity {net_name} T={t} batch={p['batch']}: batched {100 * p['acc_batched']:.2f} %, loop "
              f"{100 * p['acc_loop']:.2f} %, diff {p['diff_pt']:+.2f} pt, bits identical {p['bits_identical']}", flush=True)
    store = storage() if parity_plan or args.quick else {}
    if store:
        print(f"storage: {store['bits_per_weight_per_mask']:.4f} bits/weight/mask packed, "
              f"{store['file_bits_per_weight_per_mask']:.4f} in the file; 100 masks of {store['n_weights']:,} weights: "
              f"{store['total_mb']:.2f} MB on disk")
    doc = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}",
           "threads": torch.get_num_threads(), "command": " ".join(["python", *sys.argv]), "limits": limits,
           "rows": rows, "skipped": skipped, "parity": parity_rows, "storage": store,
           "wall_s": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"wall {doc['wall_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
