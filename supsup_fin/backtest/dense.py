"""Dense baselines: trained networks of the supermask net's shape, many trained at once.

The backtest compares the supermask forecaster with dense, bias-free ReLU MLPs of the same
``sizes`` whose weights *are* trained: one per market from scratch each window, one per market
fine-tuned window after window (``init=``), one per (market, regime) for the storage comparison.

All nets of a call train together, as :func:`supsup_fin.masks.train.train_masks` trains masks:
the weights of the T nets are stacked on a leading task axis (``[T, out, in]`` per layer) and
applied with ``torch.bmm``; one Adam step updates all of them. The loss is the sum over tasks
of each task's mean cross-entropy, so each net's gradient is its own loss's gradient, and Adam
is elementwise, so a net's updates do not depend on which other nets share the batch.

Same data, same steps as the mask trainer: each task draws ``batch_size`` rows with replacement
per step from ``task_generator(seed, name, 1)`` -- the very rows ``train_masks`` draws for a
task of that name and seed, also when a task has fewer than ``batch_size`` rows -- and the
learning rate follows the same cosine schedule from ``lr`` to 0 over ``steps``. Fresh nets start
from a Kaiming-uniform init for ReLU, ``U(±sqrt(6 / fan_in))``, drawn from
``task_generator(seed, name, 0)``; so a net depends only on its own data, ``seed`` and name
(``streams=`` gives a net the seed and name of another call: the walk-forward trains every
window's nets in one call, each with its window's seed).

Batched equals alone: on CPU with one torch thread, a task trained alone and in a batch gives
bit-identical weights (every task's minibatch has the same length, so its matrix products are the
same). With several threads MKL may split a lone task's matrix products differently from a
batch's, so results agree to float rounding (~1e-8 after 50 steps), as they do on GPUs.

The optimiser is ``torch.optim.Adam`` (``weight_decay`` is its L2 term, added to the gradient),
not the masks' SGD: trained dense weights need an adaptive step to be a fair baseline at the
same step budget, and Adam stays exact under batching because every operation is elementwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from supsup_fin._validate import is_int as _is_int
from supsup_fin.errors import DataError
from supsup_fin.masks.early_stop import HeldOutSelector, kept_rows
from supsup_fin.masks.net import as_tensor, mlp
from supsup_fin.masks.train import task_generator

logger = logging.getLogger(__name__)

# Random streams of a task, shared with the mask trainer (batches are the same rows).
_STREAM_INIT, _STREAM_BATCHES = 0, 1
_BYTES_PER_WEIGHT = 4  # float32

TaskArrays = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


@dataclass
class DenseBank:
    """Trained dense nets of one shape, by name.

    Attributes
    ----------
    sizes : tuple of int
        Layer widths ``(in, hidden..., classes)``; every net is bias-free with ReLU between layers.
    weights : dict name -> list of tensors
        Per net, float32 CPU weights, layer ``l`` shaped ``[sizes[l + 1], sizes[l]]``.
    final_loss : dict name -> float
        Each net's minibatch loss at the last training step (empty for hand-built banks).
    device : torch.device
        Where :meth:`logits` runs (:func:`train_dense`: where the nets trained); results come back on CPU.
    """

    sizes: tuple[int, ...]
    weights: dict[str, list[torch.Tensor]]
    final_loss: dict[str, float] = field(default_factory=dict)
    calibrators: dict[str, Any] = field(default_factory=dict)
    """name -> a calibration map (:class:`~supsup_fin.forecaster.calibration.Calibrator`) that
    :meth:`predict_proba` applies, fitted on held-out rows by the caller."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.sizes = _check_sizes(self.sizes)
        shapes = _shapes(self.sizes)
        for name, layers in self.weights.items():
            found = [tuple(w.shape) for w in layers]
            if found != shapes:
                raise DataError(f"dense net {name!r}: weight shapes {found}, sizes {self.sizes} need {shapes}")

    def __contains__(self, name: object) -> bool:
        return name in self.weights

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def names(self) -> list[str]:
        """Net names, in training order."""
        return list(self.weights)

    def _get(self, name: str) -> list[torch.Tensor]:
        try:
            return self.weights[name]
        except KeyError:
            raise KeyError(f"no dense net named {name!r}; the bank holds {self.names}") from None

    def logits(self, name: str, X: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Float32 CPU logits ``[N, classes]`` of ``X [N, in]`` through net ``name`` (run on :attr:`device`, no grad)."""
        weights = self._get(name)
        x = _as_float32(X, f"dense net {name!r}: X")
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise DataError(f"dense net {name!r}: X must be shaped [N, {self.sizes[0]}], got {tuple(x.shape)}")
        with torch.no_grad():
            h, last = x.to(self.device, torch.float32), len(weights) - 1
            for i, w in enumerate(weights):
                h = h @ w.to(self.device).t()
                if i < last:
                    h = torch.relu(h)
        return h.cpu()

    def predict_proba(self, name: str, X: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``[N, classes]`` (float64 softmax of the float32 logits, through the net's
        calibration map when it has one)."""
        logits = self.logits(name, X).double()
        if name in self.calibrators:
            return self.calibrators[name](torch.log_softmax(logits, dim=1).numpy())
        return torch.softmax(logits, dim=1).numpy()

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        """Float32 storage in bytes of the nets ``names`` (default: all of them)."""
        chosen = self.names if names is None else list(names)
        return sum(_BYTES_PER_WEIGHT * sum(w.numel() for w in self._get(n)) for n in chosen)

    def copy_of(self, name: str) -> list[torch.Tensor]:
        """Cloned weights of ``name`` (a start for fine-tuning: ``init={name: bank.copy_of(name)}``)."""
        return [w.clone() for w in self._get(name)]


def train_dense(
    tasks: Mapping[str, TaskArrays],
    sizes: Sequence[int],
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    init: Mapping[str, Sequence[torch.Tensor]] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    holdout: Mapping[str, TaskArrays] | None = None,
    checkpoints: Sequence[int] | None = None,
    patience: int = 3,
    streams: Mapping[str, tuple[int, str]] | None = None,
) -> DenseBank:
    """Train one dense bias-free ReLU MLP per task, all tasks in one batched loop.

    Parameters
    ----------
    tasks : mapping name -> (X, y)
        ``X`` float ``[n, sizes[0]]`` (finite), ``y`` int ``[n]`` with labels in ``[0, sizes[-1])``;
        ``n >= 1`` may differ between tasks.
    sizes : sequence of int
        Layer widths ``(in, hidden..., classes)``, as for :class:`~supsup_fin.masks.net.FrozenNet`.
    steps, batch_size : int
        Optimiser steps (>= 1) and rows drawn per task and step (>= 1; with replacement).
    lr, weight_decay : float
        Adam's peak learning rate (cosine-annealed to 0 over ``steps``) and L2 coefficient.
    seed : int
        Non-negative; with a task's name it fixes the task's init and minibatches.
    init : mapping name -> list of tensors, optional
        Start these nets from the given weights (fine-tuning); the tensors are not modified.
    device : str or torch.device
        Where to train; the bank's weights come back on CPU, and its :meth:`~DenseBank.logits` run on ``device``.
    progress : callable(step, steps), optional
        Called every ~10% of the steps and at the end.
    holdout, checkpoints, patience : optional
        Held-out rows per net: each net keeps its weights from the checkpoint with the best
        temperature-scaled held-out log-loss, as :func:`~supsup_fin.masks.train_masks` keeps
        masks (same grid and patience rules); nets without held-out rows train all ``steps``.
    streams : mapping name -> (seed, stream name), optional
        The seed and name that fix these nets' init and minibatches instead of ``(seed, name)``.

    Returns
    -------
    DenseBank
        One net per task, in ``tasks`` order.
    """
    sizes = _check_sizes(sizes)
    _check_hyperparameters(steps, batch_size, lr, weight_decay, seed)
    names = list(tasks)
    for name in names:
        if not isinstance(name, str) or not name:
            raise DataError(f"task names must be non-empty strings, got {name!r}")
    starts, keys = dict(init or {}), dict(streams or {})
    for what, given in (("init", starts), ("streams", keys)):
        unknown = sorted(set(given) - set(names), key=str)
        if unknown:
            raise DataError(f"{what} names tasks that are not being trained: {unknown} (tasks: {names})")
    for name, key in keys.items():
        if not (isinstance(key, tuple) and len(key) == 2 and _is_int(key[0]) and key[0] >= 0 and isinstance(key[1], str)):
            raise DataError(f"streams[{name!r}] must be (non-negative seed, name), got {key!r}")
    stream_of = {n: keys.get(n, (seed, n)) for n in names}
    if not names:
        return DenseBank(sizes, {})
    data = {name: _validate_task(name, *tasks[name], sizes) for name in names}
    start_weights = {name: _validate_init(name, starts[name], sizes) for name in starts}
    dev = torch.device(device)
    selector = None
    if holdout:
        selector = HeldOutSelector.for_tasks(names, holdout, lambda n, x, y: _validate_task(n, x, y, sizes),
                                             sizes[-1], steps, checkpoints, patience, dev, what="dense nets")
    logger.info("training %d dense nets %s on %s for %d steps: %s", len(names), sizes, dev, steps, names)
    final, losses = _train(data, start_weights, names, sizes, dev, steps, batch_size, lr, weight_decay, stream_of,
                           progress, selector)
    weights = {name: [layer[t].clone() for layer in final] for t, name in enumerate(names)}
    return DenseBank(sizes, weights, dict(zip(names, losses)), device=dev)


def _train(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    starts: dict[str, list[torch.Tensor]],
    names: list[str],
    sizes: tuple[int, ...],
    dev: torch.device,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    streams: dict[str, tuple[int, str]],
    progress: Callable[[int, int], None] | None,
    selector: HeldOutSelector | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """The batched loop; returns CPU float32 weights ``[T, out, in]`` per layer (each net's best
    checkpoint's with a ``selector``) and last losses. With a ``selector`` a net whose choice is
    final leaves the batch at that checkpoint (the others go on exactly as they would have)."""
    n_tasks = len(names)
    active, losses = list(range(n_tasks)), [0.0] * n_tasks  # the net of each row of the batch
    params = [p.to(dev).requires_grad_(True) for p in _initial_weights(names, starts, sizes, streams)]
    counts = [int(data[n][0].shape[0]) for n in names]
    gens = [task_generator(*streams[n], _STREAM_BATCHES) for n in names]
    x_all = torch.cat([data[n][0] for n in names]).to(dev)
    y_all = torch.cat([data[n][1] for n in names]).to(dev)
    offsets = torch.tensor(np.cumsum([0, *counts[:-1]]), dtype=torch.int64).view(n_tasks, 1)

    # The fused kernel is one pass over weights, gradients and both moments (the mask trainer's SGD
    # is fused the same way); the per-tensor loop makes ~10 passes. Same update rule, elementwise.
    fused = True if dev.type in ("cpu", "cuda") else None
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    every = max(1, steps // 10)
    loss_t = torch.zeros(n_tasks)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
        rows = torch.stack([torch.randint(n, (batch_size,), generator=g) for n, g in zip(counts, gens)])
        idx = (rows + offsets).view(-1).to(dev)
        xb = x_all[idx].view(len(active), batch_size, -1)
        logits = batched_dense_logits(params, xb)
        ce = F.cross_entropy(logits.reshape(len(active) * batch_size, -1), y_all[idx], reduction="none")
        loss_t = ce.view(len(active), batch_size).mean(dim=1)
        opt.zero_grad(set_to_none=True)
        loss_t.sum().backward()
        opt.step()
        if progress is not None and ((step + 1) % every == 0 or step + 1 == steps):
            progress(step + 1, steps)
        if selector is not None and selector.due(step + 1):
            current = [p.detach() for p in params]
            selector.observe(step + 1, current, current, tasks=active)
            if selector.done:
                break
            live = [r for r, t in enumerate(active) if not selector.final(t)]
            if len(live) < len(active):
                for t, v in zip(active, loss_t.detach().cpu().tolist()):
                    losses[t] = v
                logger.debug("step %d: %d of %d nets final, training the other %d", step + 1, n_tasks - len(live),
                             n_tasks, len(live))
                keep = torch.tensor(live, dtype=torch.int64)
                params, opt = kept_rows(params, opt, keep.to(dev))
                active = [active[r] for r in live]
                gens, counts, offsets = [gens[r] for r in live], [counts[r] for r in live], offsets[keep]
    if selector is None:
        final = [p.detach().to("cpu", torch.float32) for p in params]
    else:
        chosen = [selector.chosen(t)[0] for t in range(n_tasks)]
        final = [torch.stack([c[layer] for c in chosen]).to(torch.float32) for layer in range(len(params))]
    for t, v in zip(active, loss_t.detach().cpu().tolist()):
        losses[t] = v
    return final, losses


def batched_dense_logits(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of T dense nets at once.

    Parameters
    ----------
    weights : list of ``[T, out, in]`` tensors
    x : ``[T, B, in]``

    Returns
    -------
    torch.Tensor ``[T, B, classes]``
    """
    return mlp(x, weights)


def _initial_weights(
    names: list[str], starts: dict[str, list[torch.Tensor]], sizes: tuple[int, ...],
    streams: dict[str, tuple[int, str]],
) -> list[torch.Tensor]:
    """Stacked CPU float32 start weights ``[T, out, in]`` per layer."""
    per_task = []
    for name in names:
        if name in starts:
            per_task.append(starts[name])
            continue
        g = task_generator(*streams[name], _STREAM_INIT)
        layers = []
        for out_f, in_f in _shapes(sizes):
            bound = math.sqrt(6.0 / in_f)
            layers.append((torch.rand((out_f, in_f), generator=g) * 2.0 - 1.0) * bound)
        per_task.append(layers)
    return [torch.stack([layers[i] for layers in per_task]) for i in range(len(sizes) - 1)]


def _validate_task(
    name: str, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, sizes: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU float32 ``[n, in]`` and int64 ``[n]`` tensors of one task, or a DataError naming it."""
    if not isinstance(x, torch.Tensor | np.ndarray) or not isinstance(y, torch.Tensor | np.ndarray):
        raise DataError(
            f"task {name!r}: X and y must be numpy arrays or torch tensors, got {type(x).__name__}, {type(y).__name__}"
        )
    xt = _as_float32(x, f"task {name!r}: X")
    if xt.dim() != 2 or xt.shape[1] != sizes[0]:
        raise DataError(f"task {name!r}: X must be shaped [n, {sizes[0]}], got {tuple(xt.shape)}")
    if xt.shape[0] < 1:
        raise DataError(f"task {name!r}: X is empty; expected at least 1 row, got shape {tuple(xt.shape)}")
    yt = torch.from_numpy(np.array(y)) if isinstance(y, np.ndarray) else y.detach()
    if yt.dim() != 1 or yt.shape[0] != xt.shape[0]:
        raise DataError(f"task {name!r}: y must be shaped [{xt.shape[0]}] like X's rows, got {tuple(yt.shape)}")
    if yt.is_floating_point() or yt.is_complex() or yt.dtype == torch.bool:
        raise DataError(f"task {name!r}: y must hold integer class labels, got dtype {yt.dtype}")
    xt = xt.detach().to("cpu", torch.float32)
    yt = yt.to("cpu", torch.int64)
    finite = torch.isfinite(xt).all(dim=1)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0, 0])
        raise DataError(f"task {name!r}: X must be finite, got NaN/inf (first at row {row})")
    lo, hi = int(yt.min()), int(yt.max())
    if lo < 0 or hi >= sizes[-1]:
        raise DataError(f"task {name!r}: labels must lie in [0, {sizes[-1]}), got values in [{lo}, {hi}]")
    return xt, yt


def _validate_init(name: str, layers: Sequence[torch.Tensor], sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """Cloned CPU float32 start weights of ``name``, or a DataError naming it."""
    shapes = _shapes(sizes)
    if isinstance(layers, torch.Tensor | np.ndarray) or not isinstance(layers, Sequence):
        raise DataError(f"init of task {name!r}: expected a list of {len(shapes)} weight tensors, got {type(layers).__name__}")
    if not all(isinstance(w, torch.Tensor | np.ndarray) for w in layers):
        found = [type(w).__name__ for w in layers]
        raise DataError(f"init of task {name!r}: expected weight tensors, got {found}")
    out = [_as_float32(w, f"init of task {name!r}").detach().to("cpu", torch.float32).clone() for w in layers]
    found = [tuple(w.shape) for w in out]
    if found != shapes:
        raise DataError(f"init of task {name!r}: expected weight shapes {shapes} for sizes {sizes}, got {found}")
    if not all(bool(torch.isfinite(w).all()) for w in out):
        raise DataError(f"init of task {name!r}: weights must be finite, got NaN/inf")
    return out


def _as_float32(x: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """Float32 tensor of real-valued ``x``, or a DataError starting with ``where``."""
    if not isinstance(x, torch.Tensor | np.ndarray):
        raise DataError(f"{where}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        real = not (x.is_complex() or x.dtype == torch.bool)
    else:
        real = np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)
    if not real:
        raise DataError(f"{where}: expected real numbers, got dtype {x.dtype}")
    return as_tensor(x, np.float32).to(torch.float32)


def _shapes(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    found = tuple(sizes)
    if len(found) < 2 or not all(_is_int(s) and s >= 1 for s in found):
        raise ValueError(f"sizes must be >= 2 positive ints (in, hidden..., classes), got {found}")
    return tuple(int(s) for s in found)


def _check_hyperparameters(steps: int, batch_size: int, lr: float, weight_decay: float, seed: int) -> None:
    checks = [
        ("steps", steps, _is_int(steps) and steps >= 1, "an int >= 1"),
        ("batch_size", batch_size, _is_int(batch_size) and batch_size >= 1, "an int >= 1"),
        ("lr", lr, isinstance(lr, int | float) and math.isfinite(lr) and lr > 0, "a finite float > 0"),
        ("weight_decay", weight_decay, isinstance(weight_decay, int | float) and weight_decay >= 0, ">= 0"),
        ("seed", seed, _is_int(seed) and seed >= 0, "a non-negative int"),
    ]
    for what, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{what} must be {expected}, got {value!r}")
