"""The fused straight-through network: one autograd node for a whole MLP of T tasks' masks.

:func:`supermask_logits` computes ``W ⊙ M_t`` for every task at once without a graph, keeps it
for the backward pass, applies ReLU in place and turns each weight gradient into the score
gradient with in-place products (the straight-through estimator), so the per-weight work of a
training step is a handful of passes over ``[T, out, in]``. Its large intermediates live in
:class:`StepBuffers`, reused from step to step. :func:`batched_logits` is the plain autograd
path the other forms (hard-concrete) take.
"""

from __future__ import annotations

import torch

from supsup_fin.masks import _native
from supsup_fin.masks._topk import reusable
from supsup_fin.masks.forms import MaskForm
from supsup_fin.masks.net import mlp


_SIGN_OF_SCORES = object()
"""A layer's straight-through factor when it is ``sign(S)``, left to the fused backward kernel."""


class StepBuffers:
    """What the fused network keeps from one training step to the next.

    On CPU a fresh tensor of tens of MB is paid for in page faults on first touch (measured here:
    ~15 ms for a ``[32, 1400, 256]`` float tensor, six times a pass of arithmetic over it), so the
    activations, ``W ⊙ M`` and input gradients are written into buffers kept for the whole run.
    ``selection`` holds each layer's state for :meth:`MaskForm.masked_weight` (edge-popup's
    per-task top-k thresholds). One instance serves one training loop: a step's buffers are
    overwritten by the next step's forward pass. With ``reuse=False`` every :meth:`get` is a fresh
    tensor and there is no selection state (a one-off forward pass).
    """

    def __init__(self, n_layers: int, reuse: bool = True) -> None:
        self.reuse = reuse
        self._tensors: dict[tuple[str, int], torch.Tensor] = {}
        self.selection: list[dict[str, torch.Tensor] | None] = [{} if reuse else None for _ in range(n_layers)]

    def weight(self, layer: int, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The frozen weight ``w`` of ``layer`` in ``dtype`` (converted once, kept if reusing)."""
        key = ("weight", layer)
        kept = self._tensors.get(key)
        if kept is None or kept.dtype != dtype or kept.shape != w.shape or kept.device != w.device:
            kept = w.to(dtype)
            if self.reuse:
                self._tensors[key] = kept
        return kept

    def get(self, kind: str, layer: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device (kept if reusing)."""
        if not self.reuse:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        return reusable(self._tensors, (kind, layer), shape, like.dtype, like.device)


class _SupermaskMLP(torch.autograd.Function):
    """The batched MLP of straight-through masks as one autograd node.

    Forward: ``W ⊙ M`` per layer from the scores (no graph; :meth:`MaskForm.masked_weight`),
    kept, ``h ← relu(h (W ⊙ M)ᵀ)`` with ReLU in place. Backward: ``∂S = (gᵀ h) ⊙ W ⊙ f(S)``
    with ``f`` the form's straight-through factor (in-place products, or for ``sign(S)`` on CPU one
    pass of the fused kernel, :func:`~supsup_fin.masks._native.ste_grad`), ``g ← g (W ⊙ M)``, and the
    ReLU's gradient as ``g ⊙ sign(h)`` once ``h`` has served its weight gradient (a float
    product: masked_fill with a bool mask was 10x slower here). Gradients equal autograd's
    through ``_StraightThrough`` (a test checks).
    """

    @staticmethod
    def forward(ctx, x, form, densities, weights, buffers, dtype, *scores):  # type: ignore[no-untyped-def]
        if buffers is None:
            buffers = StepBuffers(len(weights), reuse=False)
        low = dtype != weights[0].dtype
        h, last = (x.to(dtype) if low else x), len(weights) - 1
        hs, wms, factors = [h], [], []
        for i, (w, s) in enumerate(zip(weights, scores)):
            wc = buffers.weight(i, w, dtype) if low else w
            wm = form.masked_weight(s, densities[i], wc, buffers.get("wm", i, s.shape, wc), buffers.selection[i])
            if i < last:
                out = buffers.get("h", i, (h.shape[0], h.shape[1], wm.shape[1]), h)
                h = torch.bmm(h, wm.transpose(1, 2), out=out).clamp_(min=0)
                hs.append(h)
            else:  # the logits leave the node: a fresh tensor
                h = torch.bmm(h, wm.transpose(1, 2))
                h = h.to(x.dtype) if low else h
            wms.append(wm)
            if form.ste_sign and _native.serves_grad(s, w):
                factors.append(_SIGN_OF_SCORES)  # applied in the backward's one pass
            else:
                factors.append(form.ste_factor(s, buffers.get("factor", i, s.shape, s)))
        ctx.weights, ctx.wms, ctx.hs, ctx.factors, ctx.buffers = weights, wms, hs, factors, buffers
        ctx.scores = [s.detach() for s in scores]
        return h

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        weights, wms, hs, factors, buffers = ctx.weights, ctx.wms, ctx.hs, ctx.factors, ctx.buffers
        grads: list[torch.Tensor | None] = [None] * len(weights)
        low = hs[0].dtype != weights[0].dtype
        g = grad.to(hs[0].dtype).contiguous()
        for i in range(len(weights) - 1, -1, -1):
            if i < len(weights) - 1:
                g = g.mul_(hs[i + 1].sign_())  # h >= 0 after ReLU; h has served its weight gradient
            if low:  # the product in the compute dtype, the score gradient in the weights' (fp32)
                gw = torch.bmm(g.transpose(1, 2), hs[i], out=buffers.get("gw", i, wms[i].shape, g))
            else:
                gw = torch.bmm(g.transpose(1, 2), hs[i])
            if factors[i] is _SIGN_OF_SCORES:  # ∂S = (∂(W⊙M) ⊙ W) ⊙ sign(S) in one pass
                gs = _native.ste_grad(gw, weights[i], ctx.scores[i])
            else:  # ∂(W⊙M) ⊙ W = ∂M; a bf16 product first as float (2x a mixed-dtype mul's speed)
                gs = (gw.to(weights[i].dtype) if low else gw).mul_(weights[i])
                if factors[i] is not None:
                    gs.mul_(factors[i])
            grads[i] = gs
            if i > 0:
                g = torch.bmm(g, wms[i], out=buffers.get("g", i, (g.shape[0], g.shape[1], wms[i].shape[2]), g))
        del ctx.wms, ctx.hs, ctx.factors, ctx.buffers, ctx.scores
        return (None, None, None, None, None, None, *grads)


def supermask_logits(
    weights: list[torch.Tensor],
    scores: list[torch.Tensor],
    x: torch.Tensor,
    form: MaskForm,
    densities: list[float],
    buffers: StepBuffers | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Logits ``[T, B, outputs]`` of ``x [T, B, in]`` through straight-through masks of ``scores``.

    Gradients reach ``scores`` (list of ``[T, out, in]``) as through ``form.make_mask``. With
    ``buffers`` (a training loop's :class:`StepBuffers`) large intermediates are reused from the
    previous call, so a call's graph must be used (or dropped) before the next call. ``dtype``
    is the compute dtype of the network's products (``W ⊙ M``, activations and their gradients);
    with ``torch.bfloat16`` the GEMMs run in bf16 (fp32 accumulation) while the logits, the score
    gradients and the scores stay in the weights' dtype.
    """
    return _SupermaskMLP.apply(x, form, densities, weights, buffers, dtype, *scores)


def batched_logits(weights: list[torch.Tensor], masks: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of T tasks at once.

    Parameters
    ----------
    weights : list of ``[out, in]`` tensors
    masks : list of ``[T, out, in]`` tensors
    x : ``[T, B, in]``

    Returns
    -------
    torch.Tensor ``[T, B, classes]``
    """
    return mlp(x, [w * m for w, m in zip(weights, masks)])
