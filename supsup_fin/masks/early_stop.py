"""Per-task early stopping on held-out rows: each task keeps its mask (or net) from the best checkpoint.

At each step of a grid the trainer hands over every task's current masks; each task's held-out
log-loss after temperature scaling (one fitted scalar, so a mask is judged on what calibration
can make of it, not on its raw over-confidence) decides whether this checkpoint is its best so
far. A task that has not improved for ``patience`` checkpoints stops looking (its choice is
final), so a task's result depends on its own data only, never on which tasks share its group;
when every task has stopped, training can end early.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from supsup_fin._numeric import logsumexp_axis1
from supsup_fin.errors import DataError
from supsup_fin.masks.net import mlp

_LOG_T_BOUNDS = (np.log(0.05), np.log(200.0))


def temperature_nll(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(T, nll)``: the temperature minimising the mean NLL of ``softmax(z / T)`` and that NLL.

    ``z`` ``[n, C]`` logits or log-probabilities, ``y`` ``[n]`` labels; a bounded scalar search over
    ``log T`` in ``[log 0.05, log 200]``.
    """
    z = np.asarray(z, np.float64)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float((logsumexp_axis1(s) - s[rows, y]).mean())

    res = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x)), float(res.fun)


GRID_FRACTIONS = (1 / 30, 1 / 15, 1 / 10, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1)


def default_grid(steps: int) -> list[int]:
    """Checkpoints dense early and sparse late (10, 20, 30, 50, 75, 100, 150, 200, 300 for 300 steps):
    small or noisy tasks are best stopped early, and each checkpoint costs a held-out pass."""
    return sorted({max(1, round(steps * f)) for f in GRID_FRACTIONS})


def check_grid(checkpoints: Sequence[int], steps: int) -> list[int]:
    """The sorted checkpoint steps within ``[1, steps]``, always ending at ``steps``."""
    bad = [c for c in checkpoints if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1]
    if bad:
        raise ValueError(f"checkpoints must be ints >= 1, got {list(checkpoints)}")
    return sorted({int(c) for c in checkpoints if c <= steps} | {steps})


class HeldOutSelector:
    """Tracks each task's best checkpoint by temperature-scaled held-out log-loss.

    Parameters
    ----------
    names : task names, in the trainer's task order.
    holdout : name -> (X ``[n, in]`` float32, y ``[n]`` int64) CPU tensors; every task needs rows.
    n_classes : the real classes (superfluous outputs are left out of the softmax, as in forecasts).
    grid : checkpoint steps (see :func:`check_grid`).
    patience : checkpoints without improvement after which a task's choice is final.
    """

    def __init__(
        self, names: list[str], holdout: Mapping[str, tuple[torch.Tensor, torch.Tensor]], n_classes: int,
        grid: list[int], patience: int, device: torch.device,
    ) -> None:
        self.names, self.grid, self.patience, self.n_classes = names, grid, patience, n_classes
        sizes = [int(holdout[n][0].shape[0]) for n in names]
        width = int(holdout[names[0]][0].shape[1])
        self._x = torch.zeros(len(names), max(sizes), width, device=device)
        for t, n in enumerate(names):
            self._x[t, : sizes[t]] = holdout[n][0].to(device)
        self._y = [holdout[n][1].numpy() for n in names]
        self.sizes = sizes
        """Held-out rows per task."""
        self.best_loss = [float("inf")] * len(names)
        self.best_step = [0] * len(names)
        self.temperature = [1.0] * len(names)
        self._since = [0] * len(names)
        self.final_step: list[int | None] = [None] * len(names)
        """The checkpoint at which each task's choice became final (``None``: it never did)."""
        self._bits: list[list[torch.Tensor] | None] = [None] * len(names)
        self._probs: list[list[torch.Tensor] | None] = [None] * len(names)

    @classmethod
    def for_tasks(
        cls, names: list[str], holdout: Mapping[str, tuple], validate: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        n_classes: int, steps: int, checkpoints: Sequence[int] | None, patience: int, device: torch.device,
        what: str = "tasks",
    ) -> HeldOutSelector:
        """A selector for a trainer's ``names``: every one needs held-out rows, each checked by the
        trainer's own ``validate(name, X, y)``; ``checkpoints`` default to :func:`default_grid`."""
        missing = [n for n in names if n not in holdout]
        if missing:
            raise DataError(f"holdout has no rows for {what} {missing}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        held = {n: validate(f"{n} (holdout)", *holdout[n]) for n in names}
        grid = check_grid(checkpoints if checkpoints is not None else default_grid(steps), steps)
        return cls(names, held, n_classes, grid, patience, device)

    def due(self, step: int) -> bool:
        """Whether ``step`` (steps done so far) is a checkpoint."""
        return step in self.grid

    @property
    def done(self) -> bool:
        """Every task's choice is final."""
        return all(s >= self.patience for s in self._since)

    def final(self, t: int) -> bool:
        """Whether task ``t``'s choice is final (``patience`` checkpoints without improvement)."""
        return self._since[t] >= self.patience

    @torch.no_grad()
    def observe(
        self, step: int, effective: Sequence[torch.Tensor], keep: Sequence[torch.Tensor],
        probs: Sequence[torch.Tensor] | None = None, tasks: Sequence[int] | None = None,
    ) -> None:
        """Score the nets whose weights are ``effective`` (``[T, out, in]`` per layer: ``W ⊙ M_t`` for
        masks, the weights themselves for dense nets) after ``step`` steps; for each task whose
        checkpoint is its best so far, keep a CPU copy of its slice of ``keep`` (and ``probs``).
        ``tasks``: the task index of each of the ``T`` rows (default: every task, in order)."""
        tasks = list(range(len(self.names))) if tasks is None else list(tasks)
        for row, t in enumerate(tasks):
            if self._since[t] >= self.patience:
                continue
            # task by task, on its own rows: padding every task to the longest held-out slice cost
            # several times the arithmetic when regime tasks (a few hundred rows) share a pass with
            # ALL tasks (thousands)
            logits = mlp(self._x[t : t + 1, : self.sizes[t]], [e[row : row + 1] for e in effective])
            logp = log_softmax(logits[0, :, : self.n_classes].double().cpu().numpy(), axis=1)
            temp, loss = temperature_nll(logp, self._y[t])
            if loss < self.best_loss[t]:
                self.best_loss[t], self.best_step[t], self.temperature[t], self._since[t] = loss, step, temp, 0
                self._bits[t] = [m[row].detach().cpu().clone() for m in keep]
                self._probs[t] = None if probs is None else [p[row].detach().cpu().clone() for p in probs]
            else:
                self._since[t] += 1
                if self._since[t] >= self.patience:
                    self.final_step[t] = step

    def chosen(self, t: int) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Task ``t``'s kept tensors per layer (and keep probabilities, when observed)."""
        bits = self._bits[t]
        if bits is None:
            raise RuntimeError(f"task {self.names[t]!r} was never scored on its held-out rows")
        return bits, self._probs[t]


def kept_rows(params: list[torch.Tensor], opt: torch.optim.Optimizer,
              rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """The ``rows`` (tasks, the leading axis) of batched ``params`` as new leaves, and an optimiser of
    ``opt``'s class that carries on from it: the same settings, each kept row's state (momentum,
    Adam's moments) and the step counts. Every optimiser state is elementwise, so a kept row goes on
    exactly as it would have in the full batch."""
    kept = [p.detach()[rows].requires_grad_(True) for p in params]
    new = type(opt)(kept, **{k: v for k, v in opt.param_groups[0].items() if k != "params"})
    for old, p in zip(params, kept):
        for key, value in opt.state.get(old, {}).items():
            batched = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == old.shape[0]
            new.state[p][key] = value[rows] if batched else (value.clone() if isinstance(value, torch.Tensor) else value)
    return kept, new
