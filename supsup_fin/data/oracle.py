"""The oracle for synthetic markets: the true model's causal posteriors and return-class forecasts.

It knows the generator's parameters (:attr:`SyntheticMarkets.params`) and computes, from the
prices alone, what no model can beat on that data:

- :func:`oracle_filter`: ``P(z_t | r_1..t)`` by the true regime-switching AR(1) (exact forward
  recursion over ``(z_{t-1}, z_t)``, summed to ``z_t`` at every step);
- :func:`oracle_smooth`: ``P(z_t | r_1..n)`` (looks ahead; the ceiling for smoothed labels);
- :func:`oracle_proba`: ``P(class of log(c_{t+h} / c_t) | r_1..t)`` for given class edges.

Model (see :mod:`supsup_fin.data.synthetic`)::

    r_t = mu[z_t] + phi[z_t] * (r_{t-1} - mu[z_{t-1}]) + sigma[z_t] * eps_t

Row 0 of a prices frame has no return; its posterior is the chain's stationary distribution.
The first return's AR lag is taken at its mean (the usual conditional likelihood), so rows
from the second return on are exact. With a common driver (all markets share one regime path)
a mapping of markets gives the joint filter: emissions of every market multiply.

``oracle_proba`` is exact: given ``z_t`` and ``r_t`` the forward sum over a regime path
``z_{t+1..t+h}`` is Gaussian (mean ``M + B (r_t - mu[z_t])``, variance ``V``), so the class
probability is a mixture of normal CDF differences over the ``K^h`` paths. Above
``max_paths`` paths it samples ``n_paths`` paths per starting regime with a fixed ``seed``
(Rao-Blackwellised Monte Carlo: only the path is sampled, the Gaussian part stays exact).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

from supsup_fin.data.synthetic import SYNTHETIC_PRESETS, SyntheticPreset
from supsup_fin.errors import DataError

logger = logging.getLogger(__name__)

_LOG_2PI = float(np.log(2.0 * np.pi))
_CHUNK = 512  # rows per block in oracle_proba (bounds memory at ~rows * K^(h+1) floats)


def _parameters(params: Mapping[str, Any] | SyntheticPreset | str) -> dict[str, np.ndarray]:
    """``transition [K,K], drift, vol, ar [K], stationary [K]`` from params, a preset or its name."""
    if isinstance(params, str):
        if params not in SYNTHETIC_PRESETS:
            raise DataError(f"unknown synthetic preset {params!r}; valid: {sorted(SYNTHETIC_PRESETS)}")
        params = SYNTHETIC_PRESETS[params]
    if isinstance(params, SyntheticPreset):
        params = params.to_dict()
    missing = [k for k in ("transition", "drift", "vol", "ar") if k not in params]
    if missing:
        raise DataError(f"oracle: params expected keys transition, drift, vol, ar; missing {missing}")
    a = np.asarray(params["transition"], dtype=np.float64)
    out = {k: np.asarray(params[k], dtype=np.float64) for k in ("drift", "vol", "ar")}
    k = a.shape[0]
    if a.shape != (k, k) or any(v.shape != (k,) for v in out.values()):
        raise DataError(f"oracle: transition must be [K, K] and drift, vol, ar [K]; got {a.shape} and "
                        f"{[v.shape for v in out.values()]}")
    vals, vecs = np.linalg.eig(a.T)
    pi = np.abs(np.real(vecs[:, int(np.argmin(np.abs(vals - 1.0)))]))
    return {"transition": a, **out, "stationary": pi / pi.sum()}


def _returns(prices: pd.DataFrame, what: str) -> np.ndarray:
    if not isinstance(prices, pd.DataFrame) or "close" not in prices.columns:
        raise DataError(f"{what}: expected a prices DataFrame with a 'close' column")
    close = prices["close"].to_numpy(dtype=np.float64)
    if len(close) < 2 or not (np.isfinite(close).all() and (close > 0).all()):
        raise DataError(f"{what}: expected at least 2 finite, positive closes, got {len(close)} rows")
    return np.diff(np.log(close))


def _log_emissions(r: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """``log p(r_t | z_{t-1}=i, z_t=j, r_{t-1})``, shape ``[n_returns, K, K]`` (first lag at its mean)."""
    mu, sigma, phi = p["drift"], p["vol"], p["ar"]
    lag = np.empty((len(r), len(mu)))  # r_{t-1} - mu_i
    lag[0] = 0.0
    lag[1:] = r[:-1, None] - mu[None, :]
    mean = mu[None, None, :] + phi[None, None, :] * lag[:, :, None]
    z = (r[:, None, None] - mean) / sigma[None, None, :]
    return -0.5 * (_LOG_2PI + z * z) - np.log(sigma)[None, None, :]


def _pair_emissions(prices: pd.DataFrame | Mapping[str, pd.DataFrame], p: dict[str, np.ndarray],
                    what: str) -> tuple[np.ndarray, pd.DatetimeIndex]:
    if isinstance(prices, Mapping):
        frames = list(prices.values())
        if not frames:
            raise DataError(f"{what}: expected at least one market")
        index = frames[0].index
        for name, f in prices.items():
            if not f.index.equals(index):
                raise DataError(f"{what}: market {name!r} has other dates than the first market; a joint "
                                "(common-driver) filter needs identical dates")
        log_e = sum(_log_emissions(_returns(f, what), p) for f in frames)
        return log_e, index
    return _log_emissions(_returns(prices, what), p), prices.index


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _forward(log_e: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Filtered log posteriors ``[n_returns, K]``; step t uses rows ``<= t`` only."""
    with np.errstate(divide="ignore"):
        log_a = np.log(p["transition"])
        prev = np.log(p["stationary"])
    out = np.empty(log_e.shape[:2])
    for t in range(len(log_e)):
        joint = prev[:, None] + log_a + log_e[t]  # [i, j]
        cur = _lse(joint, axis=0)
        prev = cur - _lse(cur, axis=0)
        out[t] = prev
    return out


