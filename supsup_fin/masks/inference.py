"""Using a bank without a task id: SupSup's task inference, and stochastic hard-concrete outputs.

Task inference (Wortsman et al. 2020, §3.3): with the candidate masks ``M_1..M_k`` run one
forward pass through the superposition ``W ⊙ Σ αᵢMᵢ`` at ``αᵢ = 1/k``, take an objective that is
low when the right mask is in charge, and one backward pass to ``∂objective/∂α``; the task whose
coefficient has the most negative gradient wins (``one_shot``). ``binary`` repeats this, each
round keeping the half of the remaining candidates with the lowest gradients (ties broken by
order), so it takes ``ceil(log2 k)`` rounds. :func:`row_task_scores` gives the first-round scores
of every row on its own, in one pass (what the forecaster's ``infer`` gate averages over a window).

Objectives: ``entropy`` (the default) is the mean entropy ``H`` of the softmax over *every*
output of the net, the superfluous units included, as in SupSup's code (its PermutedMNIST nets
have 500 outputs for 10 classes); ``superfluous`` is SupSup's ``G``: the mean ``logsumexp`` over
all outputs with the gradient flowing only through the superfluous logits.

Superfluous output units are what makes one-shot inference work. Training pushes their logits
down on the right mask only, so moving ``α`` towards the right mask concentrates the softmax on
the real classes, a large drop in ``H`` that no wrong mask produces. On a plain ``C``-way head
(``superfluous=0``) the only signal left is how much more confident the real-class softmax
gets, which is weak and swamped by mask-to-mask differences in gain: on 50 PermutedDigits tasks
(net 64→512→512→10) one-shot ``H`` finds 4 % of the tasks without superfluous units and 100 %
with 100 of them (``docs/BENCHMARKS.md``). Entropy over the real classes only, or ``G`` with
many superfluous units, also falls short there; see :func:`infer_task`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from supsup_fin.masks.mask import Mask
from supsup_fin.masks.net import FrozenNet, as_tensor

__all__ = ["TaskInference", "infer_task", "predict_proba", "row_task_scores", "sample_masks"]

Objective = Literal["auto", "entropy", "superfluous"]


@dataclass(frozen=True)
class TaskInference:
    """Result of :func:`infer_task`.

    Attributes
    ----------
    task : str
        The inferred task.
    scores : dict name -> float
        ``∂objective/∂αᵢ`` of the first round (all candidates); lower is more likely.
    rounds : int
        Backward passes used (1 for one-shot).
    objective : str
        ``"entropy"`` or ``"superfluous"``.
    history : list of list of str
        Candidates alive at the start of each round.
    """

    task: str
    scores: dict[str, float]
    rounds: int
    objective: str
    history: list[list[str]] = field(default_factory=list)


def infer_task(
    net: FrozenNet,
    bank: Mapping[str, Mask],
    X: torch.Tensor | np.ndarray,
    method: Literal["one_shot", "binary"] = "one_shot",
    names: Sequence[str] | None = None,
    objective: Objective = "auto",
) -> TaskInference:
    """Infer which of the bank's masks ``X`` belongs to, from the gradient of the superposition.

    Parameters
    ----------
    net : FrozenNet
        The bank's base network.
    bank : MaskBank or mapping name -> Mask
        Candidate masks (bool, the net's shapes).
    X : tensor or array ``[N, in]``
        One batch assumed to come from a single task; finite values.
    method : {"one_shot", "binary"}
        One backward pass, or halving rounds (``ceil(log2 k)``).
    names : sequence of str, optional
        Candidates (default: every mask of the bank).
    objective : {"auto", "entropy", "superfluous"}
        ``entropy``: ``H`` over every output, superfluous units included (``auto`` picks it);
        ``superfluous``: SupSup's ``G`` (needs superfluous units). Build the net with
        superfluous output units (e.g. ``FrozenNet(sizes, superfluous=100)``) and train the masks
        on it: without them task inference is unreliable beyond a handful of tasks (see the
        module docstring).

    Returns
    -------
    TaskInference
    """
    if method not in ("one_shot", "binary"):
        raise ValueError(f"method must be 'one_shot' or 'binary', got {method!r}")
    objective = _check_objective(net, objective)
    _check_bank(net, bank)
    candidates = list(bank) if names is None else list(names)
    if not candidates:
        raise ValueError("no candidate masks: the bank (or names) is empty")
    missing = [n for n in candidates if n not in bank]
    if missing:
        raise ValueError(f"names {missing[:5]} are not in the bank; it holds {list(bank)[:10]}")
    if len(set(candidates)) != len(candidates):
        raise ValueError("names must not repeat")
    x = _check_x(net, X)
    stacked = [
        torch.stack([bank[n].layers[i].to(net.device, torch.float32) for n in candidates])
        for i in range(net.n_layers)
    ]  # [k, out, in] per layer
    alive = list(range(len(candidates)))
    first = _alpha_gradient(net, stacked, alive, x, objective)
    scores = {candidates[i]: float(g) for i, g in zip(alive, first)}
    history = [[candidates[i] for i in alive]]
    if method == "one_shot" or len(alive) == 1:
        best = alive[int(np.argmin(first))]
        return TaskInference(candidates[best], scores, 1, objective, history)
    grads, rounds = first, 1
    while True:
        order = np.argsort(grads, kind="stable")
        keep = max(1, math.ceil(len(alive) / 2))
        alive = sorted(alive[j] for j in order[:keep])
        if len(alive) == 1:
            break
        history.append([candidates[i] for i in alive])
        grads = _alpha_gradient(net, stacked, alive, x, objective)
        rounds += 1
    return TaskInference(candidates[alive[0]], scores, rounds, objective, history)


def _alpha_gradient(
    net: FrozenNet, stacked: list[torch.Tensor], alive: list[int], x: torch.Tensor, objective: str
) -> np.ndarray:
    """``∂objective/∂α`` at ``α = 1/len(alive)`` over the ``alive`` candidates."""
    alpha = torch.full((len(alive),), 1.0 / len(alive), dtype=torch.float32, device=net.device, requires_grad=True)
    idx = torch.tensor(alive, device=net.device)
    h, last = x, net.n_layers - 1
    for i, w in enumerate(net.weights):
        combined = torch.tensordot(alpha, stacked[i].index_select(0, idx), dims=1)  # Σ αᵢ Mᵢ
        h = h @ (w * combined).t()
        if i < last:
            h = torch.relu(h)
    (grad,) = torch.autograd.grad(_objective_rows(h, net.n_classes, objective).mean(), alpha)
    return grad.detach().cpu().numpy().astype(np.float64)


def _objective_rows(out: torch.Tensor, n_classes: int, objective: str) -> torch.Tensor:
    """The task-inference objective of each row of the outputs ``out`` ``[N, all outputs]``: ``[N]``."""
    if objective == "superfluous":
        # SupSup's G: logsumexp over every output, the gradient flowing only through the
        # superfluous logits (the real ones are detached).
        return torch.cat([out[:, :n_classes].detach(), out[:, n_classes:]], dim=1).logsumexp(dim=1)
    # SupSup's H over every output: the superfluous units, pushed down by training on the
    # right mask only, carry most of the signal (over the real classes alone it is weak).
    logp = torch.log_softmax(out, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def row_task_scores(
    net: FrozenNet,
    bank: Mapping[str, Mask],
    names: Sequence[str],
    X: torch.Tensor | np.ndarray,
    objective: Objective = "auto",
) -> np.ndarray:
    """Task-inference scores of every row on its own, in one forward and one backward pass.

    Row i's score of mask ``names[k]`` is ``∂objective_i/∂α_k`` at ``α = 1/len(names)``: the
    first-round score :func:`infer_task` gives for ``X[i:i+1]`` with the same ``objective``
    (lower is more likely), and the mean over rows is its score of the whole batch. Each row gets
    its own coefficient per mask, so the gradient of the summed objective is the per-row one.
    Only the named masks' shapes are checked against ``net`` (not a bank's base-network hash, which
    :func:`infer_task` recomputes per call): a per-forecast path whose bank was checked when loaded.

    Parameters
    ----------
    net : FrozenNet
        The masks' base network.
    bank : MaskBank or mapping name -> Mask
        Holds every named mask.
    names : sequence of str
        Candidate masks, ``k`` distinct names.
    X : tensor or array ``[N, in]``
        Inputs, finite.
    objective : {"auto", "entropy", "superfluous"}
        As in :func:`infer_task` (``auto`` is ``entropy``).

    Returns
    -------
    ndarray ``[N, k]`` float64
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names must be distinct and non-empty, got {names}")
    missing = [n for n in names if n not in bank]
    if missing:
        raise ValueError(f"names {missing[:5]} are not in the bank; it holds {list(bank)[:10]}")
    objective = _check_objective(net, objective)
    for n in names:
        net.check_mask(bank[n], f"mask {n!r}")
    x = _check_x(net, X)
    with torch.enable_grad():
        alphas = {n: torch.full((x.shape[0],), 1.0 / len(names), device=net.device, requires_grad=True)
                  for n in names}
        out = net(x, masks={n: bank[n] for n in names}, alphas=alphas, all_outputs=True)
        value = _objective_rows(out, net.n_classes, objective)
        grads = torch.autograd.grad(value.sum(), [alphas[n] for n in names])
    return torch.stack(grads, dim=1).detach().cpu().numpy().astype(np.float64)


