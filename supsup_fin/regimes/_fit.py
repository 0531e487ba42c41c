"""Fit HMM parameters with hmmlearn's EM: restarts, degeneracy checks, fallbacks, state-count selection.

hmmlearn is used for ``fit`` and for ``score``/``bic`` on the training features only; its
posteriors look ahead and are never used. Each EM run goes through
:mod:`supsup_fin.regimes._threads`, so fits may run on several threads at once: hmmlearn's
messages are collected per thread, and BLAS and OpenMP run on one thread. Convergence is read
from the fitted model's ``monitor_``.

Over 400 lines because the single fit, the restarts, the fallbacks and the BIC selection share
one :class:`EMSettings` and the reasons a fit is unusable; split, each would re-import both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from hmmlearn.hmm import GaussianHMM

from supsup_fin.errors import SupsupError
from supsup_fin.regimes import _forward
from supsup_fin.regimes._threads import captured, single_threaded

log = logging.getLogger(__name__)

COVARIANCE_TYPES: tuple[str, ...] = ("full", "diag", "spherical", "tied")
"""Covariance types hmmlearn's ``GaussianHMM`` accepts."""

MIN_OCCUPANCY_FRACTION: float = 0.005
"""A state whose smoothed expected share of training rows is below this (or below ``d + 1``
rows) counts as never visited and makes the fit degenerate."""


class RegimeFitError(SupsupError):
    """No non-degenerate HMM could be fitted under the given constraints."""


@dataclass(frozen=True)
class EMSettings:
    """How every EM run of one fit is configured (hmmlearn ``GaussianHMM`` arguments)."""

    covariance_type: str  # one of COVARIANCE_TYPES; a fallback replaces it with "diag"
    n_iter: int  # EM iteration cap
    min_covar: float  # floor on covariance diagonals, in standardised units
    seeds: tuple[int, ...]  # one k-means random_state per restart
    sticky: float = 0.0  # self-transition pseudo-counts: a Dirichlet prior on transmat rows
    tol: float = 1e-2  # EM stops when the log-likelihood gains less (hmmlearn's default)


@dataclass
class FitResult:
    """One fitted HMM, parameters in hmmlearn's (arbitrary) state order."""

    n_states: int
    covariance_type: str
    startprob: np.ndarray  # [K]
    transmat: np.ndarray  # [K, K]
    means: np.ndarray  # [K, d]
    covars: np.ndarray  # [K, d, d], always full
    log_likelihood: float
    bic: float
    converged: bool
    n_iter: int
    seed: int
    messages: list[str] = field(default_factory=list)


def _occupancy(x: np.ndarray, res: FitResult) -> np.ndarray:
    """Smoothed expected number of rows per state ``[K]``."""
    log_b = _forward.gaussian_log_densities(x, res.means, res.covars)
    return _forward.smoothed_proba(log_b, res.startprob, res.transmat).sum(axis=0)


def degeneracy(x: np.ndarray, res: FitResult) -> str | None:
    """Why a fit is unusable (non-finite, not positive-definite, a state almost never visited),
    or ``None``."""
    params = (res.startprob, res.transmat, res.means, res.covars)
    if not all(np.isfinite(p).all() for p in params) or not np.isfinite(res.log_likelihood):
        return "non-finite parameters or log-likelihood"
    try:
        occupancy = _occupancy(x, res)
    except np.linalg.LinAlgError:
        return "a covariance is not positive-definite"
    floor = max(x.shape[1] + 1.0, MIN_OCCUPANCY_FRACTION * len(x))
    if (occupancy < floor).any():
        k = int(np.argmin(occupancy))
        return (f"state {k} is almost never visited ({occupancy[k]:.1f} of {len(x)} rows; its mean "
                f"{np.round(res.means[k], 1).tolist()} standard deviations from the training mean)")
    return None


WARM_START_SEED = -1
"""``FitResult.seed`` of the restart that started from the previous fit's parameters."""

WARM_START_MARGIN = 1.0
"""Log-likelihood by which the warm start must beat the best k-means start. Restarted from a
converged fit, EM keeps creeping along the flat top for a few hundredths (3e-5 changes in the
transition matrix were measured on unchanged data); distinct optima differ by units (5.6 on
NASDAQ 1999-2015)."""


def fit_once(
    x: np.ndarray, n_states: int, settings: EMSettings, seed: int, init: FitResult | None = None,
) -> FitResult | str:
    """One EM run on ``x`` ``[n, d]``; a :class:`FitResult` or the reason it failed.

    ``seed`` seeds the k-means start; ``init`` starts EM from those parameters instead (same
    state count, in ``x``'s units).
    """
    covariance_type = settings.covariance_type
    if init is None:
        distinct = len(np.unique(x, axis=0))
        if distinct < n_states:  # k-means would warn and return fewer clusters
            return f"only {distinct} distinct feature rows for {n_states} states"
    hmm = GaussianHMM(
        n_components=n_states,
        covariance_type=covariance_type,
        n_iter=settings.n_iter,
        tol=settings.tol,
        min_covar=settings.min_covar,
        random_state=max(seed, 0),
        transmat_prior=1.0 + settings.sticky * np.eye(n_states),
        init_params="" if init is not None else "stmc",
    )
    with captured() as messages, single_threaded():
        try:
            if init is not None:
                hmm.startprob_, hmm.transmat_, hmm.means_ = init.startprob, init.transmat, init.means
                hmm.covars_ = _hmmlearn_covars(init.covars, covariance_type)
            hmm.fit(x)
            log_lik = float(hmm.score(x))
            bic = float(hmm.bic(x))
        except (ValueError, np.linalg.LinAlgError) as exc:
            return f"EM failed: {exc}"
    history = list(hmm.monitor_.history)
    # hmmlearn's monitor_.converged is also True when n_iter ran out; we want the tolerance met.
    converged = len(history) >= 2 and history[-1] - history[-2] < hmm.monitor_.tol
    return FitResult(
        n_states=n_states,
        covariance_type=covariance_type,
        startprob=np.array(hmm.startprob_, dtype=np.float64),
        transmat=np.array(hmm.transmat_, dtype=np.float64),
        means=np.array(hmm.means_, dtype=np.float64),
        covars=np.array(hmm.covars_, dtype=np.float64),
        log_likelihood=log_lik,
        bic=bic,
        converged=bool(converged),
        n_iter=int(hmm.monitor_.iter),
        seed=seed,
        messages=list(messages),
    )


def _hmmlearn_covars(full: np.ndarray, covariance_type: str) -> np.ndarray:
    """Full ``[K, d, d]`` covariances in the shape hmmlearn's ``covars_`` setter expects."""
    if covariance_type == "diag":
        return np.diagonal(full, axis1=1, axis2=2).copy()
    if covariance_type == "spherical":
        return np.diagonal(full, axis1=1, axis2=2).mean(axis=1)
    if covariance_type == "tied":
        return full.mean(axis=0)
    return full


def fit_best(
    x: np.ndarray, n_states: int, settings: EMSettings, init: FitResult | None = None,
) -> FitResult | str:
    """Best non-degenerate fit over restarts (highest training log-likelihood).

    Parameters
    ----------
    x : numpy.ndarray
        Shape ``[n, d]``, standardised training features.
    n_states : int
        Passed to ``GaussianHMM``.
    settings : EMSettings
        One restart per ``settings.seeds``.
    init : FitResult, optional
        One more restart, started from these parameters (a warm start from the previous fit of
        the lineage; used only when its state count is ``n_states``).

    Returns
    -------
    FitResult or str
        The best fit, or the reason every restart failed.
    """
    candidates: list[FitResult] = []
    reasons: list[str] = []
    starts: list[tuple[int, FitResult | None]] = [(int(seed), None) for seed in settings.seeds]
    if init is not None and init.n_states == n_states:
        starts.append((WARM_START_SEED, init))
    for seed, start in starts:
        res = fit_once(x, n_states, settings, seed, init=start)
        if isinstance(res, str):
            reasons.append(res)
            log.debug("k=%d %s seed=%d: %s", n_states, settings.covariance_type, seed, res)
            continue
        if res.messages:
            log.debug("k=%d %s seed=%d: hmmlearn said %s", n_states, settings.covariance_type, seed,
                      "; ".join(sorted(set(res.messages))))
        candidates.append(res)
    # Highest likelihood first; the occupancy check (a forward-backward) runs only as needed.
    # The warm start must beat the k-means starts by WARM_START_MARGIN: restarted from an
    # optimum, EM gains a little without changing the fit, and a refit on unchanged data should
    # reproduce the previous fit exactly.
    def score(r: FitResult) -> float:
        return r.log_likelihood - (WARM_START_MARGIN if r.seed == WARM_START_SEED else 0.0)

    for res in sorted(candidates, key=lambda r: (-score(r), r.seed)):
        why = degeneracy(x, res)
        if why is None:
            return res
        reasons.append(why)
    return "; ".join(dict.fromkeys(reasons)) or "no restarts"


def _first_usable(
    x: np.ndarray, counts: range, settings: EMSettings, init: FitResult | None = None,
) -> tuple[FitResult | None, list[str]]:
    """The first usable fit in the order ``(k, settings.covariance_type)``, ``(k, "diag")`` for
    ``k`` in ``counts``, or ``None``; and why each configuration tried before it was unusable."""
    reasons: list[str] = []
    for k in counts:
        types = [settings.covariance_type]
        if settings.covariance_type not in ("diag", "spherical"):
            types.append("diag")
        for cov in types:
            res = fit_best(x, k, replace(settings, covariance_type=cov), init)
            if isinstance(res, FitResult):
                return res, reasons
            reasons.append(f"{k} states {cov}: {res}")
    return None, reasons


def _fell_back(n_states: int, covariance_type: str, res: FitResult, reasons: list[str]) -> str | None:
    if not reasons:
        return None
    return (f"fell back from {n_states} states, {covariance_type} covariance to {res.n_states} "
            f"states, {res.covariance_type} covariance: " + " | ".join(reasons))


def fit_with_fallback(
    x: np.ndarray, n_states: int, settings: EMSettings, allow_fewer_states: bool,
    init: FitResult | None = None,
) -> tuple[FitResult, str | None]:
    """Fit, falling back to diagonal covariance and then to fewer states on degeneracy.

    Returns
    -------
    result : FitResult
        The first usable fit in the order ``(k, settings.covariance_type)``, ``(k, "diag")``,
        ``(k - 1, settings.covariance_type)``, ``(k - 1, "diag")``, ... down to one state.
    fallback : str or None
        Why the requested configuration was not used (each configuration tried and why it was
        unusable), or ``None`` if it was.

    Raises
    ------
    RegimeFitError
        If nothing usable was found (with ``allow_fewer_states=False``: at ``n_states``).
    """
    lowest = 1 if allow_fewer_states else n_states
    res, reasons = _first_usable(x, range(n_states, lowest - 1, -1), settings, init)
    if res is None:
        raise RegimeFitError("no usable HMM fit: " + " | ".join(reasons))
    fallback = _fell_back(n_states, settings.covariance_type, res, reasons)
    if fallback:
        log.info("HMM fit %s", fallback)
    return res, fallback


def fit_states(
    x: np.ndarray, k_range: tuple[int, int], settings: EMSettings, selection: str,
    init: FitResult | None = None, allow_fewer_states: bool = True,
) -> tuple[FitResult, str | None, dict[int, float]]:
    """Fit one state count (``k_range = (k, k)``) with fallbacks, or select one from a range.

    Returns
    -------
    result : FitResult
    fallback : str or None
    bics : dict of int to float
        ``selection``'s criterion per count tried; for one count, the fit's own BIC.
        See :func:`fit_with_fallback` (``init``, ``allow_fewer_states``: one count only) and
        :func:`select_state_count`.
    """
    lo, hi = k_range
    if lo != hi:
        return select_state_count(x, k_range, settings, selection)
    res, fallback = fit_with_fallback(x, lo, settings, allow_fewer_states, init)
    if res.seed == WARM_START_SEED:
        log.info("refit: EM started from the previous fit scored best (log-likelihood %.2f)",
                 res.log_likelihood)
    return res, fallback, {res.n_states: res.bic}


def _below_range(
    x: np.ndarray, k_range: tuple[int, int], settings: EMSettings, reasons: list[str],
) -> tuple[FitResult, str]:
    """The fit below ``k_range`` when no count in it was usable, and why (every count tried, and
    what made it unusable)."""
    lo, hi = k_range
    res, below = _first_usable(x, range(lo - 1, 0, -1), settings) if lo > 1 else (None, [])
    reasons = reasons + below
    if res is None:
        raise RegimeFitError(f"no usable HMM fit for any state count in {k_range} or below: "
                             + " | ".join(reasons))
    why = (f"no usable fit with {lo}..{hi} states: " + " | ".join(reasons)
           + f"; fitted {res.n_states} states, {res.covariance_type} covariance")
    log.info("HMM fit %s", why)
    return res, why


SELECTIONS: tuple[str, ...] = ("bic_returns", "bic_features")
"""State-count criteria: BIC of a Gaussian HMM on the daily returns alone (default), or BIC of
the full two-feature HMM (kept for comparison; it over-selects, see :func:`select_state_count`)."""