def _frame(first: np.ndarray, rest: np.ndarray, index: pd.DatetimeIndex, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(np.vstack([first[None, :], rest]), index=index, columns=columns)


def _names(params: Any, k: int) -> list[str]:
    names = params.get("regimes") if isinstance(params, Mapping) else None
    return [str(n) for n in names] if names and len(names) == k else [f"regime_{i}" for i in range(k)]


def oracle_filter(prices: pd.DataFrame | Mapping[str, pd.DataFrame],
                  params: Mapping[str, Any] | SyntheticPreset | str) -> pd.DataFrame:
    """True-parameter filtered regime posteriors ``P(z_t | r_1..t)``.

    Parameters
    ----------
    prices : DataFrame or mapping of str to DataFrame
        One market's prices (column ``close``, ``n`` rows); or, for a ``common_driver`` draw,
        several markets on identical dates (their emissions multiply: the joint filter).
    params : mapping, SyntheticPreset or str
        ``SyntheticMarkets.params``, a preset, or a preset's name.

    Returns
    -------
    DataFrame, shape (n, K)
        Columns: the regime names (``calm normal turbulent``); row 0 is the stationary
        distribution. Prefix-invariant: appending rows never changes a row.
    """
    p = _parameters(params)
    log_e, index = _pair_emissions(prices, p, "oracle_filter")
    names = _names(params if isinstance(params, Mapping) else {}, len(p["drift"]))
    return _frame(p["stationary"], np.exp(_forward(log_e, p)), index, names)


def oracle_smooth(prices: pd.DataFrame | Mapping[str, pd.DataFrame],
                  params: Mapping[str, Any] | SyntheticPreset | str) -> pd.DataFrame:
    """True-parameter smoothed posteriors ``P(z_t | r_1..n)`` (looks ahead), shape (n, K).

    Same layout as :func:`oracle_filter`; row 0 conditions on every return too.
    """
    p = _parameters(params)
    log_e, index = _pair_emissions(prices, p, "oracle_smooth")
    with np.errstate(divide="ignore"):
        log_a = np.log(p["transition"])
        log_pi = np.log(p["stationary"])
    log_alpha = _forward(log_e, p)
    n, k = log_alpha.shape
    log_beta = np.zeros((n, k))
    for t in range(n - 1, 0, -1):  # beta_{t-1}(i) = sum_j A_ij e_t(i, j) beta_t(j)
        b = _lse(log_a + log_e[t] + log_beta[t][None, :], axis=1)
        log_beta[t - 1] = b - _lse(b, axis=0)
    g = log_alpha + log_beta
    gamma = np.exp(g - _lse(g, axis=1)[:, None])
    b0 = _lse(log_a + log_e[0] + log_beta[0][None, :], axis=1) + log_pi  # row 0: z before the 1st return
    gamma0 = np.exp(b0 - _lse(b0, axis=0))
    names = _names(params if isinstance(params, Mapping) else {}, k)
    return _frame(gamma0, gamma, index, names)


def _path_moments(p: dict[str, np.ndarray], paths: np.ndarray, start: int) -> tuple[np.ndarray, ...]:
    """For paths ``z_{t+1..t+h}`` ``[P, h]`` from ``z_t = start``: M, B, V of the h-day log return.

    ``sum_s r_{t+s} = M + B * (r_t - mu[start]) + N(0, V)``.
    """
    mu, sigma, phi = p["drift"], p["vol"], p["ar"]
    n_paths, h = paths.shape
    m = mu[paths].sum(axis=1)
    prod = np.ones(n_paths)  # prod_{u<=s} phi_{z_u}
    b = np.zeros(n_paths)
    coef = np.zeros((n_paths, h))  # loading of eps_{t+v} on sum_s d_s
    for s in range(h):
        ph = phi[paths[:, s]]
        prod = prod * ph
        b += prod
        # d_s = phi_s d_{s-1} + sigma_s eps_s: every earlier eps loading is carried by phi_s.
        carried = np.zeros((n_paths, h))
        for v in range(s + 1):
            load = sigma[paths[:, v]].copy()
            for u in range(v + 1, s + 1):
                load *= phi[paths[:, u]]
            carried[:, v] = load
        coef += carried
    var = (coef * coef).sum(axis=1)
    return m, b, var


def oracle_proba(
    prices: pd.DataFrame,
    params: Mapping[str, Any] | SyntheticPreset | str,
    horizon: int,
    class_edges: np.ndarray | list[float],
    *,
    max_paths: int = 59_049,
    n_paths: int = 20_000,
    seed: int = 0,
    filtered: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """True-model class probabilities of the ``horizon``-day forward log return, causally.

    Row t is ``P(log(c_{t+h} / c_t) in class c | r_1..t)``: the oracle filter's posterior of
    ``z_t``, pushed through the true chain and the true regime-switching AR(1). Classes are
    ``np.digitize``'s on ``class_edges`` (as :func:`supsup_fin.features.classify`): class 0 is
    below the first edge, class ``len(edges)`` at or above the last.

    Parameters
    ----------
    prices : DataFrame
        One market's prices (column ``close``), ``n`` rows.
    params : mapping, SyntheticPreset or str
        ``SyntheticMarkets.params``, a preset, or a preset's name.
    horizon : int
        Forward days ``h >= 1``.
    class_edges : array-like, shape (n_classes - 1,)
        Increasing edges on the h-day log return (e.g. ``FeatureSet.class_edges``).
    max_paths : int
        Exact enumeration of the ``K^h`` regime paths up to this many; above, Monte Carlo.
    n_paths : int
        Paths sampled per starting regime in the Monte Carlo case.
    seed : int
        Seed of the Monte Carlo paths (fixed: same inputs, same output).
    filtered : DataFrame, optional
        A precomputed :func:`oracle_filter` of ``prices`` (e.g. a joint common-driver filter).

    Returns
    -------
    DataFrame, shape (n - 1, n_classes)
        Index ``prices.index[1:]`` (row 0 has no return); columns ``down flat up`` for 3
        classes, ``down up`` for 2, ``class_0 ..`` otherwise; rows sum to 1.
    """
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise DataError(f"oracle_proba: horizon expected an int >= 1, got {horizon!r}")
    edges = np.asarray(class_edges, dtype=np.float64).ravel()
    if edges.size < 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise DataError(f"oracle_proba: class_edges expected >= 1 finite increasing values, got {edges.tolist()}")
    p = _parameters(params)
    r = _returns(prices, "oracle_proba")
    post = (oracle_filter(prices, params) if filtered is None else filtered).to_numpy()[1:]
    if post.shape != (len(r), len(p["drift"])):
        raise DataError(f"oracle_proba: filtered expected shape {(len(r), len(p['drift']))}, got {post.shape}")
    k = len(p["drift"])
    n_classes = edges.size + 1
    cuts = np.r_[-np.inf, edges, np.inf]
    exact = k ** horizon <= max_paths
    rng = np.random.default_rng(seed)
    out = np.zeros((len(r), n_classes))
    for i in range(k):
        if exact:
            paths = np.array(list(itertools.product(range(k), repeat=horizon)), dtype=np.int64)
            prev = np.r_[i * np.ones((len(paths), 1), dtype=np.int64).T, paths[:, :-1].T].T
            w = np.prod(p["transition"][prev, paths], axis=1)
        else:
            paths = np.empty((n_paths, horizon), dtype=np.int64)
            cur = np.full(n_paths, i)
            cum = np.cumsum(p["transition"], axis=1)
            for s in range(horizon):
                u = rng.random(n_paths)
                cur = np.minimum((u[:, None] > cum[cur]).sum(axis=1), k - 1)
                paths[:, s] = cur
            w = np.full(n_paths, 1.0 / n_paths)
        m, b, var = _path_moments(p, paths, i)
        sd = np.sqrt(var)
        for lo in range(0, len(r), _CHUNK):
            hi = min(lo + _CHUNK, len(r))
            mean = m[None, :] + b[None, :] * (r[lo:hi, None] - p["drift"][i])  # [rows, P]
            cdf = ndtr((cuts[None, None, :] - mean[:, :, None]) / sd[None, :, None])  # [rows, P, C+1]
            cls = np.diff(cdf, axis=2)  # [rows, P, C]
            out[lo:hi] += post[lo:hi, i, None] * np.einsum("p,rpc->rc", w, cls)
    out /= out.sum(axis=1, keepdims=True)
    if n_classes == 3:
        columns = ["down", "flat", "up"]
    elif n_classes == 2:
        columns = ["down", "up"]
    else:
        columns = [f"class_{c}" for c in range(n_classes)]
    logger.debug("oracle_proba: %d rows, horizon %d, %s", len(r), horizon,
                 "exact" if exact else f"Monte Carlo ({n_paths} paths per regime, seed {seed})")
    return pd.DataFrame(out, index=prices.index[1:], columns=columns)
