"""Descriptive statistics of masks: per-layer density and overlap between masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from supsup_fin.masks.mask import Mask


def layer_densities(mask: Mask) -> list[float]:
    """Kept fraction of each layer (non-zero entries / entries), one float per layer."""
    return [int(torch.count_nonzero(m)) / m.numel() for m in mask.layers]


def jaccard_matrix(
    bank: Mapping[str, Mask], names: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of kept weights (all layers) between masks.

    Parameters
    ----------
    bank : MaskBank or mapping name -> Mask
    names : sequence of str, optional
        Masks to compare, in this order (default: all, in the bank's order).

    Returns
    -------
    names : list of str, length k
    matrix : np.ndarray float64 ``[k, k]``, symmetric, 1 on the diagonal (two empty masks count as 1).
    """
    names = list(bank) if names is None else list(names)
    for name in names:
        if name not in bank:
            raise ValueError(f"jaccard_matrix: no mask named {name!r}; available: {list(bank)}")
    k = len(names)
    if k == 0:
        return names, np.zeros((0, 0))
    inter = np.zeros((k, k), dtype=np.int64)
    n_layers = len(bank[names[0]].layers)
    for i in range(n_layers):
        # Exact in float32 while a layer has < 2**24 weights; counts are summed in int64.
        flat = torch.stack([bank[n].layers[i].reshape(-1) != 0 for n in names]).to(torch.float32)
        if flat.shape[1] >= 2**24:
            flat = flat.to(torch.float64)
        inter += torch.round(flat @ flat.t()).to(torch.int64).numpy()
    kept = np.diag(inter)
    union = kept[:, None] + kept[None, :] - inter
    matrix = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return names, matrix
