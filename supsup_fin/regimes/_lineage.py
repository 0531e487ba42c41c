"""Refit alignment: a refit of a market lineage keeps the previous fit's states, order and names.

A refit on a new training window standardises its features with that window's mean and std,
so the previous fit's parameters are first converted to the new units (:func:`rescale`). They
then serve twice: as one more EM start (:func:`warm_start`), and as the targets the new states
are matched to by the Hungarian algorithm (:func:`match_previous`), so regime ``k`` keeps its
meaning and name across refits. A lineage keeps its observations, volatility window and
canonical order (``order_by``): the matching itself reads means and variances only, so it aligns
a refit the same way whichever order the lineage's names follow.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from supsup_fin.errors import SupsupError
from supsup_fin.regimes._fit import WARM_START_SEED, FitResult

log = logging.getLogger(__name__)

Units = tuple[np.ndarray, np.ndarray]
"""A feature standardisation ``(mean, std)``, each of shape ``[d]``."""


class PreviousFit(Protocol):
    """What alignment reads from the previous fit (a fitted ``RegimeModel``)."""

    observations: str
    vol_window: int
    order_by: str
    n_states_: int
    names_: list[str]
    covariance_type_: str
    startprob_: np.ndarray
    transmat_: np.ndarray
    means_: np.ndarray
    covars_: np.ndarray
    feature_mean_: np.ndarray
    feature_std_: np.ndarray


def check_same_lineage(previous: PreviousFit, observations: str, vol_window: int, order_by: str) -> None:
    """Raise ``SupsupError`` unless ``previous`` uses these observations, volatility window and order."""
    if previous.observations != observations or previous.vol_window != vol_window:
        raise SupsupError(
            f"RegimeModel.fit: previous= was fitted on observations {previous.observations!r} with "
            f"vol_window {previous.vol_window}, this model uses {observations!r} with "
            f"vol_window {vol_window}; a lineage keeps its observations")
    if previous.order_by != order_by:
        raise SupsupError(
            f"RegimeModel.fit: previous= orders its regimes by {previous.order_by!r} "
            f"({', '.join(previous.names_)}), this model by {order_by!r}; a lineage keeps its order")


def rescale(means: np.ndarray, covars: np.ndarray, src: Units, dst: Units) -> tuple[np.ndarray, np.ndarray]:
    """State means ``[K, d]`` and covariances ``[K, d, d]`` of features standardised with ``src``,
    expressed for features standardised with ``dst``."""
    ratio = src[1] / dst[1]
    return (means * src[1] + src[0] - dst[0]) / dst[1], covars * np.outer(ratio, ratio)[None]


def warm_start(previous: PreviousFit, units: Units) -> FitResult:
    """``previous``'s parameters for features standardised with ``units``: an EM start.

    Returns
    -------
    FitResult
        ``seed`` is :data:`~supsup_fin.regimes._fit.WARM_START_SEED`; likelihood and BIC are NaN.
    """
    means, covars = rescale(previous.means_, previous.covars_,
                            (previous.feature_mean_, previous.feature_std_), units)
    return FitResult(
        n_states=previous.n_states_, covariance_type=previous.covariance_type_,
        startprob=previous.startprob_.copy(), transmat=previous.transmat_.copy(), means=means, covars=covars,
        log_likelihood=float("nan"), bic=float("nan"), converged=False, n_iter=0, seed=WARM_START_SEED,
    )


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


def match_previous(means: np.ndarray, covars: np.ndarray, units: Units, previous: PreviousFit) -> np.ndarray:
    """Match new states to ``previous``'s on the state means and log standard deviations.

    Parameters
    ----------
    means, covars : numpy.ndarray
        Shapes ``[K, d]`` and ``[K, d, d]``: the new fit's states, standardised with ``units``.
    units : (numpy.ndarray, numpy.ndarray)
        The new window's ``(mean, std)``; the comparison is made in ``previous``'s units.
    previous : PreviousFit
        With the same ``K``.

    Returns
    -------
    numpy.ndarray
        Shape ``[K]``, ``perm[j]`` = index (in ``means``) of the state stored at position ``j``.
    """
    in_prev_units, new_covars = rescale(means, covars, units, (previous.feature_mean_, previous.feature_std_))
    new_var = np.diagonal(new_covars, axis1=1, axis2=2)
    old_var = np.diagonal(previous.covars_, axis1=1, axis2=2)
    perm = match_states(np.hstack([in_prev_units, 0.5 * np.log(new_var)]),
                        np.hstack([previous.means_, 0.5 * np.log(old_var)]))
    if list(perm) != sorted(perm):
        log.info("refit states reordered to match the previous fit: %s", [int(p) for p in perm])
    return perm
