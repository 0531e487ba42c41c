"""Mask forms: how real-valued scores become a (trainable) mask.

A form is an object with hooks the batched trainer calls on scores stacked over tasks
(``[T, out, in]`` per layer). Every hook must treat the task axis independently, so a task's
mask never depends on which other tasks share its training group. Forms are looked up by name
in the explicit registry :data:`MASK_FORMS`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from supsup_fin.masks import _topk

__all__ = ["MASK_FORMS", "EdgePopup", "HardConcrete", "MaskForm", "Threshold", "get_form", "kept_count"]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``hard(scores)``; backward: the incoming gradient, unchanged, to the scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, hard: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return hard(scores.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class MaskForm(ABC):
    """A way to turn per-weight scores into a mask.

    Subclasses set :attr:`name` and implement :meth:`init_scores` and :meth:`make_mask`;
    :meth:`validate`, :meth:`penalty` and :meth:`final_mask` have defaults. A straight-through
    form (``straight_through = True``) also implements :meth:`hard` and :meth:`ste_factor`, which
    let the trainer run its fused layer (no autograd graph over the per-weight mask work).
    Options are constructor keywords; :func:`get_form` builds a form from a name and options.
    """

    name: str = ""
    straight_through: bool = False
    ste_sign: bool = False
    """Whether :meth:`ste_factor` is ``sign(scores)`` (the fused kernel then applies it in one pass)."""
    has_probabilities: bool = False

    def layer_densities(self, shapes: Sequence[tuple[int, int]], density: float) -> list[float]:
        """Target kept fraction of each layer (default: ``density`` everywhere)."""
        return [float(density)] * len(shapes)

    def hard(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        """Float 0/1 mask ``[T, out, in]`` of detached scores (straight-through forms)."""
        raise NotImplementedError(f"{type(self).__name__} is not a straight-through form")

    def ste_factor(self, scores: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """``d mask / d scores`` used by the straight-through gradient (``None`` means 1), written
        into ``out`` when given."""
        return None

    def masked_weight(
        self,
        scores: torch.Tensor,
        density: float,
        weight: torch.Tensor,
        out: torch.Tensor,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``W ⊙ hard(scores)`` written into ``out`` (``[T, out, in]``); the fused trainer's forward.

        ``state`` is a dict the trainer keeps for this layer from one step to the next (``None``
        outside training); a form may cache in it whatever makes the next step's mask cheaper,
        as long as the mask stays exactly :meth:`hard`'s.
        """
        return torch.mul(self.hard(scores, density), weight, out=out)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep probabilities ``[T, out, in]`` (forms with ``has_probabilities`` only)."""
        raise NotImplementedError(f"{type(self).__name__} has no keep probabilities")

    def options(self) -> dict[str, object]:
        """The form's options (constructor keywords), JSON-able."""
        return {}

    def validate(self, shapes: Sequence[tuple[int, int]], density: float) -> None:
        """Raise ``ValueError`` if ``density`` cannot be honoured on layers of ``shapes``."""

    @abstractmethod
    def init_scores(self, shape: tuple[int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        """Initial float32 scores of one task's layer, ``[out, in]``, on CPU, drawn from ``generator``."""

    @abstractmethod
    def make_mask(
        self,
        scores: torch.Tensor,
        density: float,
        *,
        training: bool,
        generators: Sequence[torch.Generator] | None = None,
        progress: float = 0.0,
    ) -> torch.Tensor:
        """Float mask ``[T, out, in]`` of stacked scores ``[T, out, in]``.

        With ``training`` the result carries gradients to ``scores``; ``generators`` (one per
        task, CPU) serve forms that sample noise; ``progress`` in ``[0, 1]`` is the fraction of
        training done (for annealed forms).
        """

    def penalty(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-task regulariser of stacked scores ``[T, out, in]``, shape ``[T]`` (default 0)."""
        return scores.new_zeros(scores.shape[0])

    def final_mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        """Deterministic bool mask ``[T, out, in]`` kept after training."""
        return self.make_mask(scores.detach(), density, training=False) > 0.5

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def kept_count(numel: int, density: float) -> int:
    """Weights kept by an exact-density mask: ``round(density * numel)`` (Python's round, half to even)."""
    return int(round(density * numel))


def _kaiming_uniform_bound(fan_in: int) -> float:
    # kaiming_uniform_(a=sqrt(5)) as in the edge-popup reference: gain sqrt(1/3) * sqrt(3 / fan_in).
    return 1.0 / math.sqrt(fan_in)


class EdgePopup(MaskForm):
    """Edge-popup (Ramanujan et al.): keep the top ``round(d_l * numel)`` |scores| of each layer.

    The kept count is exact (top-k, not a threshold); the gradient passes straight through the
    indicator to ``|scores|`` (so the scores receive ``grad * sign(score)``). ``d_l = density``
    for every layer, or with ``erdos_renyi=True`` the Erdős–Rényi budget
    ``d_l = min(1, ε (in_l + out_l) / (in_l out_l))`` with ε chosen so that the whole net keeps
    ``density`` of its weights (small layers denser, large layers sparser).

    Initial scores are uniform in ``± init_scale / sqrt(fan_in)``. Top-k does not depend on the
    scores' scale, only the step relative to it does: scores that start near zero (the default
    0.01) let the first gradients decide the selection, where the reference's ``init_scale=1``
    spends its first hundred steps undoing a random ranking (on 32 PermutedDigits tasks, 0.97
    held-out accuracy in 50 full-batch steps instead of 300; docs/BENCHMARKS.md). With superfluous
    output units, use 1: from near zero every task's mask makes the same choice for those units,
    and superfluous-unit task inference no longer finds the task.
    """

    name = "edge_popup"
    straight_through = True
    ste_sign = True

    def __init__(self, erdos_renyi: bool = False, init_scale: float = 0.01) -> None:
        if not isinstance(erdos_renyi, bool):
            raise ValueError(f"erdos_renyi must be a bool, got {erdos_renyi!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not 0 < init_scale <= 10:
            raise ValueError(f"init_scale must be a number in (0, 10], got {init_scale!r}")
        self.erdos_renyi = erdos_renyi
        self.init_scale = float(init_scale)

    def options(self) -> dict[str, object]:
        return {"erdos_renyi": self.erdos_renyi, "init_scale": self.init_scale}

    def layer_densities(self, shapes: Sequence[tuple[int, int]], density: float) -> list[float]:
        if not self.erdos_renyi:
            return [float(density)] * len(shapes)
        return erdos_renyi_densities(shapes, density)

    def validate(self, shapes: Sequence[tuple[int, int]], density: float) -> None:
        for i, ((out_f, in_f), d) in enumerate(zip(shapes, self.layer_densities(shapes, density))):
            if kept_count(out_f * in_f, d) < 1:
                raise ValueError(
                    f"density {density} keeps no weight of layer {i} ({out_f}x{in_f}); "
                    f"need a layer density >= {0.5 / (out_f * in_f):.3g}, got {d:.3g}"
                )

    def init_scores(self, shape: tuple[int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        bound = self.init_scale * _kaiming_uniform_bound(shape[1])
        return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound

    def hard(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        n = scores.shape[1] * scores.shape[2]
        k = kept_count(n, density)
        flat = scores.detach().abs().reshape(scores.shape[0], -1)
        if k == n:
            return torch.ones_like(scores)
        # Select whichever side is smaller: top-k of the kept or bottom-(n-k) of the dropped.
        if k <= n - k:
            idx = flat.topk(k, dim=1, sorted=False).indices
            return torch.zeros_like(flat).scatter_(1, idx, 1.0).view_as(scores)
        idx = flat.topk(n - k, dim=1, largest=False, sorted=False).indices
        return torch.ones_like(flat).scatter_(1, idx, 0.0).view_as(scores)

    def ste_factor(self, scores: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        # As in the reference, the straight-through gradient reaches |score|: d|s|/ds = sign(s).
        return torch.sign(scores.detach(), out=out)

    def masked_weight(
        self,
        scores: torch.Tensor,
        density: float,
        weight: torch.Tensor,
        out: torch.Tensor,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # With a state the exact top-k is selected from a band around the last step's threshold
        # (see supsup_fin.masks._topk); without one, from a full top-k.
        n = scores.shape[1] * scores.shape[2]
        k = kept_count(n, density)
        if state is None or k == n or n < _topk.BAND_MIN_ROW:
            return super().masked_weight(scores, density, weight, out, state)
        return _topk.masked_top_k(scores, k, weight, out, state)

    def make_mask(
        self,
        scores: torch.Tensor,
        density: float,
        *,
        training: bool,
        generators: Sequence[torch.Generator] | None = None,
        progress: float = 0.0,
    ) -> torch.Tensor:
        # The straight-through gradient reaches |score|, so the scores get grad * sign(score):
        # pushing a weight in always grows its |score|.
        if not training:
            return self.hard(scores, density)
        return _StraightThrough.apply(scores.abs(), lambda m: self.hard(m, density))


def erdos_renyi_densities(shapes: Sequence[tuple[int, int]], density: float) -> list[float]:
    """Erdős–Rényi per-layer kept fractions whose weighted mean is ``density``.

    ``d_l = min(1, ε (in_l + out_l) / (in_l out_l))``; ε is found by bisection (60 halvings).
    """
    sizes = [o * i for o, i in shapes]
    total = sum(sizes)
    raw = [(o + i) / (o * i) for o, i in shapes]

    def kept(eps: float) -> float:
        return sum(min(1.0, eps * r) * n for r, n in zip(raw, sizes))

    lo, hi = 0.0, 1.0 / min(raw)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kept(mid) < density * total else (lo, mid)
    return [min(1.0, hi * r) for r in raw]


class Threshold(MaskForm):
    """Piggyback-style threshold: keep weights whose score is ``>= 0``; straight-through gradient.

    Scores start uniform on ``±1/sqrt(fan_in)`` shifted so each weight is kept with probability
    ``density``; the trained density is whatever the bits count.
    """

    name = "threshold"
    straight_through = True

    def init_scores(self, shape: tuple[int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        bound = _kaiming_uniform_bound(shape[1])
        u = torch.rand(shape, generator=generator, dtype=torch.float32)
        return (u * 2 - 1) * bound + (2 * density - 1) * bound

    def make_mask(
        self,
        scores: torch.Tensor,
        density: float,
        *,
        training: bool,
        generators: Sequence[torch.Generator] | None = None,
        progress: float = 0.0,
    ) -> torch.Tensor:
        if not training:
            return self.hard(scores, density)
        return _StraightThrough.apply(scores, lambda s: self.hard(s, density))

    def hard(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        return (scores.detach() >= 0).to(scores.dtype)


class HardConcrete(MaskForm):
    """The seed's probabilistic mask: Bernoulli(p) per weight, trained by a Gumbel-sigmoid relaxation.

    Scores are the logits ``log p - log(1 - p)``. Training uses the relaxed mask
    ``σ((logit + g) / τ)`` with logistic noise ``g = log u - log(1 - u)``, ``u ~ U(0, 1)`` drawn
    from each task's own generator; ``τ`` anneals geometrically from ``tau`` to ``tau_final``.
    The penalty is ``l0_lambda · Σ p`` (the expected L0 norm of the mask). Test time is
    deterministic (keep ``p > 0.5``, what a bank's bits hold) or stochastic (average over
    sampled masks, which needs ``p``; see :func:`~supsup_fin.masks.predict_proba`).

    Parameters
    ----------
    tau : float
        Initial temperature, > 0.
    tau_final : float, optional
        Final temperature (> 0); default ``tau`` (no annealing).
    l0_lambda : float
        Weight of the expected-L0 penalty, >= 0.
    init_p : float, optional
        Initial keep probability in (0, 1); default ``density`` clipped to [0.05, 0.95].
    """

    name = "hard_concrete"
    has_probabilities = True

    def __init__(
        self, tau: float = 2.0 / 3.0, tau_final: float | None = None, l0_lambda: float = 0.0,
        init_p: float | None = None,
    ) -> None:
        for what, value in (("tau", tau), ("tau_final", tau if tau_final is None else tau_final)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{what} must be a number > 0, got {value!r}")
        if not isinstance(l0_lambda, (int, float)) or not l0_lambda >= 0:
            raise ValueError(f"l0_lambda must be a number >= 0, got {l0_lambda!r}")
        if init_p is not None and not (isinstance(init_p, (int, float)) and 0 < init_p < 1):
            raise ValueError(f"init_p must lie in (0, 1), got {init_p!r}")
        self.tau = float(tau)
        self.tau_final = float(tau if tau_final is None else tau_final)
        self.l0_lambda = float(l0_lambda)
        self.init_p = None if init_p is None else float(init_p)

    def options(self) -> dict[str, object]:
        return {"tau": self.tau, "tau_final": self.tau_final, "l0_lambda": self.l0_lambda, "init_p": self.init_p}

    def temperature(self, progress: float) -> float:
        """``tau · (tau_final / tau) ** progress``."""
        return self.tau * (self.tau_final / self.tau) ** min(max(progress, 0.0), 1.0)

    def init_scores(self, shape: tuple[int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        p0 = self.init_p if self.init_p is not None else min(max(density, 0.05), 0.95)
        logit = math.log(p0) - math.log1p(-p0)
        # A small jitter breaks ties between weights (drawn, so the generator stream is used).
        jitter = (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * 0.01
        return jitter + logit

    def make_mask(
        self,
        scores: torch.Tensor,
        density: float,
        *,
        training: bool,
        generators: Sequence[torch.Generator] | None = None,
        progress: float = 0.0,
    ) -> torch.Tensor:
        if not training:
            return (scores.detach() > 0).to(scores.dtype)
        if generators is None or len(generators) != scores.shape[0]:
            raise ValueError(f"hard_concrete needs one generator per task ({scores.shape[0]}), got {generators!r}")
        u = torch.stack([torch.rand(scores.shape[1:], generator=g, dtype=torch.float32) for g in generators])
        u = u.to(scores.device).clamp_(1e-6, 1 - 1e-6)
        noise = torch.log(u).sub_(torch.log1p(-u))
        return torch.sigmoid((scores + noise) / self.temperature(progress))

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores.detach())

    def expected_l0(self, scores: torch.Tensor) -> torch.Tensor:
        """Expected number of kept weights per task, ``Σ p`` over ``[T, out, in]`` -> ``[T]``."""
        return torch.sigmoid(scores).flatten(1).sum(dim=1)

    def penalty(self, scores: torch.Tensor) -> torch.Tensor:
        if self.l0_lambda == 0:
            return scores.new_zeros(scores.shape[0])
        return self.l0_lambda * self.expected_l0(scores)

    def final_mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        return scores.detach() > 0


MASK_FORMS: dict[str, MaskForm] = {
    EdgePopup.name: EdgePopup(),
    Threshold.name: Threshold(),
    HardConcrete.name: HardConcrete(),
}


def get_form(method: str | MaskForm, **options: object) -> MaskForm:
    """The registered form called ``method`` built with ``options`` (or ``method`` itself, a form).

    Unknown names and options raise ``ValueError`` listing the valid ones.
    """
    if isinstance(method, MaskForm):
        if options:
            raise ValueError(f"options {sorted(options)} given with a form object; set them on the form")
        return method
    try:
        default = MASK_FORMS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mask method {method!r}; valid: {', '.join(sorted(MASK_FORMS))}") from None
    if not options:
        return default
    valid = sorted(default.options())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"mask method {method!r} has no option(s) {unknown}; valid: {valid or 'none'}")
    return type(default)(**options)
