"""CPU against CUDA: the same masks, the same forecasts, and the time of a training step.

    python benchmarks/gpu_check.py [--require-cuda] [--config configs/demo.yaml] [--out ...]
    python benchmarks/gpu_check.py --cpu-only [--ts 8 32] [--timing-steps 20]   # the script on cpu alone

Where torch sees a CUDA device:

1. **masks**: the config's task set (the demo's: 3 markets, their regimes and ALL) is trained
   with the same seed on cpu and on cuda, and a second time on cuda, under
   ``torch.use_deterministic_algorithms(True)`` with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``. The two
   cuda runs must give identical bits. cpu and cuda sum floats in different orders, and
   edge-popup's top-k turns a last-bit difference in a score at the threshold into another bit,
   which then steers the rest of training; so cpu against cuda is measured, per task, as the
   fraction of mask bits that differ (must be <= ``--bits-tolerance``, 0.05), and what it costs
   as the difference in each task mask's valid log-loss (must be <= ``--loss-tolerance``, 0.02);
2. **forecasts**: the forecaster built on the cpu-trained masks, evaluated with its network on cpu
   and on cuda (``evaluate(..., device=)`` and every gate mode's ``predict_frames``): the largest
   absolute probability difference over rows that used the same masks must be <= 1e-5 (``infer``
   may pick another mask where two masks' scores tie to rounding: those rows are counted);
3. **speed**: seconds per ``train_masks`` step at T = 32, 128 and 512 masks of the config's
   network (synthetic tasks of 1,400 rows, the config's batch size), on both devices.

Prints a table and writes JSON to ``--out`` (benchmarks/results/gpu_check.json). Without CUDA it
prints one line and exits 0 (1 with ``--require-cuda``). ``--cpu-only`` runs every step with cpu
in place of cuda (cpu against cpu: identical bits, identical forecasts), so the script is known to
work before it meets a GPU; it writes gpu_check_cpu_only.json. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.masks_speed import FULL_ROWS, synthetic_tasks
from supsup_fin.config import Config, demo_config_path, load_config
from supsup_fin.data import load_prices
from supsup_fin.forecaster.evaluate import evaluate
from supsup_fin.forecaster.mask_tasks import device_label, make_tasks
from supsup_fin.forecaster.prepare import build_features, fit_regimes
from supsup_fin.forecaster.training import build_forecaster, train_tasks
from supsup_fin.gate_modes import GATE_MODES
from supsup_fin.masks import FrozenNet, MaskBank, train_masks

PROB_TOLERANCE = 1e-5


def on(cfg: Config, device: str) -> Config:
    """``cfg`` with ``runtime.device`` set to ``device``."""
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": device})})


def trained(tasks: list, cfg: Config, device: str) -> tuple[FrozenNet, MaskBank, float, list[str]]:
    """Masks trained on ``device``: the net, the bank, seconds and the nondeterministic ops torch warned of."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        net, bank = train_tasks(tasks, on(cfg, device))
        seconds = time.perf_counter() - t0
    return net, bank, seconds, sorted({str(w.message).split("\n")[0] for w in caught if "determinis" in str(w.message)})


def differing_bits(a: MaskBank, b: MaskBank) -> dict[str, float]:
    """Per mask of ``a``, the fraction of its bits that differ in ``b``."""
    out = {}
    for name in a.names:
        pairs = list(zip(a[name].layers, b[name].layers))
        out[name] = sum(int((x != y).sum()) for x, y in pairs) / sum(x.numel() for x, _ in pairs)
    return out


