"""Forward filter, backward smoother and Gaussian emission densities, in plain numpy.

hmmlearn's public posteriors are smoothed (they look ahead), so every probability the
regime model reports comes from here. All recursions run in log space with a max-shifted
log-sum-exp, and every reduction over states or feature dimensions inside a row is an
explicit, fixed-order sum of element-wise operations (no BLAS matrix products, whose
blocking can depend on the number of rows): a row's result therefore depends only on the
rows before it, bitwise, whatever the number of rows or the batch size. That is what makes
``filter_proba`` prefix-invariant and lets the rolling-window forecast be vectorised across
windows without changing a bit (measured: identical, not merely within 1e-12).

Shapes: ``n`` time steps, ``K`` states, ``d`` features, ``B`` parallel sequences.
"""

from __future__ import annotations

import numpy as np
from hmmlearn.base import BaseHMM

from supsup_fin._numeric import logsumexp_axis1

_LOG_2PI = float(np.log(2.0 * np.pi))


def _seq_sum(terms: list[np.ndarray]) -> np.ndarray:
    """Left-to-right sum of equally shaped arrays."""
    acc = terms[0].copy()
    for term in terms[1:]:
        acc += term
    return acc


def log_transmat(transmat: np.ndarray) -> np.ndarray:
    """Element-wise log of a transition matrix ``[K, K]``; zeros become ``-inf``."""
    with np.errstate(divide="ignore"):
        return np.log(transmat)