def select_state_count(
    x: np.ndarray, k_range: tuple[int, int], settings: EMSettings, selection: str = "bic_returns",
) -> tuple[FitResult, str | None, dict[int, float]]:
    """Choose the state count in ``k_range`` (inclusive) by BIC, then fit the full model.

    ``selection="bic_returns"``: BIC of a one-feature Gaussian HMM on the standardised daily
    log returns (column 0 of ``x``), ``n_restarts`` EM runs per count, lowest BIC wins; the
    two-feature model is then fitted with that count (with the usual fallbacks). Daily returns
    share nothing between rows, so the HMM's conditional independence holds under a
    regime-switching model and BIC behaves: measured on sampled series it picks 2 on two-state
    data, 3 on three-state data and 1 on i.i.d. returns (4 seeds each).

    ``selection="bic_features"``: BIC of the two-feature model itself. Consecutive
    realised-volatility features share ``vol_window - 1`` returns, so they are strongly
    autocorrelated within a regime and conditional independence fails: BIC then rewards extra
    states that follow slow drifts of the volatility (``(2, 4)`` picks 4 on two-state data,
    i.i.d. returns get 3 states from ``(1, 3)``). Kept only to show that.

    Returns
    -------
    result : FitResult
        The chosen two-feature fit.
    fallback : str or None
        As in :func:`fit_with_fallback`; when no count in the range is usable, the fit has fewer
        states and this names every count tried and why it was unusable.
    bics : dict of int to float
        The criterion per state count (``inf``: no usable fit at that count).

    Raises
    ------
    RegimeFitError
        No count in the range (nor below it) gives a usable fit.
    """
    if selection not in SELECTIONS:
        raise SupsupError(f"state-count selection expected one of {list(SELECTIONS)}, got {selection!r}")
    if selection == "bic_features":
        return select_by_bic(x, k_range, settings)
    lo, hi = k_range
    returns = np.ascontiguousarray(x[:, :1])
    bics: dict[int, float] = {}
    reasons: list[str] = []
    for k in range(lo, hi + 1):
        res = fit_best(returns, k, replace(settings, covariance_type="full"))
        if isinstance(res, str):
            log.info("state-count selection: %d states on returns unusable: %s", k, res)
            reasons.append(f"{k} states on returns: {res}")
            bics[k] = float("inf")
        else:
            bics[k] = res.bic
    log.info("BIC of the returns-only HMM by state count: %s",
             {k: round(b, 1) for k, b in bics.items()})
    ranked = sorted((k for k in bics if np.isfinite(bics[k])), key=lambda k: (bics[k], k))
    for k in ranked:  # best count first; a count whose two-feature fit fails gives way to the next
        res, why = _first_usable(x, range(k, k - 1, -1), settings)
        if res is None:
            log.info("state-count selection: BIC chose %d states but no usable fit: %s", k, why)
            reasons.extend(why)
            continue
        fallback = _fell_back(k, settings.covariance_type, res, why)
        if k != ranked[0]:
            fallback = " | ".join([f"BIC's choice {ranked[0]} states unusable"] + reasons
                                  + ([fallback] if fallback else []))
        return res, fallback, bics
    res, why = _below_range(x, k_range, settings, reasons)
    return res, why, bics


def select_by_bic(
    x: np.ndarray, k_range: tuple[int, int], settings: EMSettings,
) -> tuple[FitResult, str | None, dict[int, float]]:
    """Fit every state count in ``k_range`` (inclusive) and keep the lowest BIC.

    A count whose fits are all degenerate (even with diagonal covariance) scores ``inf``; if
    every count does, the search falls back below ``k_range[0]``.

    This is ``selection="bic_features"`` of :func:`select_state_count`, which over-selects
    (see there; on sampled 2-state series ``(2, 4)`` picks 4, 3 with stickier chains).

    Returns
    -------
    result : FitResult
        The chosen fit.
    fallback : str or None
        As in :func:`select_state_count`.
    bics : dict of int to float
        hmmlearn's ``bic`` on the training features per state count.
    """
    lo, hi = k_range
    fits: dict[int, tuple[FitResult, str | None]] = {}
    bics: dict[int, float] = {}
    reasons: list[str] = []
    for k in range(lo, hi + 1):
        res, why = _first_usable(x, range(k, k - 1, -1), settings)
        if res is None:
            log.info("BIC search: no usable fit with %d states: %s", k, why)
            reasons.extend(why)
            bics[k] = float("inf")
        else:
            fits[k] = res, _fell_back(k, settings.covariance_type, res, why)
            bics[k] = res.bic
    log.info("BIC by state count: %s", {k: round(b, 1) for k, b in bics.items()})
    if fits:
        best = min(fits, key=lambda k: (bics[k], k))
        return fits[best][0], fits[best][1], bics
    res, why = _below_range(x, k_range, settings, reasons)
    return res, why, bics
