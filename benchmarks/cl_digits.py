"""Continual learning on scikit-learn's shipped digits: PermutedDigits and SplitDigits.

    python benchmarks/cl_digits.py [--quick] [--out benchmarks/results/cl_digits.json]

PermutedDigits: 50 tasks, each a fixed permutation of the 64 pixels, 10 classes. SplitDigits:
5 tasks of 2 digits each ((0, 1), (2, 3), ...), labels 0/1 within a task. Train/test split 70/30
(stratified, fixed seed), pixels scaled to [0, 1] then standardised with statistics of the pooled
training pixels (fixed, shared by every task and method; nothing is learned per task).

SupSup: one edge-popup mask per task on a frozen 64→512→512→C net (~300k weights) with
``--superfluous`` extra output units (default 100; SupSup's PermutedMNIST nets have 500 outputs
for 10 classes): training pushes their logits down on each task's own mask, which is what makes
one-shot task inference work (with ``--superfluous 0`` it finds 4 % of 50 tasks). Tasks appended
to the bank in groups (``--group``) as a continual learner sees them; after each group every
task seen so far is re-evaluated, giving the accuracy matrix R[i, j] (after group i, task j).
Reported: average accuracy with task id, BWT = mean_j (R[last, j] − R[j's group, j]), task-
inference accuracy without the id (one-shot; full test set of a task, and batches of 16), bytes
stored. Baselines on the same architecture (dense, trainable, with biases, Adam): sequential
fine-tuning of one net (forgetting), one net per task (upper bound and its storage), one mask
shared by all tasks (trained jointly on every task's data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supsup_fin.masks import FrozenNet, MaskBank, infer_task, train_masks


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


def accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == y).mean())


def run_supsup(tasks, n_classes, hidden, args) -> dict:
    net = FrozenNet((64, *hidden, n_classes), seed=0, superfluous=args.superfluous)
    names = list(tasks)
    groups = [names[i : i + args.group] for i in range(0, len(names), args.group)]
    bank, r_diag, t0 = MaskBank(net), {}, time.perf_counter()
    old_bits: dict[str, list[torch.Tensor]] = {}
    for g in groups:
        bank = train_masks(net, {n: tasks[n][:2] for n in g}, method="edge_popup", density=args.density,
                           steps=args.steps, batch_size=args.batch, lr=args.lr, momentum=0.9,
                           weight_decay=0.0, seed=0, bank=bank)
        for n, layers in old_bits.items():  # appending never touches old masks
            assert all(torch.equal(a, b) for a, b in zip(layers, bank[n].layers)), n
        for n in g:
            old_bits[n] = list(bank[n].layers)
            r_diag[n] = accuracy(net(tasks[n][2], mask=bank[n]), tasks[n][3])
    train_s = time.perf_counter() - t0
    final = {n: accuracy(net(tasks[n][2], mask=bank[n]), tasks[n][3]) for n in names}
    bwt = float(np.mean([final[n] - r_diag[n] for n in names]))
    # Task inference without the id.
    t1 = time.perf_counter()
    full_ok = [infer_task(net, bank, tasks[n][2], objective=args.objective).task == n for n in names]
    rng = np.random.default_rng(1)
    b16_ok = []
    for n in names:
        xte = tasks[n][2]
        order = rng.permutation(len(xte))
        for b in range(min(args.batches16, len(xte) // 16)):
            b16_ok.append(infer_task(net, bank, xte[order[16 * b : 16 * b + 16]], objective=args.objective).task == n)
    infer_s = time.perf_counter() - t1
    n_weights = sum(o * i for o, i in net.shapes)
    return {
        "method": "supsup (edge_popup masks)", "avg_acc": float(np.mean(list(final.values()))),
        "bwt": bwt, "min_acc": float(min(final.values())),
        "infer_acc_full": float(np.mean(full_ok)), "infer_acc_b16": float(np.mean(b16_ok)),
        "n_infer_b16": len(b16_ok), "bytes": bank.nbytes_bits(), "bits_per_weight_per_mask":
        8 * bank.nbytes_bits() / (len(bank) * n_weights), "train_s": round(train_s, 1),
        "infer_s": round(infer_s, 1), "n_weights": n_weights, "superfluous": args.superfluous,
        "objective": args.objective,
        "per_task_acc": final,
    }


class DenseStack(torch.nn.Module):
    """T independent dense MLPs evaluated together (weights [T, out, in], biases [T, out])."""

    def __init__(self, sizes, n_nets: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for i in range(len(sizes) - 1):
            bound = 1 / np.sqrt(sizes[i])
            self.w.append(torch.nn.Parameter((torch.rand(n_nets, sizes[i + 1], sizes[i], generator=g) * 2 - 1) * bound))
            self.b.append(torch.nn.Parameter((torch.rand(n_nets, 1, sizes[i + 1], generator=g) * 2 - 1) * bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, B, in]
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            x = torch.baddbmm(b, x, w.transpose(1, 2))
            if i < len(self.w) - 1:
                x = torch.relu(x)
        return x


def train_dense(model, xs, ys, steps, batch, lr, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    xs, ys = [torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys]
    for _ in range(steps):
        idx = [torch.randint(len(x), (batch,), generator=g) for x in xs]
        xb = torch.stack([x[i] for x, i in zip(xs, idx)])
        yb = torch.stack([y[i] for y, i in zip(ys, idx)])
        out = model(xb)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="sum") / batch
        opt.zero_grad()
        loss.backward()
        opt.step()


def dense_eval(model, k, x) -> torch.Tensor:
    with torch.no_grad():
        xx = torch.from_numpy(x).unsqueeze(0)
        out = xx
        for i, (w, b) in enumerate(zip(model.w, model.b)):
            out = torch.baddbmm(b[k : k + 1], out, w[k : k + 1].transpose(1, 2))
            if i < len(model.w) - 1:
                out = torch.relu(out)
        return out[0]


def run_baselines(tasks, n_classes, hidden, args) -> list[dict]:
    names = list(tasks)
    sizes = (64, *hidden, n_classes)
    n_params = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    rows = []
    # One dense net per task (upper bound), trained together (independent parameters, Adam is elementwise).
    t0 = time.perf_counter()
    per_task = DenseStack(sizes, len(names), seed=0)
    train_dense(per_task, [tasks[n][0] for n in names], [tasks[n][1] for n in names], args.dense_steps, 64, 1e-3, 0)
    accs = [accuracy(dense_eval(per_task, k, tasks[n][2]), tasks[n][3]) for k, n in enumerate(names)]
    rows.append({"method": "dense net per task (upper bound)", "avg_acc": float(np.mean(accs)), "bwt": 0.0,
                 "bytes": 4 * n_params * len(names), "train_s": round(time.perf_counter() - t0, 1)})
    # Sequential fine-tuning of one dense net.
    t0 = time.perf_counter()
    one = DenseStack(sizes, 1, seed=0)
    r_diag = {}
    for n in names:
        train_dense(one, [tasks[n][0]], [tasks[n][1]], args.dense_steps, 64, 1e-3, 0)
        r_diag[n] = accuracy(dense_eval(one, 0, tasks[n][2]), tasks[n][3])
    final = {n: accuracy(dense_eval(one, 0, tasks[n][2]), tasks[n][3]) for n in names}
    rows.append({"method": "sequential fine-tuning, one dense net", "avg_acc": float(np.mean(list(final.values()))),
                 "bwt": float(np.mean([final[n] - r_diag[n] for n in names])), "bytes": 4 * n_params,
                 "train_s": round(time.perf_counter() - t0, 1)})
    # One mask shared by all tasks, trained jointly on the pooled data.
    t0 = time.perf_counter()
    net = FrozenNet(sizes, seed=0)
    x_all = np.concatenate([tasks[n][0] for n in names])
    y_all = np.concatenate([tasks[n][1] for n in names])
    shared = train_masks(net, {"shared": (x_all, y_all)}, density=args.density, steps=args.steps,
                         batch_size=args.batch, lr=args.lr, weight_decay=0.0)
    accs = [accuracy(net(tasks[n][2], mask=shared["shared"]), tasks[n][3]) for n in names]
    rows.append({"method": "one mask shared by all tasks", "avg_acc": float(np.mean(accs)), "bwt": 0.0,
                 "bytes": shared.nbytes_bits(), "train_s": round(time.perf_counter() - t0, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 permuted tasks, few steps (< 1 min)")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--group", type=int, default=10, help="tasks appended to the bank at a time")
    ap.add_argument("--superfluous", type=int, default=100,
                    help="extra output units of the SupSup net (0: a plain C-way head)")
    ap.add_argument("--objective", choices=("auto", "entropy", "superfluous"), default="auto",
                    help="task-inference objective (auto: entropy H over every output)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    ap.add_argument("--batches16", type=int, default=4, help="batches of 16 per task for inference")
    ap.add_argument("--dense-steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cl_digits.json"))
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.steps, args.group, args.batches16, args.dense_steps = 6, 60, 3, 3, 60
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    torch.manual_seed(0)
    t_start = time.perf_counter()
    results = {}
    for bench, (tasks, n_classes) in {
        "PermutedDigits": permuted_tasks(args.tasks),
        "SplitDigits": split_tasks(),
    }.items():
        group = args.group if bench == "PermutedDigits" else 1
        sup = run_supsup(tasks, n_classes, args.hidden, argparse.Namespace(**{**vars(args), "group": group}))
        rows = [sup, *run_baselines(tasks, n_classes, args.hidden, args)]
        results[bench] = {"n_tasks": len(tasks), "n_classes": n_classes, "rows": rows}
        print(f"\n{bench}: {len(tasks)} tasks, {n_classes} classes, net 64→{'→'.join(map(str, args.hidden))}→{n_classes}"
              + (f" (+{args.superfluous} superfluous)" if args.superfluous else ""))
        print("| method | avg acc (task id) | BWT | task inference, full batch | task inference, batches of 16 | bytes stored |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            inf = f"{100 * r['infer_acc_full']:.1f} %" if "infer_acc_full" in r else "—"
            inf16 = f"{100 * r['infer_acc_b16']:.1f} % (n={r['n_infer_b16']})" if "infer_acc_b16" in r else "—"
            print(f"| {r['method']} | {100 * r['avg_acc']:.2f} % | {100 * r['bwt']:+.2f} pt | {inf} | {inf16} | {r['bytes']:,} |")
    doc = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}",
           "command": " ".join(["python", *sys.argv]), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "wall_s": round(time.perf_counter() - t_start, 1), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"\nwall {doc['wall_s']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
