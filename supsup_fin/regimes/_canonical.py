"""State naming and canonical order: ascending volatility.

hmmlearn's state indices are arbitrary (they permute between seeds and fits), so a fit is put
in canonical order, ascending volatility. Matching a refit to the previous fit of its market
lineage is :mod:`supsup_fin.regimes._lineage`'s job.
"""

from __future__ import annotations

import numpy as np

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

