"""The seed's claims about supermasks, measured: width, sparsity, overlap, compounding, stochastic calibration.

    python benchmarks/cl_claims.py [--part width|density|overlap|compounding|calibration|all] [--quick]
                                   [--threads 1] [--out benchmarks/results/cl_claims.json]

Claims of the method's description: networks 2–3× larger than a single-task network generally
suffice; 10–50 % of the base active per task is typical; high Jaccard overlap indicates related
tasks; stochastic test-time masks may calibrate better; mask quality may degrade with many tasks.

Two benchmarks. **PermutedDigits** (``cl_digits.py``): scikit-learn's digits, 70/30 split,
each task a fixed permutation of the 64 pixels, 10 classes; ``--seeds`` seeds, each naming the
split, the permutations, the frozen net and the masks' initialisation. **The demo's forecasting
tasks** (``masks_speed.demo_tasks``: every market's regime and ALL tasks of the offline demo,
built by the retrain's own functions): scored on held-out training-era rows only (the selection
slice before ``segments.valid``), never on the valid/test segments. Each task's held-out rows are
split in time order: the earlier half ("calibration half") selects the checkpoint and fits the
temperature, the later half ("scored half") is scored, against the class prior (the task's
training label frequencies) on the same rows. Log-loss in nats; figures are means over tasks
with their standard error over tasks (regime and ALL tasks of a market share rows, so it is a
floor).

Definitions.

- **Single-task net** (PermutedDigits): the smallest width ``w₁`` of :data:`DENSE_WIDTHS` whose
  dense 64→w→w→10 net (biases, Adam lr 1e-3, 300 mini-batches of 128: the comparison's budget)
  reaches :data:`TARGET_ACC` test accuracy on one task, averaged over the seeds (a dense net's
  accuracy does not depend on the pixel permutation). On the forecasting tasks the dense net
  (same training, checkpoint chosen on the calibration half) is scored by its held-out log-loss
  gain over the prior; ``w₁`` is the smallest width whose mean gain is within one standard error
  of the best width's.
- **Masked base of width k×**: a frozen 64→k·w₁→k·w₁→C net with an edge-popup mask per task
  (``train_masks`` defaults: density 0.5, SGD lr 0.1, ``init_scale`` 0.01; digits 300 steps of
  128 rows, forecasting the demo config's schedule with checkpoints on the calibration half),
  k in :data:`MULTIPLES`. "Suffices" means its mean accuracy (gain) reaches the dense
  single-task net's.
- **Density**: edge-popup's exact kept fraction per layer, :data:`DENSITIES`, on the comparison's
  64→256→256→10 net and on the demo's 64→256→256→3 net.
- **Relatedness**: a reference permutation ``P`` and, for each f in :data:`SHARED`, a permutation
  equal to ``P`` on exactly ``round(64 f)`` pixels (the others are permuted among themselves with
  no fixed point); f = 1 is the same task under another name, hence another mask initialisation.
  Jaccard ``|A ∩ B| / |A ∪ B|`` of the kept weights of the reference's mask and the related
  task's, per layer and over all layers; Pearson r with a Fisher-z 95 % interval and Spearman ρ
  with a bootstrap 95 % interval (pairs resampled), over references × f × seeds. Masks of one
  reference share it, so the points are not independent: the intervals are optimistic. Markets:
  every pair of the demo's masks, grouped into the same market, the same regime label across
  markets, and unrelated (other market, other regime).
- **Compounding**: :data:`N_COMPOUND` PermutedDigits tasks in one base (64→256→256→10, with 0
  and 100 superfluous outputs), trained ``--group`` at a time with ``init_scale=1`` (what one-shot
  task inference needs, see ``cl_digits.py``). Each task's test logits right after its group are
  compared bit for bit with its logits after the last group (asserted equal). Then one-shot task
  inference (``infer_task``) among the first k masks, k in :data:`CANDIDATES`, on each of those k
  tasks' whole test sets and on one batch of 16 test rows each, for every objective the package
  offers (``entropy``; ``superfluous`` needs superfluous outputs).
- **Calibration**: hard-concrete masks (``store_probabilities=True``; digits: lr 300, no weight
  decay, τ annealed to 0.1, as in ``cl_digits.py``; forecasting the same on the demo net),
  answered by their bits (``p > 0.5``) or by the mean softmax of S sampled masks, S in
  :data:`SAMPLES`. Log-loss and top-label ECE over 10 equal-width confidence bins
  (``backtest.metrics.expected_calibration_error``), before and after one temperature fitted on
  held-out training rows: digits hold out 20 % of each task's training rows (never trained on) and
  score the test set; the forecasting tasks fit on the calibration half and score the scored half.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.special import log_softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cl_digits import load_split
from cl_methods import DENSE_LR, Budget, fit, mlp, seeded

from supsup_fin.backtest.metrics import expected_calibration_error
from supsup_fin.forecaster.calibration import log_loss, prior_log_loss, row_nll
from supsup_fin.masks import (
    FrozenNet,
    MaskBank,
    infer_task,
    jaccard_chance,
    predict_proba,
    train_masks,
)
from supsup_fin.masks.analysis import jaccard_from_counts, overlap_counts
from supsup_fin.masks.early_stop import default_grid, temperature_nll

TARGET_ACC = 0.95
DENSE_WIDTHS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DEMO_DENSE_WIDTHS = (4, 8, 16, 32, 64, 128, 256)
MULTIPLES = (1, 2, 3, 4, 8)
DENSITIES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
SHARED = (0.0, 0.25, 0.5, 0.75, 1.0)
N_COMPOUND = 250
CANDIDATES = (10, 50, 100, 250)
SAMPLES = (1, 4, 16, 64)
ECE_BINS = 10
HIDDEN = 256
BUDGET = Budget(steps=300, batch=128, seed=0)
HC = {"method": "hard_concrete", "lr": 300.0, "weight_decay": 0.0, "form_options": {"tau_final": 0.1}}
PARTS = ("width", "density", "overlap", "compounding", "calibration")

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---------------------------------------------------------------- shared figures


def mean_se(values: Sequence[float]) -> dict[str, float]:
    """Mean and its standard error (0 for one value) of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
            "n": len(v)}


