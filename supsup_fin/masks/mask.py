"""An immutable per-layer mask over the weights of a :class:`~supsup_fin.masks.FrozenNet`."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Mask:
    """One tensor per layer, each shaped like that layer's weight ``[out, in]``.

    Binary masks (what training produces and a bank stores) are ``torch.bool``; a float mask
    (e.g. a superposition ``Σ αᵢMᵢ``) is allowed for inference. The object is immutable: the
    tensors are private copies, and no method changes them (do not edit ``layers`` in place).

    Parameters
    ----------
    layers : sequence of torch.Tensor
        Layer ``l`` shaped ``[sizes[l + 1], sizes[l]]``; all bool, or all floating.
    """

    __slots__ = ("_layers",)

    def __init__(self, layers: Sequence[torch.Tensor]) -> None:
        layers = tuple(layers)
        if not layers:
            raise ValueError("a Mask needs at least one layer, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, torch.Tensor) or layer.dim() != 2:
                raise ValueError(f"mask layer {i} must be a 2-D tensor [out, in], got {_describe(layer)}")
            if layer.dtype != torch.bool and not layer.is_floating_point():
                raise ValueError(f"mask layer {i} must be bool or floating, got {layer.dtype}")
        kinds = {layer.dtype == torch.bool for layer in layers}
        if len(kinds) > 1:
            raise ValueError("mask layers must be all bool or all floating, got a mix")
        object.__setattr__(self, "_layers", tuple(layer.detach().clone() for layer in layers))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Mask is immutable")

    @property
    def layers(self) -> tuple[torch.Tensor, ...]:
        """Per-layer tensors, layer ``l`` shaped ``[out_l, in_l]``."""
        return self._layers

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """``((out_0, in_0), (out_1, in_1), ...)``."""
        return tuple((int(m.shape[0]), int(m.shape[1])) for m in self._layers)

    @property
    def is_binary(self) -> bool:
        """True for a bool mask."""
        return self._layers[0].dtype == torch.bool

    def numel(self) -> int:
        """Number of weights the mask covers."""
        return sum(m.numel() for m in self._layers)

    def density(self) -> float:
        """Kept fraction of all weights (non-zero entries / entries)."""
        kept = sum(int(torch.count_nonzero(m)) for m in self._layers)
        return kept / self.numel()

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        kind = "bool" if self.is_binary else str(self._layers[0].dtype)
        return f"Mask(shapes={list(self.shapes)}, dtype={kind}, density={self.density():.4f})"


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"
