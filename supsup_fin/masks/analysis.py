"""Descriptive statistics of masks: per-layer density (counted from the bits), overlap between
masks and its heatmap."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from supsup_fin.masks.mask import Mask

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    names, inter = overlap_counts(bank, names)
    return names, jaccard_from_counts(inter.sum(axis=0))


def overlap_counts(bank: Mapping[str, Mask], names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Kept weights two masks share, per layer: ``inter[l, i, j] = |A_i ∩ A_j|`` in layer ``l``.

    Returns
    -------
    names : list of str, length k (default: all, in the bank's order)
    inter : np.ndarray int64 ``[layers, k, k]``; the diagonal holds each mask's kept count.
    """
    names = list(bank) if names is None else list(names)
    for name in names:
        if name not in bank:
            raise ValueError(f"jaccard_matrix: no mask named {name!r}; available: {list(bank)}")
    if not names:
        return names, np.zeros((0, 0, 0), dtype=np.int64)
    inter = []
    for i in range(len(bank[names[0]].layers)):
        # Exact in float32 while a layer has < 2**24 weights; counts are summed in int64.
        flat = torch.stack([bank[n].layers[i].reshape(-1) != 0 for n in names]).to(torch.float32)
        if flat.shape[1] >= 2**24:
            flat = flat.to(torch.float64)
        inter.append(torch.round(flat @ flat.t()).to(torch.int64).numpy())
    return names, np.stack(inter)


def jaccard_from_counts(inter: np.ndarray) -> np.ndarray:
    """Jaccard matrix ``[k, k]`` from shared kept counts ``[k, k]`` (:func:`overlap_counts`, summed
    over the layers compared); two empty masks count as 1."""
    kept = np.diag(inter)
    union = kept[:, None] + kept[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def jaccard_chance(densities: Sequence[float] | np.ndarray, sizes: Sequence[int] | None = None) -> np.ndarray:
    """The Jaccard overlap two independent random masks of these densities have on average.

    For independent masks keeping fractions ``p`` and ``q`` of the weights, the intersection keeps
    ``pq`` and the union ``p + q - pq``: chance is ``pq / (p + q - pq)``, e.g. 1/3 at density 0.5.
    An overlap near it says the masks share no more weights than unrelated ones would.

    Parameters
    ----------
    densities : ``[k]`` one density per mask, or ``[k, L]`` per-layer densities with ``sizes``
    sizes : ``[L]`` weights per layer, for masks compared over several layers at once: chance is
        then ``Σ n p q / Σ n (p + q - pq)`` (expected intersection over expected union).

    Returns
    -------
    np.ndarray ``[k, k]``: chance per pair, 1 on the diagonal (and for two empty masks).
    """
    d = np.asarray(densities, dtype=np.float64)
    if sizes is None:
        d, n = d.reshape(-1, 1), np.ones(1)
    else:
        n = np.asarray(sizes, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != len(n):
            raise ValueError(f"jaccard_chance: densities must be [k, {len(n)}] for {len(n)} layer sizes, "
                             f"got {list(d.shape)}")
    both = np.einsum("il,jl,l->ij", d, d, n)
    kept = d @ n
    union = kept[:, None] + kept[None, :] - both
    chance = np.where(union > 0, both / np.where(union > 0, union, 1.0), 1.0)
    np.fill_diagonal(chance, 1.0)
    return chance


def plot_jaccard(
    names: Sequence[str], matrix: np.ndarray, path: str | os.PathLike[str] | None = None, title: str | None = None
) -> Figure:
    """Heatmap of a Jaccard matrix (e.g. from :func:`jaccard_matrix`), the seed's overlap plot.

    Draws on a standalone ``matplotlib.figure.Figure`` with an Agg canvas: no pyplot, no global
    figure state, safe in threads and servers.

    Parameters
    ----------
    names : sequence of str, length k
    matrix : array ``[k, k]`` in [0, 1]
    path : path, optional
        Also save the figure there (format from the suffix, e.g. ``.png``).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(names)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix must be [{len(names)}, {len(names)}] for {len(names)} names, got {list(matrix.shape)}")
    k = len(names)
    side = min(2.0 + 0.35 * k, 16.0)
    fig = Figure(figsize=(side + 1.2, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="Jaccard overlap of kept weights")
    ax.set_title(title or f"Mask overlap ({k} masks)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig
