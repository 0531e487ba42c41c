"""State naming, canonical order and alignment across refits.

hmmlearn's state indices are arbitrary (they permute between seeds and fits). A fit is put
in canonical order, ascending volatility, and a refit of the same market lineage is then
matched to the previous fit's states so that regime ``k`` keeps its meaning.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_NAMES: dict[int, list[str]] = {
    2: ["calm", "turbulent"],
    3: ["calm", "normal", "turbulent"],
    4: ["calm", "normal", "volatile", "turbulent"],
}


def regime_names(k: int) -> list[str]:
    """Names of ``k`` regimes in ascending-volatility order.

    Parameters
    ----------
    k : int
        Number of states, ``>= 1``.

    Returns
    -------
    list of str
        ``["calm", "turbulent"]`` for 2, ``["calm", "normal", "turbulent"]`` for 3,
        ``["calm", "normal", "volatile", "turbulent"]`` for 4, else ``regime_0 .. regime_{k-1}``.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"number of regimes must be a positive integer, got {k!r}")
    return list(_NAMES.get(int(k), [f"regime_{i}" for i in range(int(k))]))


def volatility_order(means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """State order by ascending return variance (ties: ascending mean log volatility).

    Parameters
    ----------
    means : numpy.ndarray
        Shape ``[K, d]``, standardised features (column 0 return, column 1 log volatility).
    covars : numpy.ndarray
        Shape ``[K, d, d]``. Standardisation scales every state's return variance by the same
        positive factor, so the order equals the order in the original scale.

    Returns
    -------
    numpy.ndarray
        Shape ``[K]``, ``order[j]`` = index of the state placed at position ``j``.
    """
    return np.lexsort((means[:, -1], covars[:, 0, 0]))


def match_states(new_means: np.ndarray, old_means: np.ndarray) -> np.ndarray:
    """Hungarian matching of new states to old ones on squared distance between means.

    Parameters
    ----------
    new_means, old_means : numpy.ndarray
        Shape ``[K, d]``, both in one feature scale.

    Returns
    -------
    numpy.ndarray
        Shape ``[K]``, ``perm[j]`` = index of the new state that takes old state ``j``'s place.
    """
    cost = ((old_means[:, None, :] - new_means[None, :, :]) ** 2).sum(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=int)
    perm[rows] = cols
    return perm