def sample_masks(probs: Sequence[torch.Tensor], samples: int, generator: torch.Generator) -> list[Mask]:
    """``samples`` bool masks, each weight kept independently with its probability.

    Draws ``U(0, 1)`` per weight from ``generator`` (layer by layer, sample by sample) and keeps
    the weight when ``u < p``.
    """
    out = []
    for _ in range(samples):
        out.append(Mask([torch.rand(p.shape, generator=generator) < p.cpu() for p in probs]))
    return out


def predict_proba(
    net: FrozenNet,
    bank: Mapping[str, Mask],
    name: str,
    X: torch.Tensor | np.ndarray,
    mode: Literal["deterministic", "stochastic"] = "deterministic",
    samples: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Class probabilities ``[N, classes]`` of task ``name``.

    ``deterministic`` uses the bank's bits (``p > 0.5`` for ``hard_concrete``); ``stochastic``
    averages the softmax outputs of ``samples`` masks drawn from the stored keep probabilities
    (see :func:`sample_masks`, generator seeded by ``seed``), which needs a bank trained with
    ``store_probabilities=True``.
    """
    if mode not in ("deterministic", "stochastic"):
        raise ValueError(f"mode must be 'deterministic' or 'stochastic', got {mode!r}")
    _check_bank(net, bank)
    if name not in bank:
        raise ValueError(f"no mask named {name!r}; the bank holds {list(bank)[:10]}")
    x = _check_x(net, X)
    with torch.no_grad():
        if mode == "deterministic":
            return torch.softmax(net(x, mask=bank[name]), dim=1)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        probs_of = getattr(bank, "probabilities", None)
        if probs_of is None:
            raise ValueError("stochastic inference needs a MaskBank holding keep probabilities")
        probs = probs_of(name)
        gen = torch.Generator().manual_seed(int(seed))
        total = None
        for m in sample_masks(probs, samples, gen):
            p = torch.softmax(net(x, mask=m), dim=1)
            total = p if total is None else total + p
        return total / samples


def _check_objective(net: FrozenNet, objective: str) -> str:
    """``objective`` resolved (``auto`` -> ``entropy``), or ``ValueError``."""
    if objective not in ("auto", "entropy", "superfluous"):
        raise ValueError(f"objective must be 'auto', 'entropy' or 'superfluous', got {objective!r}")
    if objective == "superfluous" and not net.superfluous:
        raise ValueError("objective 'superfluous' needs a net built with superfluous > 0 output units")
    return "entropy" if objective == "auto" else objective


def _check_bank(net: FrozenNet, bank: Mapping[str, Mask]) -> None:
    matches = getattr(bank, "matches", None)
    if matches is not None and not matches(net):
        raise ValueError(
            f"bank was built on sizes={bank.sizes}, seed={bank.seed}, "  # type: ignore[attr-defined]
            f"superfluous={getattr(bank, 'superfluous', 0)}, not on {net!r}"
        )
    for n in bank:
        net.check_mask(bank[n], f"mask {n!r}")


def _check_x(net: FrozenNet, X: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = as_tensor(X, np.float32)
    if not isinstance(X, torch.Tensor):
        raise ValueError(f"X must be a torch tensor or numpy array, got {type(X).__name__}")
    if X.dim() != 2 or X.shape[1] != net.sizes[0] or X.shape[0] < 1:
        raise ValueError(f"X must be shaped [N >= 1, {net.sizes[0]}], got {tuple(X.shape)}")
    x = X.detach().to(net.device, torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("X holds non-finite values (NaN or inf)")
    return x
