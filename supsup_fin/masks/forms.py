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

__all__ = ["MASK_FORMS", "EdgePopup", "MaskForm", "Threshold", "get_form", "kept_count"]


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
    :meth:`validate`, :meth:`penalty` and :meth:`final_mask` have defaults.
    """

    name: str = ""

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
    ) -> torch.Tensor:
        """Float mask ``[T, out, in]`` of stacked scores ``[T, out, in]``.

        With ``training`` the result carries gradients to ``scores``; ``generators`` (one per
        task, CPU) serve forms that sample noise.
        """

    def penalty(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-task regulariser of stacked scores ``[T, out, in]``, shape ``[T]`` (default 0)."""
        return scores.new_zeros(scores.shape[0])

    def final_mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        """Deterministic bool mask ``[T, out, in]`` kept after training."""
        return self.make_mask(scores.detach(), density, training=False) > 0.5

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def kept_count(numel: int, density: float) -> int:
    """Weights kept by an exact-density mask: ``round(density * numel)`` (Python's round, half to even)."""
    return int(round(density * numel))


def _kaiming_uniform_bound(fan_in: int) -> float:
    # kaiming_uniform_(a=sqrt(5)) as in the edge-popup reference: gain sqrt(1/3) * sqrt(3 / fan_in).
    return 1.0 / math.sqrt(fan_in)


class EdgePopup(MaskForm):
    """Edge-popup (Ramanujan et al.): keep the top ``round(density * numel)`` |scores| of each layer.

    The kept count is exact (top-k and scatter, not a threshold); the gradient passes straight
    through the indicator to ``|scores|`` (so the scores receive ``grad * sign(score)``).
    """

    name = "edge_popup"

    def validate(self, shapes: Sequence[tuple[int, int]], density: float) -> None:
        for i, (out_f, in_f) in enumerate(shapes):
            if kept_count(out_f * in_f, density) < 1:
                raise ValueError(
                    f"density {density} keeps no weight of layer {i} ({out_f}x{in_f}); "
                    f"need density >= {0.5 / (out_f * in_f):.3g}"
                )

    def init_scores(self, shape: tuple[int, int], density: float, generator: torch.Generator) -> torch.Tensor:
        bound = _kaiming_uniform_bound(shape[1])
        return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound

    def make_mask(
        self,
        scores: torch.Tensor,
        density: float,
        *,
        training: bool,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        k = kept_count(scores.shape[1] * scores.shape[2], density)

        def hard(magnitude: torch.Tensor) -> torch.Tensor:
            flat = magnitude.reshape(magnitude.shape[0], -1)
            idx = flat.topk(k, dim=1, sorted=False).indices
            return torch.zeros_like(flat).scatter_(1, idx, 1.0).view_as(magnitude)

        # As in the reference, the straight-through gradient reaches |score|, so the scores get
        # grad * sign(score): pushing a weight in always grows its |score|.
        return _StraightThrough.apply(scores.abs(), hard) if training else hard(scores.detach().abs())


class Threshold(MaskForm):
    """Piggyback-style threshold: keep weights whose score is ``>= 0``; straight-through gradient.

    Scores start uniform on ``±1/sqrt(fan_in)`` shifted so each weight is kept with probability
    ``density``; the trained density is whatever the bits count.
    """

    name = "threshold"

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
    ) -> torch.Tensor:
        def hard(s: torch.Tensor) -> torch.Tensor:
            return (s >= 0).to(s.dtype)

        return _StraightThrough.apply(scores, hard) if training else hard(scores.detach())


MASK_FORMS: dict[str, MaskForm] = {
    EdgePopup.name: EdgePopup(),
    Threshold.name: Threshold(),
}


def get_form(method: str | MaskForm) -> MaskForm:
    """The registered form called ``method`` (or ``method`` itself when it is a :class:`MaskForm`)."""
    if isinstance(method, MaskForm):
        return method
    try:
        return MASK_FORMS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mask method {method!r}; valid: {', '.join(sorted(MASK_FORMS))}") from None