def stationary_distribution(transmat: np.ndarray) -> np.ndarray:
    """Stationary distribution ``pi = pi @ A`` of a row-stochastic matrix.

    Parameters
    ----------
    transmat : numpy.ndarray
        Shape ``[K, K]``.

    Returns
    -------
    numpy.ndarray
        Shape ``[K]``, non-negative, sums to 1 (the least-squares solution of
        ``[A^T - I; 1^T] pi = [0; 1]``, clipped at 0; for a reducible chain, one of its
        stationary distributions).
    """
    k = transmat.shape[0]
    system = np.vstack([transmat.T - np.eye(k), np.ones((1, k))])
    rhs = np.zeros(k + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(system, rhs, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def gaussian_log_densities(x: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """Log-densities of every row under every state's multivariate normal.

    Closed form through the Cholesky factor ``L`` of each covariance
    (``z = L^{-1}(x - mu)`` by forward substitution), computed column by column so that each
    row's value is independent of the others.

    Parameters
    ----------
    x : numpy.ndarray
        Shape ``[n, d]``.
    means : numpy.ndarray
        Shape ``[K, d]``.
    covars : numpy.ndarray
        Shape ``[K, d, d]``, symmetric positive-definite.

    Returns
    -------
    numpy.ndarray
        Shape ``[n, K]``.

    Raises
    ------
    numpy.linalg.LinAlgError
        If a covariance is not positive-definite.
    """
    n, d = x.shape
    k = means.shape[0]
    out = np.empty((n, k))
    for s in range(k):
        chol = np.linalg.cholesky(covars[s])
        z: list[np.ndarray] = []
        for i in range(d):
            acc = x[:, i] - means[s, i]
            for j in range(i):
                acc = acc - chol[i, j] * z[j]
            z.append(acc / chol[i, i])
        maha = _seq_sum([zi * zi for zi in z])
        log_det = float(np.log(np.diag(chol)).sum())
        out[:, s] = -0.5 * (d * _LOG_2PI + maha) - log_det
    return out


def _normalise(log_post: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``[B, K]`` log weights over states; return them and their log-sum ``[B]``."""
    total = logsumexp_axis1(log_post)
    return log_post - total[:, None], total


def _predict_log(log_alpha: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """One-step prediction ``log sum_i alpha_i A_ij`` for ``[B, K]`` log alpha."""
    return logsumexp_axis1(log_alpha[:, :, None] + log_a[None, :, :])


def forward(
    log_b: np.ndarray, log_start: np.ndarray, log_a: np.ndarray
) -> tuple[np.ndarray, float]:
    """Filtered log-probabilities ``log P(z_t | x_1..t)`` of one sequence.

    Parameters
    ----------
    log_b : numpy.ndarray
        Shape ``[n, K]``, emission log-densities.
    log_start : numpy.ndarray
        Shape ``[K]``, log of the state distribution before the first observation.
    log_a : numpy.ndarray
        Shape ``[K, K]``, log transition matrix.

    Returns
    -------
    log_alpha : numpy.ndarray
        Shape ``[n, K]``, each row normalised over states.
    log_likelihood : float
        ``log p(x_1..n)``.
    """
    out, totals = forward_with_normalisers(log_b, log_start, log_a)
    return out, float(totals.sum())


def forward_with_normalisers(
    log_b: np.ndarray, log_start: np.ndarray, log_a: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`forward`'s filtered log-probabilities ``[n, K]`` and its per-row normalisers ``[n]``:
    ``log p(x_t | x_1..t-1)``, each row's one-step predictive log-likelihood (row 0: ``log p(x_1)``)."""
    n, k = log_b.shape
    out = np.empty((n, k))
    totals = np.empty(n)
    state, totals[:1] = _normalise(log_start[None, :] + log_b[:1])
    out[0] = state[0]
    for t in range(1, n):
        state, totals[t : t + 1] = _normalise(_predict_log(state, log_a) + log_b[t : t + 1])
        out[t] = state[0]
    return out, totals


def forward_last_of_windows(
    log_b: np.ndarray, window: int, log_start: np.ndarray, log_a: np.ndarray
) -> np.ndarray:
    """Last filtered log-probabilities of every length-``window`` run of rows, all at once.

    Window ``w`` covers rows ``w .. w + window - 1`` and its filter restarts from
    ``log_start``; the ``n - window + 1`` filters advance together as one ``[B, K]`` state,
    so the cost is ``window`` vectorised steps. Row ``w`` of the result equals the last row
    of :func:`forward` on ``log_b[w : w + window]`` (the same element-wise operations).

    Parameters
    ----------
    log_b : numpy.ndarray
        Shape ``[n, K]``, ``n >= window``.
    window : int
        Rows per window, ``>= 1``.
    log_start, log_a : numpy.ndarray
        As in :func:`forward`.

    Returns
    -------
    numpy.ndarray
        Shape ``[n - window + 1, K]``.
    """
    n_windows = log_b.shape[0] - window + 1
    state, _ = _normalise(log_start[None, :] + log_b[:n_windows])
    for s in range(1, window):
        state, _ = _normalise(_predict_log(state, log_a) + log_b[s : s + n_windows])
    return state


def backward(log_b: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """Backward log-messages ``log p(x_t+1..n | z_t)``, each row shifted to sum to one.

    Parameters
    ----------
    log_b : numpy.ndarray
        Shape ``[n, K]``.
    log_a : numpy.ndarray
        Shape ``[K, K]``.

    Returns
    -------
    numpy.ndarray
        Shape ``[n, K]``; the last row is uniform and every row is only defined up to an
        additive constant, which smoothing normalises away.
    """
    n, k = log_b.shape
    out = np.empty((n, k))
    state = np.full((1, k), -np.log(k))
    out[-1] = state[0]
    log_a_t = np.ascontiguousarray(log_a.T)  # [j, i]: sum over the next state j
    for t in range(n - 2, -1, -1):
        nxt = log_b[t + 1 : t + 2] + state  # [1, K_j]
        state, _ = _normalise(logsumexp_axis1(nxt[:, :, None] + log_a_t[None, :, :]))
        out[t] = state[0]
    return out


def smooth(log_alpha: np.ndarray, log_beta: np.ndarray) -> np.ndarray:
    """Smoothed probabilities ``P(z_t | x_1..n)`` from forward and backward messages.

    Parameters
    ----------
    log_alpha, log_beta : numpy.ndarray
        Shape ``[n, K]``.

    Returns
    -------
    numpy.ndarray
        Shape ``[n, K]``, rows sum to 1.
    """
    log_gamma, _ = _normalise(log_alpha + log_beta)
    return np.exp(log_gamma)


class _GivenLogDensities(BaseHMM):
    """hmmlearn's compiled forward-backward over emission log-densities computed elsewhere."""

    def _compute_log_likelihood(self, X: np.ndarray) -> np.ndarray:
        return X


def smoothed_proba(log_b: np.ndarray, start: np.ndarray, transmat: np.ndarray) -> np.ndarray:
    """Smoothed probabilities ``P(z_t | x_1..n)`` of one sequence, by hmmlearn's compiled
    forward-backward (log space).

    For smoothed posteriors only (training labels, state occupancy): they look ahead, so the
    bitwise prefix-invariance of :func:`forward` is not needed, and the compiled recursion is
    ~10x faster than :func:`forward` + :func:`backward`. Agrees with :func:`smooth` of those to
    ~1e-12.

    Parameters
    ----------
    log_b : numpy.ndarray
        Shape ``[n, K]``, finite emission log-densities.
    start : numpy.ndarray
        Shape ``[K]``, the state distribution before the first observation.
    transmat : numpy.ndarray
        Shape ``[K, K]``, row-stochastic.

    Returns
    -------
    numpy.ndarray
        Shape ``[n, K]``, rows sum to 1.
    """
    hmm = _GivenLogDensities(n_components=len(start), implementation="log")
    hmm.startprob_, hmm.transmat_ = np.asarray(start, dtype=float), np.asarray(transmat, dtype=float)
    return hmm.predict_proba(log_b)


def next_step(proba: np.ndarray, transmat: np.ndarray) -> np.ndarray:
    """One-step-ahead state probabilities ``proba @ transmat``, row by row exactly.

    Parameters
    ----------
    proba : numpy.ndarray
        Shape ``[n, K]``.
    transmat : numpy.ndarray
        Shape ``[K, K]``.

    Returns
    -------
    numpy.ndarray
        Shape ``[n, K]``.
    """
    k = transmat.shape[0]
    out = np.empty_like(proba)
    for j in range(k):
        out[:, j] = _seq_sum([proba[:, i] * transmat[i, j] for i in range(k)])
    return out


# Smallest magnitude an unnormalised entry of the fast filter may reach: far above the
# subnormal range, so every product keeps full relative precision.
_FAST_FLOOR = 1e-250


def forward_last_proba(
    log_b: np.ndarray, log_start: np.ndarray, log_a: np.ndarray
) -> np.ndarray:
    """Filtered probabilities ``P(z_n | x_1..n)`` of the last row only, in ``O(log n)`` numpy calls.

    In probability space the forward recursion is linear: ``alpha_n ∝ start D_1 M_2 ... M_n``
    with ``D_t = diag(exp(log_b_t - max_k log_b_tk))`` and ``M_t = A D_t``. The ``n - 1``
    matrices ``M_t`` (all ``[K, K]``) are multiplied as a balanced tree of batched products,
    each partial product rescaled by its largest entry (a scalar the final normalisation
    removes). Every quantity is a sum of products of non-negative numbers, so each is
    computed to a relative error of a few ulps per level: the result equals
    ``exp(forward(...)[0][-1])`` to ~1e-15. Where an entry would fall below ``1e-250``
    (extreme emissions, near-zero transitions or start probabilities) the product could
    lose precision, and the exact log-space :func:`forward` answers instead.

    Parameters
    ----------
    log_b : numpy.ndarray
        Shape ``[n, K]``, ``n >= 1``, emission log-densities.
    log_start, log_a : numpy.ndarray
        As in :func:`forward`.

    Returns
    -------
    numpy.ndarray
        Shape ``[K]``, sums to 1.
    """
    fast = _forward_last_scaled(log_b, log_start, log_a)
    if fast is not None:
        return fast
    return np.exp(forward(log_b, log_start, log_a)[0][-1])


def _forward_last_scaled(
    log_b: np.ndarray, log_start: np.ndarray, log_a: np.ndarray
) -> np.ndarray | None:
    """The tree product of :func:`forward_last_proba`; ``None`` where it could lose precision."""
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        b = np.exp(log_b - log_b.max(axis=1, keepdims=True))
        v = np.exp(log_start) * b[0]
        m = np.exp(log_a)[None, :, :] * b[1:, None, :]  # [n - 1, K, K]: M_t = A D_t
        if not (v.min() >= _FAST_FLOOR and (not len(m) or m.min() >= _FAST_FLOOR)):
            return None
        v = v / v.max()
        while len(m) > 1:
            if len(m) % 2:  # the oldest factor goes into v, so the pairs stay in order
                v = v @ m[0]
                m = m[1:]
                if not v.min() >= _FAST_FLOOR:
                    return None
                v = v / v.max()
            m = np.matmul(m[0::2], m[1::2])
            if not m.min() >= _FAST_FLOOR:
                return None
            m = m / m.max(axis=(1, 2), keepdims=True)
        if len(m):
            v = v @ m[0]
            if not v.min() >= _FAST_FLOOR:
                return None
    return v / v.sum()