def same_forecasts(fc, prices: dict, device: str) -> dict[str, dict]:
    """Per gate mode: the largest |probability difference| between the forecaster on cpu and on
    ``device`` over rows that used the same masks, the rows compared and the rows that did not."""
    moved = fc.to(device)
    out = {}
    for market in sorted(fc.markets):
        cpu = fc.predict_frames(market, prices[market], GATE_MODES)
        dev = moved.predict_frames(market, prices[market], GATE_MODES)
        for mode in GATE_MODES:
            p = [c for c in cpu[mode].columns if c.startswith("p_")]
            same = (cpu[mode]["masks"] == dev[mode]["masks"]).to_numpy()
            diff = np.abs(cpu[mode][p].to_numpy() - dev[mode][p].to_numpy())[same]
            row = out.setdefault(mode, {"max_abs_diff": 0.0, "rows": 0, "rows_other_masks": 0})
            row["max_abs_diff"] = max(row["max_abs_diff"], float(diff.max()) if diff.size else 0.0)
            row["rows"] += int(same.sum())
            row["rows_other_masks"] += int((~same).sum())
    return out


def step_seconds(net: FrozenNet, tasks: dict, batch: int, steps: int, device: str) -> float:
    """Seconds per ``train_masks`` step of ``tasks`` on ``device`` (steps 10 -> ``steps``; the
    progress callback reads the losses back, so each stamp waits for the device)."""
    stamps = {}

    def progress(step: int, _steps: int, _losses: dict) -> None:
        stamps[step] = time.perf_counter()

    train_masks(net, tasks, steps=steps, batch_size=batch, device=device, progress=progress)
    return (stamps[steps] - stamps[10]) / (steps - 10)


def check(cfg: Config, device: str, args: argparse.Namespace) -> dict:
    """Steps 1-3 of the module docstring on ``cfg``'s markets, ``device`` against cpu; the JSON record."""
    cache = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    loaded = {m.name: load_prices(m, cfg.data, cache) for m in cfg.markets}
    prices = {n: lp.frame for n, lp in loaded.items()}
    fs = {n: build_features(n, lp.frame, cfg) for n, lp in loaded.items()}
    rf = {n: fit_regimes(n, lp.frame, cfg.regimes, cfg.segments) for n, lp in loaded.items()}
    tasks = make_tasks(fs, rf, on(cfg, "cpu"))
    print(f"{len(tasks)} tasks of {len(cfg.markets)} markets, {cfg.training.steps} steps", flush=True)

    net, cpu_bank, cpu_s, _ = trained(tasks, cfg, "cpu")
    _, dev_bank, dev_s, nondeterministic = trained(tasks, cfg, device)
    _, again, _, _ = trained(tasks, cfg, device)
    bits = differing_bits(cpu_bank, dev_bank)
    recorded = {cpu_bank.meta(tasks[0].name)["device"], dev_bank.meta(tasks[0].name)["device"]}

    fc = build_forecaster(fs, rf, net, cpu_bank, cfg)
    ev_cpu = evaluate(fc, fs, rf, prices, segments=("valid",), device="cpu")
    ev_dev = evaluate(fc, fs, rf, prices, segments=("valid",), device=device)
    ev_trained = evaluate(build_forecaster(fs, rf, net, dev_bank, cfg), fs, rf, prices, segments=("valid",))
    forecasts = same_forecasts(fc, prices, device)
    loss_gap = float(np.nanmax(np.abs(ev_cpu.tasks["log_loss"] - ev_trained.tasks["log_loss"])))
    eval_gap = max(float(np.nanmax(np.abs(ev_cpu.tasks["log_loss"] - ev_dev.tasks["log_loss"]))),
                   float(np.nanmax(np.abs(ev_cpu.markets["log_loss"] - ev_dev.markets["log_loss"]))))

    sizes = (tasks[0].X.shape[1], *cfg.network.hidden, cfg.features.n_classes)
    timings = []
    for t in args.ts:
        data = {n: (d[0], d[1]) for n, d in synthetic_tasks(sizes, t, FULL_ROWS).items()}
        row = {"T": t}
        for name, dev in (("cpu", "cpu"), ("device", device)):
            row[f"{name}_s_per_step"] = step_seconds(FrozenNet(sizes, seed=0), data, cfg.training.batch_size,
                                                     args.timing_steps, dev)
        row["speedup"] = row["cpu_s_per_step"] / row["device_s_per_step"]
        timings.append(row)
        print(f"T={t}: cpu {row['cpu_s_per_step'] * 1e3:.1f} ms/step, {device} {row['device_s_per_step'] * 1e3:.1f} "
              f"ms/step", flush=True)

    checks = {
        "masks record the device they trained on": recorded == {"cpu", device_label(torch.device(device))},
        "device repeat: identical bits": all(v == 0 for v in differing_bits(dev_bank, again).values()),
        f"cpu vs {device}: differing bits <= {args.bits_tolerance:g} per task": max(bits.values()) <= args.bits_tolerance,
        f"cpu vs {device} masks: valid log-loss within {args.loss_tolerance:g} per task":
            loss_gap <= args.loss_tolerance,
        f"same masks: forecasts within {PROB_TOLERANCE:g}": all(r["max_abs_diff"] <= PROB_TOLERANCE
                                                               for r in forecasts.values()),
        f"same masks: evaluation log-losses within {PROB_TOLERANCE:g}": eval_gap <= PROB_TOLERANCE,
    }
    return {
        "device": device, "device_label": device_label(torch.device(device)), "recorded_devices": sorted(recorded),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "config": str(args.config), "n_tasks": len(tasks),
        "train_s": {"cpu": cpu_s, "device": dev_s}, "nondeterministic_ops": nondeterministic,
        "differing_bits": bits, "valid_log_loss_gap_max": loss_gap,
        "forecasts": forecasts, "evaluation_gap_max": eval_gap, "timings": timings, "checks": checks,
        "passed": all(checks.values()),
    }


