"""State naming and canonical order: ascending volatility or ascending mean return.

hmmlearn's state indices are arbitrary (they permute between seeds and fits), so a fit is put
in canonical order, chosen by ``RegimeModel(order_by=...)``:

* ``"volatility"``: ascending return variance (ties: ascending mean log volatility), named
  ``calm / normal / turbulent`` (see :func:`regime_names`);
* ``"mean"``: ascending mean return (ties: ascending return variance), named
  ``bear / sideways / bull``.

Matching a refit to the previous fit of its market lineage is :mod:`supsup_fin.regimes._lineage`'s
job: a refit keeps its lineage's names and order whatever this order would say.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from supsup_fin.errors import SupsupError

_VOLATILITY_NAMES: dict[int, list[str]] = {
    2: ["calm", "turbulent"],
    3: ["calm", "normal", "turbulent"],
    4: ["calm", "normal", "volatile", "turbulent"],
}


def _volatility_names(k: int) -> list[str]:
    return list(_VOLATILITY_NAMES.get(k, [f"regime_{i}" for i in range(k)]))


def _mean_names(k: int) -> list[str]:
    if k == 1:
        return ["regime_0"]
    middle = ["sideways"] if k == 3 else [f"sideways_{i}" for i in range(1, k - 1)]
    return ["bear", *middle, "bull"]


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


def mean_order(means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """State order by ascending mean return (ties: ascending return variance).

    Parameters
    ----------
    means, covars : numpy.ndarray
        Shapes ``[K, d]`` and ``[K, d, d]``, standardised features (column 0 the log return);
        standardisation is increasing, so the order equals the order in the original scale.

    Returns
    -------
    numpy.ndarray
        Shape ``[K]``, ``order[j]`` = index of the state placed at position ``j``.
    """
    return np.lexsort((covars[:, 0, 0], means[:, 0]))


_ORDERS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], Callable[[int], list[str]]]] = {
    "volatility": (volatility_order, _volatility_names),
    "mean": (mean_order, _mean_names),
}
ORDERS: tuple[str, ...] = tuple(_ORDERS)
"""The valid ``order_by`` values."""


def check_order(order_by: object, what: str = "order_by") -> str:
    """``order_by`` if it names an order, else ``SupsupError`` naming ``what`` and the valid orders."""
    if not (isinstance(order_by, str) and order_by in _ORDERS):
        raise SupsupError(f"RegimeModel: {what} expected one of {list(ORDERS)}, got {order_by!r}")
    return order_by


def regime_names(k: int, order_by: str = "volatility") -> list[str]:
    """Names of ``k`` regimes in canonical order.

    Parameters
    ----------
    k : int
        Number of states, ``>= 1``.
    order_by : {"volatility", "mean"}
        The canonical order the names follow.

    Returns
    -------
    list of str
        ``order_by="volatility"`` (ascending volatility): ``["calm", "turbulent"]`` for 2,
        ``["calm", "normal", "turbulent"]`` for 3, ``["calm", "normal", "volatile", "turbulent"]``
        for 4, else ``regime_0 .. regime_{k-1}``.
        ``order_by="mean"`` (ascending mean return): ``["bear", "bull"]`` for 2,
        ``["bear", "sideways", "bull"]`` for 3, and for ``k >= 4`` ``bear``, then
        ``sideways_1 .. sideways_{k-2}`` by ascending mean, then ``bull``; ``["regime_0"]`` for 1.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"number of regimes must be a positive integer, got {k!r}")
    return _ORDERS[check_order(order_by)][1](int(k))


def canonical_order(means: np.ndarray, covars: np.ndarray, order_by: str) -> np.ndarray:
    """State order ``[K]`` of :func:`volatility_order` or :func:`mean_order`, by ``order_by``."""
    return _ORDERS[check_order(order_by)][0](means, covars)