def scaled_scores(z_cal: np.ndarray, y_cal: np.ndarray, z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log-loss, ECE and accuracy of ``softmax(z)`` on ``y``, before and after the temperature
    fitted on ``(z_cal, y_cal)`` (``z``: logits or log-probabilities ``[n, C]``)."""
    temp, _ = temperature_nll(z_cal, y_cal)
    out = {"temperature": temp, "accuracy": float((z.argmax(1) == y).mean())}
    for tag, s in (("raw", z), ("scaled", z / temp)):
        p = np.exp(log_softmax(np.asarray(s, np.float64), axis=1))
        out[f"log_loss_{tag}"] = log_loss(p, y)
        out[f"ece_{tag}"] = expected_calibration_error(p, y, bins=ECE_BINS)
    return out


def log_probs(net: FrozenNet, mask, x: np.ndarray) -> np.ndarray:
    """Log-softmax of the masked net's real-class logits, float64 ``[n, C]``."""
    with torch.no_grad():
        return torch.log_softmax(net(x, mask=mask).double(), dim=1).numpy()


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s)")


# ---------------------------------------------------------------- PermutedDigits


def digits_tasks(n_tasks: int, seed: int) -> dict[str, Split]:
    """``permuted_tasks``' tasks of split ``seed`` (task 0 unpermuted), as name -> (xtr, ytr, xte, yte)."""
    xtr, ytr, xte, yte = load_split(seed)
    rng = np.random.default_rng(seed)
    perms = [np.arange(64)] + [rng.permutation(64) for _ in range(n_tasks - 1)]
    return {f"perm{t:03d}": (xtr[:, p], ytr, xte[:, p], yte) for t, p in enumerate(perms)}