def report(out: dict) -> None:
    dev = out["device"]
    print(f"\n{out['device_label']} against cpu, {out['n_tasks']} tasks (torch {out['torch']}, CUDA {out['cuda']})")
    print(f"training: cpu {out['train_s']['cpu']:.1f} s, {dev} {out['train_s']['device']:.1f} s; nondeterministic ops: "
          f"{out['nondeterministic_ops'] or 'none'}")
    bits = out["differing_bits"]
    print(f"differing bits per task: max {max(bits.values()):.4f}, mean {np.mean(list(bits.values())):.4f}; "
          f"valid log-loss gap max {out['valid_log_loss_gap_max']:.4f}")
    print(f"{'mode':10} {'max |dp|':>10} {'rows':>7} {'other masks':>12}")
    for mode, r in out["forecasts"].items():
        print(f"{mode:10} {r['max_abs_diff']:10.2e} {r['rows']:7d} {r['rows_other_masks']:12d}")
    print(f"evaluation (same masks): max |log-loss difference| {out['evaluation_gap_max']:.2e}")
    print(f"{'T':>5} {'cpu ms/step':>12} {dev + ' ms/step':>14} {'speedup':>8}")
    for r in out["timings"]:
        print(f"{r['T']:5d} {r['cpu_s_per_step'] * 1e3:12.1f} {r['device_s_per_step'] * 1e3:14.1f} {r['speedup']:8.1f}")
    for what, ok in out["checks"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-only", action="store_true", help="run every step with cpu in place of cuda")
    ap.add_argument("--require-cuda", action="store_true", help="exit 1 when torch sees no CUDA device")
    ap.add_argument("--config", type=Path, default=demo_config_path())
    ap.add_argument("--ts", nargs="+", type=int, default=[32, 128, 512], help="mask counts of the timed steps")
    ap.add_argument("--timing-steps", type=int, default=30, help="steps per timing (the first 10 are warm-up)")
    ap.add_argument("--bits-tolerance", type=float, default=0.05)
    ap.add_argument("--loss-tolerance", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.cpu_only and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing to compare (--cpu-only runs the check on cpu alone)")
        return 1 if args.require_cuda else 0
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = "cpu" if args.cpu_only else "cuda"
    out = check(load_config(args.config), device, args)
    report(out)
    path = args.out or ROOT / "benchmarks/results" / ("gpu_check_cpu_only.json" if args.cpu_only else "gpu_check.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
