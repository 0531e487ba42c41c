"""Continual learning on scikit-learn's shipped digits: supermasks against five other methods.

    python benchmarks/cl_digits.py [--quick] [--methods ...] [--out benchmarks/results/cl_comparison.json]

PermutedDigits: 50 tasks, each a fixed permutation of the 64 pixels, 10 classes. SplitDigits:
5 tasks of 2 digits each ((0, 1), (2, 3), ...), labels 0/1 within a task. Train/test split 70/30
(stratified, fixed seed), pixels scaled to [0, 1] then standardised with statistics of the pooled
training pixels (fixed, shared by every task and method; nothing is learned per task).

Methods (``benchmarks/cl_methods.py``, one protocol): supermasks (edge-popup; hard-concrete read
deterministically and stochastically) on a frozen 64→H→H→C net (``--hidden``) with
``--superfluous`` extra output units (default 100: what makes one-shot task inference work),
fine-tuning of one dense 64→H→H→C net, multi-head (its trunk + a head per task), progressive nets
(columns 64→``--column``→``--column``→C with lateral connections), adapters (the trunk frozen
after task 0, a ``--bottleneck`` adapter per hidden layer + a head), expert gate (a dense
64→H→H→C expert and a 64→``--code``→64 autoencoder per task). Dense nets have biases and train
with Adam (lr 1e-3); masks with ``train_masks``' SGD defaults (lr ``--lr``). Every method gets the
same ``--steps`` mini-batches of ``--batch`` rows per task.

Tasks arrive in order; sequential learners take them one at a time, supermasks ``--group`` at a
time (a mask's bits do not depend on its group). Each task is scored right after it is learned
(R[j, j]) and every task seen so far after each group of ``--group`` (R[T, j]). At T tasks:
average accuracy with the task id; without it where the method infers the task (its one-shot
guess on the task's whole test set, then that task's prediction; also the hit rate on batches of
16); BWT = mean over j < T of R[T, j] − R[j, j]; forgetting = mean over j < T of j's best earlier
score (right after learning it or at an earlier group) minus R[T, j]; parameters and bytes the
T-th task added, bytes stored in all; training seconds per task over the last group. The table
shows T = 10 and T = 50 (SplitDigits: 5); the JSON and the plot hold every group's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cl_methods import (  # noqa: E402
    Adapters,
    Budget,
    ExpertGate,
    FineTuning,
    Learner,
    MultiHead,
    Progressive,
    Supermasks,
    accuracy,
)

Tasks = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def load_split(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=seed, stratify=d.target)
    mu, sd = xtr.mean(), xtr.std()
    return (xtr - mu) / sd, ytr.astype(np.int64), (xte - mu) / sd, yte.astype(np.int64)


def permuted_tasks(n_tasks: int, seed: int = 0):
    xtr, ytr, xte, yte = load_split(seed)
    rng = np.random.default_rng(seed)
    tasks = {}
    for t in range(n_tasks):
        perm = np.arange(64) if t == 0 else rng.permutation(64)
        tasks[f"perm{t:02d}"] = (xtr[:, perm], ytr, xte[:, perm], yte)
    return tasks, 10


def split_tasks(seed: int = 0):
    xtr, ytr, xte, yte = load_split(seed)
    tasks = {}
    for t in range(5):
        a, b = 2 * t, 2 * t + 1
        tr, te = np.isin(ytr, (a, b)), np.isin(yte, (a, b))
        tasks[f"split{a}{b}"] = (xtr[tr], (ytr[tr] == b).astype(np.int64), xte[te], (yte[te] == b).astype(np.int64))
    return tasks, 2


def methods(args: argparse.Namespace, n_in: int, n_classes: int) -> dict[str, Callable[[Budget], Learner]]:
    """The compared methods by name, each built for one benchmark from the command line."""
    hidden, depth = tuple(args.hidden), len(args.hidden)
    sizes = (n_in, *hidden, n_classes)
    return {
        "edge_popup": lambda b: Supermasks(sizes, b, "edge_popup", args.superfluous, args.density, lr=args.lr,
                                           form_options={"init_scale": args.init_scale}),
        "hard_concrete": lambda b: Supermasks(sizes, b, "hard_concrete", args.superfluous, args.density, args.samples,
                                              lr=args.hc_lr, weight_decay=0.0,
                                              form_options={"tau_final": args.hc_tau_final}),
        "fine_tuning": lambda b: FineTuning(sizes, b),
        "multi_head": lambda b: MultiHead(sizes, b),
        "progressive": lambda b: Progressive((n_in, *[args.column] * depth, n_classes), b),
        "adapters": lambda b: Adapters(sizes, b, args.bottleneck),
        "expert_gate": lambda b: ExpertGate(sizes, b, args.code),
    }


def run_method(learner: Learner, tasks: Tasks, group: int, report_at: Sequence[int], batches16: int) -> list[dict]:
    """Learn ``tasks`` in order and score them; one row per read-out of the learner."""
    names = list(tasks)
    diag = {v: {} for v in learner.variants}
    seen_acc: dict[str, dict[int, dict[str, float]]] = {v: {} for v in learner.variants}
    train_s, inferred = {}, {}
    for start in range(0, len(names), group):
        block = names[start : start + group]
        for chunk in [block] if learner.batched else [[n] for n in block]:
            t0 = time.perf_counter()
            learner.learn({n: tasks[n][:2] for n in chunk})
            dt = time.perf_counter() - t0
            for n in chunk:
                train_s[n] = dt / len(chunk)
                for v in learner.variants:
                    diag[v][n] = accuracy(learner.predict(n, tasks[n][2], v), tasks[n][3])
        seen = names[: start + len(block)]
        for v in learner.variants:
            seen_acc[v][len(seen)] = {n: accuracy(learner.predict(n, tasks[n][2], v), tasks[n][3]) for n in seen}
        if learner.infers_task and len(seen) in report_at:
            inferred[len(seen)] = infer_all(learner, tasks, seen, batches16)
    return [summarise(learner, v, names, diag[v], seen_acc[v], train_s, inferred, tasks, group)
            for v in learner.variants]


def infer_all(learner: Learner, tasks: Tasks, seen: list[str], batches16: int) -> dict:
    """Each seen task's test set without its id: the guessed task, and hits on batches of 16."""
    t0 = time.perf_counter()
    guess = {n: learner.infer_task(tasks[n][2], seen) for n in seen}
    full_s = (time.perf_counter() - t0) / len(seen)
    rng = np.random.default_rng(1)
    hits16 = []
    for n in seen:
        xte = tasks[n][2]
        order = rng.permutation(len(xte))
        hits16 += [learner.infer_task(xte[order[16 * b : 16 * b + 16]], seen) == n
                   for b in range(min(batches16, len(xte) // 16))]
    return {"guess": guess, "infer_s_per_batch": round(full_s, 4), "hits16": hits16}


def summarise(learner: Learner, variant: str, names: list[str], diag: dict[str, float],
              seen_acc: dict[int, dict[str, float]], train_s: dict[str, float], inferred: dict, tasks: Tasks,
              group: int) -> dict:
    """The figures of one read-out at every group boundary ``T`` (``curve``)."""
    curve = []
    for T, acc in seen_acc.items():
        seen, old = names[:T], names[: T - 1]
        best = {n: max([diag[n], *(a[n] for t, a in seen_acc.items() if t < T and n in a)]) for n in old}
        fig = {
            "tasks": T,
            "avg_acc": float(np.mean(list(acc.values()))),
            "min_acc": float(min(acc.values())),
            "bwt": float(np.mean([acc[n] - diag[n] for n in old])) if old else 0.0,
            "forgetting": float(np.mean([best[n] - acc[n] for n in old])) if old else 0.0,
            "params_added": learner.params_added(seen[-1]),
            "bytes_added": learner.bytes_added(seen[-1], variant),
            "bytes_total": learner.shared_bytes + sum(learner.bytes_added(n, variant) for n in seen),
            "train_s_per_task": float(np.mean([train_s[n] for n in names[max(0, T - group) : T]])),
            "acc_no_id": None if learner.uses_task_id else float(np.mean(list(acc.values()))),
        }
        if T in inferred:
            guess = inferred[T]["guess"]
            fig["infer_acc_full"] = float(np.mean([guess[n] == n for n in seen]))
            fig["infer_acc_b16"] = float(np.mean(inferred[T]["hits16"]))
            fig["n_infer_b16"] = len(inferred[T]["hits16"])
            fig["infer_s_per_batch"] = inferred[T]["infer_s_per_batch"]
            fig["acc_no_id"] = float(np.mean([accuracy(learner.predict(guess[n], tasks[n][2], variant), tasks[n][3])
                                              for n in seen]))
        curve.append(fig)
    label = learner.label + (f" ({variant})" if variant else "")
    return {"method": label, "shared_params": learner.shared_params, "shared_bytes": learner.shared_bytes,
            "train_s": round(sum(train_s.values()), 1), "curve": curve,
            "per_task_acc": seen_acc[len(names)]}


def _pct(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _span(row: dict, key: str, at: Sequence[int], fmt: Callable[[float], str]) -> str:
    """``a → b``: the figure at each of the ``at`` task counts (one value when they agree)."""
    figs = {f["tasks"]: f for f in row["curve"]}
    vals = [fmt(figs[t][key]) if t in figs and figs[t].get(key) is not None else "—" for t in at]
    return vals[0] if len(set(vals)) == 1 else " → ".join(vals)


def table(rows: list[dict], at: Sequence[int]) -> str:
    head = " → ".join(map(str, at))
    lines = [
        f"| method (T = {head} tasks) | acc, task id (%) | acc, no id (%) | task inference, full / 16 rows (%) "
        "| BWT (pt) | forgetting (pt) | params added by task T | bytes added by task T | bytes stored "
        "| train s per task |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        inf = _span(r, "infer_acc_full", at, _pct)
        inf16 = _span(r, "infer_acc_b16", at, _pct)
        lines.append(
            f"| {r['method']} | {_span(r, 'avg_acc', at, _pct)} | {_span(r, 'acc_no_id', at, _pct)} "
            f"| {inf if inf == '—' else inf + ' / ' + inf16} | {_span(r, 'bwt', at, lambda x: _pct(x, True))} "
            f"| {_span(r, 'forgetting', at, _pct)} | {_span(r, 'params_added', at, '{:,}'.format)} "
            f"| {_span(r, 'bytes_added', at, '{:,}'.format)} | {_span(r, 'bytes_total', at, '{:,}'.format)} "
            f"| {_span(r, 'train_s_per_task', at, '{:.2f}'.format)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], bench: str, path: Path) -> None:
    """Accuracy, forgetting, bytes stored and training time per task against the tasks seen."""
    from matplotlib.figure import Figure

    panels = [("avg_acc", "accuracy with task id", 100, False), ("forgetting", "forgetting (pt)", 100, False),
              ("bytes_total", "bytes stored", 1, True), ("train_s_per_task", "training s per task", 1, True)]
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, title, scale, log) in zip(axes, panels):
        for r in rows:
            t = [f["tasks"] for f in r["curve"]]
            ax.plot(t, [scale * f[key] for f in r["curve"]], marker="o", ms=3, label=r["method"])
        ax.set_title(title)
        ax.set_xlabel(f"{bench}: tasks seen")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 permuted tasks, few steps")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300, help="mini-batches per task, every method")
    ap.add_argument("--batch", type=int, default=128, help="rows per mini-batch, every method")
    ap.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of the masks")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--group", type=int, default=10, help="tasks per group (scored after each)")
    ap.add_argument("--superfluous", type=int, default=100,
                    help="extra output units of the supermask net (0: a plain C-way head)")
    ap.add_argument("--init-scale", type=float, default=1.0,
                    help="edge-popup initial score scale (1: the reference's; the package default 0.01 "
                         "breaks one-shot task inference here)")
    ap.add_argument("--hc-lr", type=float, default=300.0, help="SGD learning rate of the hard-concrete logits")
    ap.add_argument("--hc-tau-final", type=float, default=0.1, help="hard-concrete final temperature")
    ap.add_argument("--samples", type=int, default=16, help="masks drawn by stochastic hard-concrete")
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--column", type=int, default=64, help="hidden width of a progressive column")
    ap.add_argument("--bottleneck", type=int, default=16, help="adapter bottleneck width")
    ap.add_argument("--code", type=int, default=16, help="expert-gate autoencoder code width")
    ap.add_argument("--batches16", type=int, default=4, help="batches of 16 per task for inference")
    ap.add_argument("--methods", nargs="+", default=None, help="a subset of the methods (default: all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a busy shared machine stalls 2 OpenMP threads)")
    ap.add_argument("--plot", type=Path, default=Path("docs/cl_comparison.png"),
                    help="the PermutedDigits figure (none with --quick)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cl_comparison.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.steps, args.group, args.batches16 = 6, 60, 3, 2
        args.out = args.out.with_name(args.out.stem + "_quick.json")
        args.plot = None
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    budget = Budget(steps=args.steps, batch=args.batch, seed=0)
    results = {}
    benches = {"PermutedDigits": permuted_tasks(args.tasks), "SplitDigits": split_tasks()}
    for bench, (tasks, n_classes) in benches.items():
        group = args.group if bench == "PermutedDigits" else 1
        report_at = sorted({min(args.group, len(tasks)), len(tasks)})
        registry = methods(args, 64, n_classes)
        chosen = args.methods or list(registry)
        unknown = sorted(set(chosen) - set(registry))
        if unknown:
            ap.error(f"unknown methods {unknown}; valid: {', '.join(registry)}")
        rows = []
        for name in chosen:
            t0 = time.perf_counter()
            rows += run_method(registry[name](budget), tasks, group, report_at, args.batches16)
            print(f"{bench} {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        results[bench] = {"n_tasks": len(tasks), "n_classes": n_classes, "report_at": report_at, "rows": rows}
        print(f"\n{bench}: {len(tasks)} tasks, {n_classes} classes, base net 64→{'→'.join(map(str, args.hidden))}→"
              f"{n_classes} (supermasks: +{args.superfluous} superfluous outputs)\n{table(rows, report_at)}\n")
        if bench == "PermutedDigits" and args.plot:
            plot(rows, bench, args.plot)
    doc = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
                      f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)",
           "command": " ".join(["python", "benchmarks/cl_digits.py", *(sys.argv[1:] if argv is None else argv)]),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "wall_s": round(time.perf_counter() - t_start, 1), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"wall {doc['wall_s']} s; wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return doc


if __name__ == "__main__":
    main()