def dense_accuracy(width: int, seed: int, steps: int = BUDGET.steps) -> float:
    """Test accuracy of a dense 64→width→width→10 net trained with Adam on the unpermuted task of split ``seed``."""
    xtr, ytr, xte, yte = load_split(seed)
    net = seeded(seed, lambda: mlp((64, width, width, 10)))
    fit(net.parameters(), lambda xb, yb: F.cross_entropy(net(xb), yb), torch.from_numpy(xtr), torch.from_numpy(ytr),
        Budget(steps=steps, batch=BUDGET.batch, seed=seed), stream=0)
    with torch.no_grad():
        return float((net(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())


def mask_accuracies(hidden: int, density: float, n_tasks: int, seed: int, steps: int = BUDGET.steps) -> list[float]:
    """Test accuracy of each of ``n_tasks`` edge-popup masks (``train_masks`` defaults) on a frozen
    64→hidden→hidden→10 net of seed ``seed``."""
    tasks = digits_tasks(n_tasks, seed)
    net = FrozenNet((64, hidden, hidden, 10), seed=seed)
    bank = train_masks(net, {n: t[:2] for n, t in tasks.items()}, density=density, steps=steps,
                       batch_size=BUDGET.batch, seed=seed)
    return [float((log_probs(net, bank[n], t[2]).argmax(1) == t[3]).mean()) for n, t in tasks.items()]


def single_task_width(seeds: Sequence[int], widths: Sequence[int] = DENSE_WIDTHS, target: float = TARGET_ACC,
                      steps: int = BUDGET.steps) -> tuple[int, dict[int, dict]]:
    """The smallest dense width whose mean accuracy over ``seeds`` reaches ``target``, and every tried width's."""
    tried = {}
    for w in widths:
        tried[w] = mean_se([dense_accuracy(w, s, steps) for s in seeds])
        if tried[w]["mean"] >= target:
            return w, tried
    return widths[-1], tried


def related_perm(base: np.ndarray, shared: float, rng: np.random.Generator) -> np.ndarray:
    """A permutation equal to ``base`` at exactly ``round(len(base) * shared)`` positions."""
    n = len(base)
    moved = rng.choice(n, n - round(n * shared), replace=False)
    out = base.copy()
    if len(moved) == 1:
        raise ValueError(f"shared={shared} leaves one pixel to move among {n}; expected 0 or at least 2")
    out[moved] = base[np.roll(moved, 1)]  # a cycle through the moved positions: none keeps its pixel
    return out


def layer_jaccard(bank, a: str, b: str) -> list[float]:
    """Jaccard of masks ``a`` and ``b`` per layer, then over all layers (last entry)."""
    _, inter = overlap_counts(bank, [a, b])
    return [float(jaccard_from_counts(c)[0, 1]) for c in [*inter, inter.sum(axis=0)]]


def relatedness_pairs(seed: int, n_refs: int, hidden: int, steps: int, shared: Sequence[float] = SHARED,
                      density: float = 0.5) -> list[dict]:
    """Masks of ``n_refs`` reference permutations and their related tasks (one per ``shared``), trained
    together on one frozen net; the Jaccard of each reference–related pair per layer."""
    xtr, ytr, _, _ = load_split(seed)
    rng = np.random.default_rng(10_000 + seed)
    tasks, pairs = {}, []
    for r in range(n_refs):
        base = rng.permutation(64)
        tasks[f"ref{r}"] = (xtr[:, base], ytr)
        for f in shared:
            tasks[f"ref{r}_f{f:.2f}"] = (xtr[:, related_perm(base, f, rng)], ytr)
            pairs.append((f"ref{r}", f"ref{r}_f{f:.2f}", f))
    net = FrozenNet((64, hidden, hidden, 10), seed=seed)
    bank = train_masks(net, tasks, density=density, steps=steps, batch_size=BUDGET.batch, seed=seed)
    return [{"seed": seed, "ref": a, "shared": f, "jaccard": layer_jaccard(bank, a, b)} for a, b, f in pairs]


def correlation(x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Pearson r with its Fisher-z 95 % interval and Spearman ρ with a pairs-bootstrap 95 % interval."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    r = float(stats.pearsonr(x, y)[0])
    half = 1.96 / np.sqrt(max(n - 3, 1))
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    rho = float(stats.spearmanr(x, y)[0])
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boot.append(stats.spearmanr(x[i], y[i])[0])
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (np.nan, np.nan)
    return {"pearson": r, "pearson_ci": [float(np.tanh(z - half)), float(np.tanh(z + half))],
            "spearman": rho, "spearman_ci": [float(lo), float(hi)], "n": n}


def compounding_run(n_tasks: int, group: int, hidden: int, superfluous: int, steps: int, seed: int,
                    candidates: Sequence[int]) -> dict:
    """Train ``n_tasks`` PermutedDigits masks ``group`` at a time in one base; check every task's test
    logits are bit-identical after the last group to those right after its own; one-shot task
    inference among the first k masks for each k of ``candidates`` and each objective."""
    tasks = digits_tasks(n_tasks, seed)
    names = list(tasks)
    net = FrozenNet((64, hidden, hidden, 10), seed=seed, superfluous=superfluous)
    bank, first_logits = MaskBank(net), {}
    t0 = time.perf_counter()
    for start in range(0, n_tasks, group):
        block = names[start : start + group]
        bank = train_masks(net, {n: tasks[n][:2] for n in block}, density=0.5, steps=steps, batch_size=BUDGET.batch,
                           seed=seed, bank=bank, form_options={"init_scale": 1.0})
        with torch.no_grad():
            first_logits.update({n: net(tasks[n][2], mask=bank[n]) for n in block})
    train_s = time.perf_counter() - t0
    acc_first, acc_last, identical = [], [], []
    with torch.no_grad():
        for n in names:
            last = net(tasks[n][2], mask=bank[n])
            identical.append(torch.equal(first_logits[n], last))
            acc_first.append(float((first_logits[n].argmax(1).numpy() == tasks[n][3]).mean()))
            acc_last.append(float((last.argmax(1).numpy() == tasks[n][3]).mean()))
    if not all(identical):
        raise AssertionError(f"{identical.count(False)} of {n_tasks} tasks' predictions changed after later masks")
    objectives = ("entropy", "superfluous") if superfluous else ("entropy",)
    rng = np.random.default_rng(seed)
    rows16 = {n: rng.permutation(len(tasks[n][3]))[:16] for n in names}
    hits = {}
    t0 = time.perf_counter()
    for obj in objectives:
        for k in [c for c in candidates if c <= n_tasks]:
            cands = names[:k]
            full = [infer_task(net, bank, tasks[n][2], names=cands, objective=obj).task == n for n in cands]
            b16 = [infer_task(net, bank, tasks[n][2][rows16[n]], names=cands, objective=obj).task == n for n in cands]
            hits[f"{obj}, k={k}"] = {"objective": obj, "k": k, "full": float(np.mean(full)), "b16": float(np.mean(b16)),
                                     "full_se": float(np.sqrt(np.mean(full) * (1 - np.mean(full)) / k)),
                                     "b16_se": float(np.sqrt(np.mean(b16) * (1 - np.mean(b16)) / k))}
    return {"superfluous": superfluous, "n_tasks": n_tasks, "group": group, "hidden": hidden, "steps": steps,
            "train_s": round(train_s, 1), "infer_s": round(time.perf_counter() - t0, 1),
            "bit_identical": all(identical), "acc_right_after": mean_se(acc_first), "acc_after_all": mean_se(acc_last),
            "max_acc_change": float(np.max(np.abs(np.subtract(acc_first, acc_last)))), "inference": hits}


def hc_calibration(net: FrozenNet, tasks: dict[str, tuple], steps: int, seed: int, samples: Sequence[int],
                   holdout: dict[str, tuple] | None = None, batch: int | None = BUDGET.batch,
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Hard-concrete masks of ``tasks`` (name -> (X, y, X_cal, y_cal, X_score, y_score)) and, per task
    and read-out (``bits`` or ``S=s``), :func:`scaled_scores` with the temperature fitted on the cal rows."""
    bank = train_masks(net, {n: t[:2] for n, t in tasks.items()}, density=0.5, steps=steps, batch_size=batch,
                       seed=seed, store_probabilities=True, holdout=holdout, **HC)
    return {n: readouts(net, bank, n, *t[2:], samples, seed) for n, t in tasks.items()}


def readouts(net: FrozenNet, bank: MaskBank, name: str, xc: np.ndarray, yc: np.ndarray, xs: np.ndarray,
             ys: np.ndarray, samples: Sequence[int], seed: int) -> dict[str, dict[str, float]]:
    """:func:`scaled_scores` of mask ``name``'s bits (``bits``) and of the mean of S sampled masks
    (``S=s``), the temperature fitted on ``(xc, yc)``, scored on ``(xs, ys)``."""
    out = {"bits": scaled_scores(log_probs(net, bank[name], xc), yc, log_probs(net, bank[name], xs), ys)}
    for s in samples:
        zc, zs = (np.log(np.clip(predict_proba(net, bank, name, x, "stochastic", samples=s, seed=seed).double().numpy(),
                                 1e-12, 1.0)) for x in (xc, xs))
        out[f"S={s}"] = scaled_scores(zc, yc, zs, ys)
    return out


def summarise_readouts(per_task: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict]]:
    """Mean ± SE over tasks of every figure of every read-out of :func:`hc_calibration`, and of each
    figure's paired difference to the bits' on the same task (``<figure>_minus_bits``)."""
    readouts = next(iter(per_task.values()))
    keys = next(iter(readouts.values()))
    out = {r: {k: mean_se([t[r][k] for t in per_task.values()]) for k in keys} for r in readouts}
    for r in readouts:
        for k in ("log_loss_raw", "log_loss_scaled", "ece_raw", "ece_scaled"):
            out[r][f"{k}_minus_bits"] = mean_se([t[r][k] - t["bits"][k] for t in per_task.values()])
    return out


# ---------------------------------------------------------------- the demo's forecasting tasks


@functools.lru_cache(maxsize=2)
def demo_setup(markets: int | None) -> tuple:
    """The demo config and its tasks (first ``markets`` markets, or all) with each task's held-out
    rows split in time order: (name, market, regime, X, y, X_cal, y_cal, X_score, y_score, prior)."""
    from masks_speed import demo_tasks

    cfg, tasks = demo_tasks(markets)
    out = []
    for t in tasks:
        half = len(t.y_holdout) // 2
        prior = np.bincount(t.y, minlength=cfg.features.n_classes) / len(t.y)
        out.append((t.name, t.market, t.regime, t.X, t.y, t.X_holdout[:half], t.y_holdout[:half],
                    t.X_holdout[half:], t.y_holdout[half:], prior))
    return cfg, tuple(out)


def gain(z_cal: np.ndarray, y_cal: np.ndarray, z: np.ndarray, y: np.ndarray, prior: np.ndarray) -> dict[str, float]:
    """Scored-half log-loss after the calibration half's temperature, the prior's and the gain (prior −
    model); ``gain_recent`` is the gain over the calibration half's label frequencies (add-one smoothed),
    a constant forecast that knows the recent base rates."""
    temp, _ = temperature_nll(z_cal, y_cal)
    p = np.exp(log_softmax(z / temp, axis=1))
    model, base = float(row_nll(p, y).mean()), prior_log_loss(prior, y)
    recent = (np.bincount(y_cal, minlength=len(prior)) + 1.0) / (len(y_cal) + len(prior))
    return {"log_loss": model, "prior": base, "gain": base - model, "gain_recent": prior_log_loss(recent, y) - model,
            "temperature": temp}


@functools.lru_cache(maxsize=16)
def demo_masks(markets: int | None, hidden: int, density: float, steps: int | None, net_seed: int = 0,
               method: str = "edge_popup", select: bool = True) -> tuple[FrozenNet, MaskBank]:
    """Masks of every demo task on a frozen 64→hidden→hidden→3 net with the demo config's schedule;
    each task keeps its best checkpoint on its calibration half (``select=False``: the last step's)
    (``hard_concrete``: cl_digits' settings, probabilities stored)."""
    cfg, tasks = demo_setup(markets)
    t = cfg.training
    net = FrozenNet((tasks[0][3].shape[1], hidden, hidden, cfg.features.n_classes), seed=net_seed)
    options = dict(HC, store_probabilities=True) if method == "hard_concrete" else {
        "method": method, "lr": t.lr, "weight_decay": t.weight_decay, "form_options": cfg.masks.form_options()}
    bank = train_masks(net, {d[0]: (d[3], d[4]) for d in tasks}, density=density, steps=steps or t.steps,
                       batch_size=t.batch_size, momentum=t.momentum, seed=t.seed,
                       holdout={d[0]: (d[5], d[6]) for d in tasks} if select else None, patience=t.patience, **options)
    return net, bank


def demo_mask_gains(markets: int | None, hidden: int, density: float, seeds: Sequence[int]) -> dict:
    """:func:`gain` of the edge-popup masks of :func:`demo_masks` on frozen nets of ``seeds``: mean ± SE
    over tasks × seeds of ``gain`` and ``gain_recent``."""
    _, tasks = demo_setup(markets)
    per = []
    for s in seeds:
        net, bank = demo_masks(markets, hidden, density, None, s)
        per += [gain(log_probs(net, bank[d[0]], d[5]), d[6], log_probs(net, bank[d[0]], d[7]), d[8], d[9]) for d in tasks]
    return {k: mean_se([g[k] for g in per]) for k in ("gain", "gain_recent")}


def dense_demo_gain(task: tuple, width: int, seed: int, steps: int, batch: int) -> dict[str, float]:
    """A dense in→width→width→C net trained with Adam on one demo task, the checkpoint of
    :func:`~supsup_fin.masks.early_stop.default_grid` with the best calibration-half log-loss kept;
    its :func:`gain` on the scored half."""
    _, _, _, x, y, xc, yc, xs, ys, prior = task
    net = seeded(seed, lambda: mlp((x.shape[1], width, width, len(prior))))
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=DENSE_LR)
    g = torch.Generator().manual_seed(seed)
    grid, best = set(default_grid(steps)), (np.inf, None, None)
    for step in range(1, steps + 1):
        i = torch.randint(len(xt), (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xt[i]), yt[i]).backward()
        opt.step()
        if step in grid:
            with torch.no_grad():
                zc, zs = (torch.log_softmax(net(torch.from_numpy(np.asarray(a, np.float32))).double(), 1).numpy()
                          for a in (xc, xs))
            loss = temperature_nll(zc, yc)[1]
            if loss < best[0]:
                best = (loss, zc, zs)
    return gain(best[1], yc, best[2], ys, prior)


# ---------------------------------------------------------------- parts


def part_width(args: argparse.Namespace) -> dict:
    seeds = list(range(args.seeds))
    w1, tried = single_task_width(seeds)
    print(f"single-task net: dense 64→w→w→10 reaching {TARGET_ACC:.0%}: w₁ = {w1} "
          "(" + ", ".join(f"{w}: {100 * r['mean']:.1f}" for w, r in tried.items()) + ")", flush=True)
    digits = []
    for k in args.multiples:
        acc = [a for s in seeds for a in mask_accuracies(k * w1, 0.5, args.tasks, s)]
        dense = mean_se([dense_accuracy(k * w1, s) for s in seeds])
        digits.append({"multiple": k, "hidden": k * w1, "mask_acc": mean_se(acc), "dense_acc": dense,
                       "reaches_single_task": mean_se(acc)["mean"] >= tried[w1]["mean"]})
        print(f"  {k}× (hidden {k * w1}): masks {100 * digits[-1]['mask_acc']['mean']:.1f} ± "
              f"{100 * digits[-1]['mask_acc']['se']:.1f} %, dense at that width {100 * dense['mean']:.1f} %", flush=True)
    cfg, tasks = demo_setup(args.markets)
    t = cfg.training
    dense_demo = {w: mean_se([dense_demo_gain(d, w, s, t.steps, t.batch_size)["gain"] for d in tasks for s in seeds])
                  for w in args.demo_widths}
    best = max(dense_demo, key=lambda w: dense_demo[w]["mean"])
    d1 = min(w for w, r in dense_demo.items() if r["mean"] >= dense_demo[best]["mean"] - dense_demo[best]["se"])
    print("demo: dense gain over the prior (1e-3 nats) by width: "
          + ", ".join(f"{w}: {1e3 * r['mean']:+.2f} ± {1e3 * r['se']:.2f}" for w, r in dense_demo.items())
          + f"; single-task width {d1}", flush=True)
    demo = []
    for k in args.multiples:
        g = demo_mask_gains(args.markets, k * d1, 0.5, seeds)
        demo.append({"multiple": k, "hidden": k * d1, **g, "reaches_single_task": g["gain"]["mean"] >= dense_demo[d1]["mean"]})
        print(f"  {k}× (hidden {k * d1}): mask {_gains(g)}", flush=True)
    pipeline = demo_mask_gains(args.markets, HIDDEN, 0.5, seeds)
    print(f"  the pipeline's width {HIDDEN}: mask {_gains(pipeline)}")
    return {"target_acc": TARGET_ACC, "single_task_width": w1, "dense_by_width": tried, "digits": digits,
            "demo_dense_by_width": dense_demo, "demo_single_task_width": d1, "demo": demo,
            "demo_pipeline_width": {"hidden": HIDDEN, **pipeline}}


def _gains(g: dict) -> str:
    return (f"gain over the prior {1e3 * g['gain']['mean']:+.2f} ± {1e3 * g['gain']['se']:.2f}, over the recent base "
            f"rates {1e3 * g['gain_recent']['mean']:+.2f} ± {1e3 * g['gain_recent']['se']:.2f} (1e-3 nats)")


def part_density(args: argparse.Namespace) -> dict:
    seeds = list(range(args.seeds))
    dense = mean_se([dense_accuracy(args.hidden, s) for s in seeds])
    digits, demo = [], []
    for d in args.densities:
        acc = mean_se([a for s in seeds for a in mask_accuracies(args.hidden, d, args.tasks, s)])
        g = demo_mask_gains(args.markets, HIDDEN, d, seeds)
        digits.append({"density": d, "mask_acc": acc})
        demo.append({"density": d, **g})
        print(f"  density {d:.2f}: digits {100 * acc['mean']:.1f} ± {100 * acc['se']:.1f} %; demo {_gains(g)}", flush=True)
    print(f"  dense 64→{args.hidden}→{args.hidden}→10: {100 * dense['mean']:.1f} %")
    return {"hidden": args.hidden, "dense_acc": dense, "digits": digits, "demo": demo}


def part_overlap(args: argparse.Namespace) -> dict:
    pairs = [p for s in range(args.seeds) for p in relatedness_pairs(s, args.refs, args.hidden, BUDGET.steps)]
    layers = [f"layer {i}" for i in range(len(pairs[0]["jaccard"]) - 1)] + ["all layers"]
    f = [p["shared"] for p in pairs]
    corr = {name: correlation(f, [p["jaccard"][i] for p in pairs]) for i, name in enumerate(layers)}
    by_f = {str(v): {name: mean_se([p["jaccard"][i] for p in pairs if p["shared"] == v]) for i, name in enumerate(layers)}
            for v in SHARED}
    chance = float(jaccard_chance([0.5, 0.5])[0, 1])
    for name, c in corr.items():
        print(f"  {name}: Jaccard by f " + ", ".join(f"{v}: {by_f[v][name]['mean']:.3f}" for v in by_f)
              + f"; Pearson {c['pearson']:.2f} [{c['pearson_ci'][0]:.2f}, {c['pearson_ci'][1]:.2f}], Spearman "
              f"{c['spearman']:.2f} [{c['spearman_ci'][0]:.2f}, {c['spearman_ci'][1]:.2f}] (n={c['n']})", flush=True)
    _, tasks = demo_setup(args.markets)
    info = {d[0]: (d[1], d[2]) for d in tasks}
    markets, selected, from_start = {}, {}, {}
    for label, select in (("checkpoint chosen", True), ("all steps", False)):
        _, bank = demo_masks(args.markets, HIDDEN, 0.5, None, select=select)
        selected[label] = {n: bank.meta(n).get("selected_step", bank.meta(n)["steps"]) for n in info}
        markets[label] = market_overlap(bank, info, layers)
        _, start = demo_masks(args.markets, HIDDEN, 0.5, 1, select=False)
        from_start[label] = mean_se([layer_jaccard({"end": bank[n], "start": start[n]}, "end", "start")[-1] for n in info])
        for k, r in markets[label].items():
            print(f"  markets ({label}), {k} ({r['all layers']['n']} pairs): "
                  + ", ".join(f"{n} {v['mean']:.3f} ± {v['se']:.3f}" for n, v in r.items()), flush=True)
        print(f"    steps kept: {sorted(selected[label].values())}; Jaccard of each mask with its own mask after one "
              f"step: {from_start[label]['mean']:.3f} ± {from_start[label]['se']:.3f}", flush=True)
    return {"chance": chance, "layers": layers, "pairs": pairs, "by_shared": by_f, "correlation": corr,
            "markets": markets, "market_steps": selected, "market_jaccard_with_step_1": from_start}


def market_overlap(bank: MaskBank, info: dict[str, tuple[str, str]], layers: list[str]) -> dict[str, dict]:
    """Mean ± SE Jaccard per layer of every pair of ``info``'s masks (name -> (market, regime)), grouped
    into the same market, the same regime across markets, and unrelated pairs."""
    groups: dict[str, list[list[float]]] = {"same market": [], "same regime, other market": [], "unrelated": []}
    for a, b in combinations(info, 2):
        (ma, ra), (mb, rb) = info[a], info[b]
        kind = "same market" if ma == mb else "same regime, other market" if ra == rb else "unrelated"
        groups[kind].append(layer_jaccard(bank, a, b))
    return {k: {name: mean_se([v[i] for v in rows]) for i, name in enumerate(layers)} for k, rows in groups.items() if rows}


def part_compounding(args: argparse.Namespace) -> dict:
    runs = []
    for sup in (0, 100):
        r = compounding_run(args.compound, args.group, args.hidden, sup, args.compound_steps, 0, CANDIDATES)
        runs.append(r)
        print(f"  superfluous {sup}: {r['n_tasks']} masks, trained in {r['train_s']} s; predictions bit-identical "
              f"after all: {r['bit_identical']}; accuracy {100 * r['acc_after_all']['mean']:.1f} % "
              f"(right after training {100 * r['acc_right_after']['mean']:.1f} %)", flush=True)
        for key, h in r["inference"].items():
            print(f"    one-shot inference, {key}: whole test set {100 * h['full']:.1f} %, 16 rows {100 * h['b16']:.1f} %",
                  flush=True)
    return {"runs": runs}


def part_calibration(args: argparse.Namespace) -> dict:
    per_task = {}
    for s in range(args.seeds):
        xtr, ytr, xte, yte = load_split(s)
        idx = np.random.default_rng(20_000 + s).permutation(len(ytr))
        cal, fit_rows = idx[: len(idx) // 5], idx[len(idx) // 5 :]
        rng = np.random.default_rng(s)
        perms = [np.arange(64)] + [rng.permutation(64) for _ in range(args.tasks - 1)]
        tasks = {f"perm{t:03d}": (xtr[fit_rows][:, p], ytr[fit_rows], xtr[cal][:, p], ytr[cal], xte[:, p], yte)
                 for t, p in enumerate(perms)}
        net = FrozenNet((64, args.hidden, args.hidden, 10), seed=s)
        per_task.update({f"s{s}/{n}": r for n, r in hc_calibration(net, tasks, BUDGET.steps, s, SAMPLES).items()})
    digits = summarise_readouts(per_task)
    _, dtasks = demo_setup(args.markets)
    net, bank = demo_masks(args.markets, HIDDEN, 0.5, None, 0, "hard_concrete")
    demo_per = {}
    for d in dtasks:
        demo_per[d[0]] = readouts(net, bank, d[0], *d[5:9], SAMPLES, 0)
        for r in demo_per[d[0]].values():
            r["prior"] = prior_log_loss(d[9], d[8])
    demo = summarise_readouts(demo_per)
    for bench, summ in (("digits", digits), ("demo", demo)):
        for r, v in summ.items():
            print(f"  {bench} {r:>5}: log-loss {v['log_loss_raw']['mean']:.4f} → {v['log_loss_scaled']['mean']:.4f} "
                  f"(± {v['log_loss_scaled']['se']:.4f}), ECE {v['ece_raw']['mean']:.4f} → {v['ece_scaled']['mean']:.4f} "
                  f"(± {v['ece_scaled']['se']:.4f}), accuracy {v['accuracy']['mean']:.4f}, T {v['temperature']['mean']:.2f}"
                  + (f", prior {v['prior']['mean']:.4f}" if "prior" in v else "")
                  + ("" if r == "bits" else f"; after temperature minus the bits' (paired): log-loss "
                     f"{v['log_loss_scaled_minus_bits']['mean']:+.4f} ± {v['log_loss_scaled_minus_bits']['se']:.4f}, ECE "
                     f"{v['ece_scaled_minus_bits']['mean']:+.4f} ± {v['ece_scaled_minus_bits']['se']:.4f}"), flush=True)
    return {"samples": list(SAMPLES), "ece_bins": ECE_BINS, "digits": digits, "demo": demo,
            "digits_per_task": per_task, "demo_per_task": demo_per}


# ---------------------------------------------------------------- plots


def _errorbar(ax, x, stats_: Sequence[dict], scale: float, label: str, **kw) -> None:
    ax.errorbar(x, [scale * s["mean"] for s in stats_], yerr=[scale * s["se"] for s in stats_], marker="o", ms=4,
                capsize=3, label=label, **kw)


def _figure(panels: int, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * panels, 4.2 * rows), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(rows, panels)).ravel()


def plot_width(r: dict, path: Path) -> None:
    fig, (a, b) = _figure(2)
    ks = [d["multiple"] for d in r["digits"]]
    _errorbar(a, ks, [d["mask_acc"] for d in r["digits"]], 100, "masks, density 0.5")
    _errorbar(a, ks, [d["dense_acc"] for d in r["digits"]], 100, "dense net of that width", ls="--")
    a.axhline(100 * r["dense_by_width"][r["single_task_width"]]["mean"], color="grey", lw=1,
              label=f"single-task dense, width {r['single_task_width']}")
    a.set(xlabel="base width / single-task width", ylabel="test accuracy (%)", title="PermutedDigits")
    _errorbar(b, ks, [d["gain"] for d in r["demo"]], 1e3, "masks, density 0.5: over the prior")
    _errorbar(b, ks, [d["gain_recent"] for d in r["demo"]], 1e3, "the same, over the recent base rates", ls="--")
    b.axhline(1e3 * r["demo_dense_by_width"][r["demo_single_task_width"]]["mean"], color="grey", lw=1,
              label=f"single-task dense, width {r['demo_single_task_width']}")
    b.axhline(0, color="black", lw=0.5)
    b.set(xlabel="base width / single-task width", ylabel="log-loss gain over the prior (1e-3 nats)",
          title="demo forecasting tasks (scored half)")
    for ax in (a, b):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def plot_density(r: dict, path: Path) -> None:
    fig, (a, b) = _figure(2)
    d = [x["density"] for x in r["digits"]]
    _errorbar(a, d, [x["mask_acc"] for x in r["digits"]], 100, f"masks, 64→{r['hidden']}→{r['hidden']}→10")
    a.axhline(100 * r["dense_acc"]["mean"], color="grey", lw=1, label="dense net, same width")
    a.set(xlabel="density (kept fraction)", ylabel="test accuracy (%)", title="PermutedDigits")
    _errorbar(b, d, [x["gain"] for x in r["demo"]], 1e3, "masks, 64→256→256→3: over the prior")
    _errorbar(b, d, [x["gain_recent"] for x in r["demo"]], 1e3, "the same, over the recent base rates", ls="--")
    b.axhline(0, color="black", lw=0.5)
    b.set(xlabel="density (kept fraction)", ylabel="log-loss gain over the prior (1e-3 nats)",
          title="demo forecasting tasks (scored half)")
    for ax in (a, b):
        ax.axvspan(0.1, 0.5, color="tab:green", alpha=0.08, label="claimed typical 10–50 %")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def plot_overlap(r: dict, path: Path) -> None:
    fig, (a, b) = _figure(2)
    fs = [float(v) for v in r["by_shared"]]
    for name in r["layers"]:
        c = r["correlation"][name]
        _errorbar(a, fs, [r["by_shared"][v][name] for v in r["by_shared"]], 1,
                  f"{name} (r = {c['pearson']:.2f} [{c['pearson_ci'][0]:.2f}, {c['pearson_ci'][1]:.2f}])")
    a.axhline(r["chance"], color="grey", lw=1, ls=":", label="independent masks (chance)")
    a.set(xlabel="fraction of pixels the permutations share", ylabel="Jaccard of the two masks",
          title="PermutedDigits: overlap vs relatedness")
    cols = [(label, k) for label, groups in r["markets"].items() for k in groups]
    for j, (label, style) in enumerate((("checkpoint chosen", None), ("all steps", "//"))):
        mine = [(lab, k) for lab, k in cols if lab == label]
        vals = [r["markets"][lab][k]["all layers"] for lab, k in mine]
        b.bar([cols.index(c) for c in mine], [v["mean"] for v in vals], 0.7, yerr=[v["se"] for v in vals], hatch=style,
              label=f"all layers, {label}", capsize=2)
    kinds = [k for _, k in cols]
    b.axhline(r["chance"], color="grey", lw=1, ls=":")
    b.set_xticks(range(len(kinds)), kinds, fontsize=7, rotation=20)
    b.set(ylabel="Jaccard of the two masks", title="demo markets: pairs of masks")
    b.set_ylim(min(0.3, r["chance"] - 0.03), None)
    for ax in (a, b):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def plot_compounding(r: dict, path: Path) -> None:
    fig, (a,) = _figure(1)
    for run in r["runs"]:
        by_obj: dict[str, list] = {}
        for h in run["inference"].values():
            by_obj.setdefault(h["objective"], []).append(h)
        for obj, hs in by_obj.items():
            for key, style in (("full", "-"), ("b16", "--")):
                a.errorbar([h["k"] for h in hs], [100 * h[key] for h in hs], yerr=[100 * h[f"{key}_se"] for h in hs],
                           marker="o", ms=4, capsize=3, ls=style,
                           label=f"superfluous {run['superfluous']}, {obj}, {'whole test set' if key == 'full' else '16 rows'}")
    a.set_xscale("log")
    a.set(xlabel="candidate masks k", ylabel="one-shot task inference hit rate (%)",
          title=f"PermutedDigits, {r['runs'][0]['n_tasks']} masks in one base")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def plot_calibration(r: dict, path: Path) -> None:
    fig, axes = _figure(2, 2)
    reads = list(r["digits"])
    x = np.arange(len(reads))
    for col, (bench, key, label) in enumerate([("digits", "ece", "ECE"), ("digits", "log_loss", "log-loss"),
                                                ("demo", "ece", "ECE"), ("demo", "log_loss", "log-loss")]):
        ax = axes[col]
        for tag, style in (("raw", "-"), ("scaled", "--")):
            _errorbar(ax, x, [r[bench][k][f"{key}_{tag}"] for k in reads], 1,
                      "before temperature" if tag == "raw" else "after temperature", ls=style)
        if bench == "demo" and key == "log_loss":
            ax.axhline(r["demo"]["bits"]["prior"]["mean"], color="grey", lw=1, label="class prior")
        ax.set_xticks(x, reads, fontsize=8)
        ax.set(title=f"{'PermutedDigits' if bench == 'digits' else 'demo forecasting'}: {label}", xlabel="read-out")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


RUNNERS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict, Path], None]]] = {
    "width": (part_width, plot_width),
    "density": (part_density, plot_density),
    "overlap": (part_overlap, plot_overlap),
    "compounding": (part_compounding, plot_compounding),
    "calibration": (part_calibration, plot_calibration),
}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 seed, 3 tasks, one market, 20 masks in the compounding base, no plots")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=10, help="PermutedDigits tasks per seed (width, density, calibration)")
    ap.add_argument("--hidden", type=int, default=HIDDEN, help="hidden width of the density/overlap/compounding base")
    ap.add_argument("--refs", type=int, default=4, help="reference permutations per seed (overlap)")
    ap.add_argument("--compound", type=int, default=N_COMPOUND, help="masks in the compounding base")
    ap.add_argument("--compound-steps", type=int, default=150, help="training steps of each compounding mask")
    ap.add_argument("--group", type=int, default=50, help="compounding masks trained together")
    ap.add_argument("--markets", type=int, default=None, help="demo markets (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--plot-dir", type=Path, default=None, help="where the plots go (default: docs; with --quick none)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cl_claims.json"))
    args = ap.parse_args(argv)
    args.multiples, args.densities, args.demo_widths = MULTIPLES, DENSITIES, DEMO_DENSE_WIDTHS
    if args.quick:
        args.seeds, args.tasks, args.refs, args.compound, args.compound_steps, args.group = 1, 3, 2, 20, 40, 10
        args.markets, args.hidden, args.multiples, args.densities = 1, 64, (1, 2), (0.1, 0.5)
        args.demo_widths = (8, 32)
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    elif args.plot_dir is None:
        args.plot_dir = Path("docs")
    torch.set_num_threads(args.threads)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"parts": {}}
    doc["machine"] = machine()
    for part in PARTS if args.part == "all" else (args.part,):
        run, plot = RUNNERS[part]
        print(f"\n== {part}", flush=True)
        t0 = time.perf_counter()
        result = run(args)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["command"] = " ".join(["python", "benchmarks/cl_claims.py", *(sys.argv[1:] if argv is None else argv)])
        doc["parts"][part] = result
        print(f"{part}: {result['wall_s']} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=float))
        if args.plot_dir is not None:
            args.plot_dir.mkdir(parents=True, exist_ok=True)
            plot(result, args.plot_dir / f"cl_{part}.png")
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
