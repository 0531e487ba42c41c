"""The frozen base network: a bias-free MLP of signed Kaiming constants rebuilt from a seed.

Weights are ``w = ±sqrt(2 / fan_in)`` (float32). The signs of layer ``l`` are the raw output of
NumPy's PCG64 seeded with ``SeedSequence(seed).spawn(n_layers)[l]`` (i.e.
``SeedSequence(entropy=seed, spawn_key=(l,))``): ``random_raw`` 64-bit words, written
little-endian, unpacked least-significant bit first; weight ``j`` of the row-major ``[out, in]``
layer is positive iff bit ``j`` is set. Nothing depends on torch's random generators, so a seed
names the same network on every torch version and device.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from supsup_fin._validate import is_int as _is_int
from supsup_fin.masks.mask import Mask

logger = logging.getLogger(__name__)

# Upper bound on the scratch memory of one per-row superposition chunk.
_ROW_CHUNK_BYTES = 256 * 2**20

Alpha = float | torch.Tensor | np.ndarray


def _layer_weight(seed: int, layer: int, out_features: int, in_features: int) -> torch.Tensor:
    """Signed Kaiming constant weight of one layer, float32 ``[out, in]``, on CPU."""
    n = out_features * in_features
    stream = np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=(layer,)))
    words = stream.random_raw((n + 63) // 64)
    bits = np.unpackbits(np.asarray(words).astype("<u8").view(np.uint8), bitorder="little")[:n]
    scale = np.float32(math.sqrt(2.0 / in_features))
    w = np.where(bits.astype(bool), scale, -scale).astype(np.float32)
    return torch.from_numpy(w.reshape(out_features, in_features))


class FrozenNet:
    """Bias-free MLP with frozen signed-constant weights; ReLU between layers, none at the output.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``(in, hidden..., classes)``, at least two entries, all positive.
    seed : int
        Non-negative seed naming the network.
    superfluous : int
        Extra "superfluous" output units (SupSup's remedy for uncalibrated heads, used by task
        inference). The last layer gets ``sizes[-1] + superfluous`` rows (its first ``sizes[-1]``
        rows are the weights of the net without them); masks cover every row, training pushes the
        extra logits down, and :meth:`__call__` returns only the ``sizes[-1]`` real classes unless
        ``all_outputs=True``. Default 0: the plain net.
    """

    def __init__(self, sizes: Sequence[int], seed: int = 0, superfluous: int = 0) -> None:
        sizes = tuple(sizes)
        if len(sizes) < 2 or not all(_is_int(s) and s >= 1 for s in sizes):
            raise ValueError(f"sizes must be >= 2 positive ints (in, hidden..., classes), got {sizes}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not _is_int(superfluous) or superfluous < 0:
            raise ValueError(f"superfluous must be a non-negative int, got {superfluous!r}")
        self.sizes: tuple[int, ...] = tuple(int(s) for s in sizes)
        self.seed: int = int(seed)
        self.superfluous: int = int(superfluous)
        outs = [*self.sizes[1:-1], self.sizes[-1] + self.superfluous]
        self._weights = [_layer_weight(self.seed, i, outs[i], self.sizes[i]) for i in range(len(sizes) - 1)]

    @property
    def weights(self) -> list[torch.Tensor]:
        """Frozen float32 weights, layer ``l`` shaped ``[sizes[l + 1], sizes[l]]``."""
        return list(self._weights)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Weight shapes ``((out_0, in_0), ...)`` (the last ``out`` counts superfluous units)."""
        return tuple((int(w.shape[0]), int(w.shape[1])) for w in self._weights)

    @property
    def n_classes(self) -> int:
        """Real output classes, ``sizes[-1]``."""
        return self.sizes[-1]

    @property
    def n_layers(self) -> int:
        """Number of weight layers."""
        return len(self._weights)

    @property
    def device(self) -> torch.device:
        """Device holding the weights."""
        return self._weights[0].device

    def to(self, device: str | torch.device) -> FrozenNet:
        """Move the weights to ``device``; returns ``self``."""
        self._weights = [w.to(device) for w in self._weights]
        return self

    def weights_hash(self) -> str:
        """Hex sha256 of the sizes (little-endian int64) and every weight's little-endian float32 bytes."""
        h = hashlib.sha256(np.asarray(self.sizes, dtype="<i8").tobytes())
        if self.superfluous:
            h.update(b"superfluous" + np.asarray([self.superfluous], dtype="<i8").tobytes())
        for w in self._weights:
            h.update(np.ascontiguousarray(w.detach().cpu().numpy(), dtype="<f4").tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        extra = f", superfluous={self.superfluous}" if self.superfluous else ""
        return f"FrozenNet(sizes={self.sizes}, seed={self.seed}{extra}, device={self.device})"

    def __call__(
        self,
        x: torch.Tensor | np.ndarray,
        mask: Mask | None = None,
        *,
        masks: Mapping[str, Mask] | None = None,
        alphas: Mapping[str, Alpha] | None = None,
        all_outputs: bool = False,
    ) -> torch.Tensor:
        """Logits of ``x`` through the dense net, one mask, or a superposition of masks.

        Parameters
        ----------
        x : tensor or array ``[N, in]``
            Inputs (cast to float32 on the net's device).
        mask : Mask, optional
            Use weights ``W ⊙ M``.
        masks, alphas : mapping name -> Mask, mapping name -> alpha
            Superposition ``W ⊙ Σ αᵢMᵢ`` over the names in ``alphas``. Each alpha is a scalar (float
            or 0-d tensor, gradients flow through tensors) or a per-row ``[N]`` vector giving row
            ``i`` the weights ``W ⊙ Σ α_k[i] M_k``.
        all_outputs : bool
            Also return the superfluous units' logits (columns ``classes:``).

        Returns
        -------
        torch.Tensor ``[N, classes]`` (``[N, classes + superfluous]`` with ``all_outputs``)
        """
        out = self._forward(x, mask, masks, alphas)
        return out if all_outputs or not self.superfluous else out[:, : self.n_classes]

    forward = __call__

    def _forward(
        self,
        x: torch.Tensor | np.ndarray,
        mask: Mask | None,
        masks: Mapping[str, Mask] | None,
        alphas: Mapping[str, Alpha] | None,
    ) -> torch.Tensor:
        h = self._as_input(x)
        if mask is not None and (masks is not None or alphas is not None):
            raise ValueError("pass either mask= or masks= with alphas=, not both")
        if masks is None and alphas is None:
            weights = self._weights if mask is None else self._masked(mask)
            return mlp(h, weights)
        if masks is None or alphas is None:
            raise ValueError("a superposition needs both masks= and alphas=")
        chosen, coeffs = self._resolve(masks, alphas, h.shape[0])
        if all(a.dim() == 0 for a in coeffs):
            weights = []
            for i, w in enumerate(self._weights):
                total = sum(a * m.layers[i].to(w.device, w.dtype) for a, m in zip(coeffs, chosen))
                weights.append(w * total)
            return mlp(h, weights)
        return self._per_row(h, chosen, coeffs)

    # -- helpers -------------------------------------------------------------------------------

    def _as_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = as_tensor(x, np.float32)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch tensor or numpy array, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must be shaped [N, {self.sizes[0]}], got {tuple(x.shape)}")
        return x.to(self.device, torch.float32)

    def check_mask(self, mask: Mask, what: str = "mask") -> None:
        """Raise ``ValueError`` unless ``mask`` has one layer per weight, shaped alike."""
        if not isinstance(mask, Mask):
            raise ValueError(f"{what} must be a Mask, got {type(mask).__name__}")
        if mask.shapes != self.shapes:
            raise ValueError(f"{what} has layer shapes {list(mask.shapes)}, the net has {list(self.shapes)}")

    def _masked(self, mask: Mask) -> list[torch.Tensor]:
        self.check_mask(mask)
        return [w * m.to(w.device, w.dtype) for w, m in zip(self._weights, mask.layers)]

    def _resolve(
        self, masks: Mapping[str, Mask], alphas: Mapping[str, Alpha], n_rows: int
    ) -> tuple[list[Mask], list[torch.Tensor]]:
        if not alphas:
            raise ValueError("alphas is empty: name at least one mask")
        chosen, coeffs = [], []
        for name, alpha in alphas.items():
            if name not in masks:
                raise ValueError(f"alphas names mask {name!r}, not among {sorted(masks)}")
            self.check_mask(masks[name], f"mask {name!r}")
            chosen.append(masks[name])
            a = as_tensor(alpha, np.float32).to(self.device, torch.float32)
            if a.dim() > 1 or (a.dim() == 1 and a.shape[0] != n_rows):
                raise ValueError(f"alpha of {name!r} must be a scalar or shaped [{n_rows}], got {list(a.shape)}")
            coeffs.append(a)
        return chosen, coeffs

    def _per_row(self, h: torch.Tensor, chosen: list[Mask], coeffs: list[torch.Tensor]) -> torch.Tensor:
        """Row-wise superposition, using ``(W ⊙ Σₖ αₖ[i]Mₖ) h_i = Σₖ αₖ[i] (W ⊙ Mₖ) h_i`` per layer.

        Stacks the K masked weights ``[K, out, in]`` once and runs row chunks through batched
        matmuls, so scratch memory stays under ``_ROW_CHUNK_BYTES``.
        """
        n = h.shape[0]
        alpha = torch.stack([a.expand(n) for a in coeffs], dim=1)  # [N, K]
        stacked = [
            torch.stack([w * m.layers[i].to(w.device, w.dtype) for m in chosen])
            for i, w in enumerate(self._weights)
        ]
        k, widest = len(chosen), max(self.sizes[1:])
        chunk = max(1, _ROW_CHUNK_BYTES // (2 * 4 * k * widest))
        outs = []
        for start in range(0, n, chunk):
            z, a = h[start : start + chunk], alpha[start : start + chunk]
            for i, wk in enumerate(stacked):
                y = torch.matmul(z.unsqueeze(0), wk.transpose(1, 2))  # [K, rows, out]
                z = (a.t().unsqueeze(-1) * y).sum(dim=0)
                if i < len(stacked) - 1:
                    z = torch.relu(z)
            outs.append(z)
        return torch.cat(outs) if outs else h.new_zeros((0, self.shapes[-1][0]))


def as_tensor(a: torch.Tensor | np.ndarray | float, dtype: np.dtype | type) -> torch.Tensor:
    """Tensor view of ``a``; arrays are cast to ``dtype`` and copied when read-only or strided oddly."""
    if isinstance(a, torch.Tensor):
        return a
    arr = np.asarray(a, dtype=dtype)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=dtype, order="C", copy=True)
    return torch.from_numpy(arr)


def mlp(h: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``h`` through bias-free linear layers with ReLU between them.

    ``h [N, in]`` with weights ``[out, in]``, or T nets at once: ``h [T, B, in]`` with weights
    ``[T, out, in]`` (one ``bmm`` per layer).
    """
    last = len(weights) - 1
    for i, w in enumerate(weights):
        h = torch.matmul(h, w.transpose(-1, -2))
        if i < last:
            h = torch.relu(h)
    return h
