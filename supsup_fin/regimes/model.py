"""``RegimeModel``: one Gaussian HMM per market, in canonical state order, with causal posteriors.

hmmlearn fits the parameters (see :mod:`supsup_fin.regimes._fit`); every probability is then
computed by our own recursions in :mod:`supsup_fin.regimes._forward` from plain numpy
parameters. Only :meth:`RegimeModel.filter_proba`, :meth:`RegimeModel.predict_next_proba`,
:meth:`RegimeModel.predict_next_proba_last` and :meth:`RegimeModel.rolling_next_proba` may feed
a decision; :meth:`RegimeModel.smooth_proba` looks ahead and only labels training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import pandas as pd

from supsup_fin._rolling import log_returns, rolling_std
from supsup_fin.errors import DataError, SupsupError
from supsup_fin.regimes import _forward, _persist
from supsup_fin.regimes._canonical import match_states, regime_names, volatility_order
from supsup_fin.regimes._fit import (
    COVARIANCE_TYPES,
    SELECTIONS,
    WARM_START_SEED,
    FitResult,
    fit_with_fallback,
    select_state_count,
)
from supsup_fin.regimes._persist import _is_int
from supsup_fin.regimes.observations import (
    FEATURE_SETS,
    VOL_FLOOR,
    raw_features,
    standardise,
    validate_prices,
)

log = logging.getLogger(__name__)

TRADING_DAYS_PER_YEAR = 252
_ROWS_PER_PARAMETER = 10  # fit needs >= 10 * n_states * d feature rows


class NotFittedError(SupsupError):
    """A method that needs fitted parameters was called before ``fit``."""


def _rescale(means: np.ndarray, covars: np.ndarray, src: tuple[np.ndarray, np.ndarray],
             dst: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """State means ``[K, d]`` and covariances ``[K, d, d]`` of features standardised with
    ``src = (mean, std)``, expressed for features standardised with ``dst``."""
    ratio = src[1] / dst[1]
    return (means * src[1] + src[0] - dst[0]) / dst[1], covars * np.outer(ratio, ratio)[None]


class RegimeModel:
    """Gaussian HMM of a market's regimes on standardised (log return, log realised vol) or log return.

    scikit-learn contract: ``__init__`` only stores the hyperparameters; :meth:`fit`
    validates them and the data, sets the attributes ending in ``_`` and returns ``self``.

    Parameters
    ----------
    n_states : int or (int, int)
        State count, or an inclusive range searched by ``selection``.
    n_restarts : int
        EM restarts per state count and model (bounded: at most ``n_restarts`` EM runs per
        count for the selection, then per covariance type for the kept count); the highest
        training log-likelihood is kept.
    n_iter : int
        EM iteration cap.
    covariance_type : {"full", "diag", "spherical", "tied"}
        hmmlearn covariance type (``covars_`` is stored full whatever the type).
    vol_window : int
        Log returns per realised-volatility window (>= 2).
    min_covar : float
        Floor on covariance diagonals, in standardised units.
    random_state : int, numpy.random.Generator or None
        Seeds the restarts' random states; resolved in :meth:`fit`.
    observations : {"return_vol", "return"}
        Observations: standardised (log return, log realised vol) (default), or the log
        return alone (a switching-mean, switching-variance Gaussian HMM of returns).
    selection : {"bic_returns", "bic_features"}
        State-count criterion for a range: BIC of a Gaussian HMM on the daily returns alone
        (default; see :func:`supsup_fin.regimes._fit.select_state_count`), or BIC of the
        two-feature model (over-selects: overlapping volatility windows break conditional
        independence).

    Attributes
    ----------
    n_states_ : int
    names_ : list of str
        Regime names; ascending volatility unless aligned to a previous fit.
    startprob_ : numpy.ndarray, shape [K]
    transmat_ : numpy.ndarray, shape [K, K]
    means_ : numpy.ndarray, shape [K, d] (d = 2, or 1 with ``observations="return"``)
        In standardised feature units.
    covars_ : numpy.ndarray, shape [K, 2, 2]
    stationary_ : numpy.ndarray, shape [K]
        Stationary distribution of ``transmat_``: the filter's prior at a sequence's start.
    expected_durations_ : numpy.ndarray, shape [K]
        ``1 / (1 - A_kk)`` in trading days.
    feature_mean_, feature_std_ : numpy.ndarray, shape [d]
        Scaler fitted on the training features.
    covariance_type_ : str
        Covariance type actually used (differs from the hyperparameter after a fallback).
    converged_ : bool
        EM stopped because the log-likelihood gain fell below tolerance (not by ``n_iter``).
    log_likelihood_ : float
        Training log-likelihood of the standardised features.
    bic_ : dict of int to float
        Selection criterion per state count tried (``selection``'s BIC); without a range,
        the two-feature BIC of the one count.
    permutation_ : list of int or None
        With ``previous``: ``permutation_[j]`` is the index, in this fit's ascending-volatility
        order, of the state stored at position ``j`` (aligned to the previous fit's state j).
    n_iter_ : int
        EM iterations of the kept restart.
    fallback_ : str or None
        Why the requested configuration was replaced (diagonal covariance, fewer states).
    n_train_rows_ : int
        Feature rows the model was fitted on.
    """

    def __init__(
        self,
        n_states: int | tuple[int, int] = 3,
        *,
        n_restarts: int = 3,
        n_iter: int = 200,
        covariance_type: str = "full",
        vol_window: int = 10,
        min_covar: float = 1e-3,
        random_state: int | np.random.Generator | None = 0,
        selection: str = "bic_returns",
        observations: str = "return_vol",
        sticky: float = 0.0,
    ) -> None:
        self.n_states = n_states
        self.n_restarts = n_restarts
        self.n_iter = n_iter
        self.covariance_type = covariance_type
        self.vol_window = vol_window
        self.min_covar = min_covar
        self.random_state = random_state
        self.selection = selection
        self.observations = observations
        self.sticky = sticky

    # ------------------------------------------------------------------ parameters

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__``."""
        return {
            "n_states": self.n_states,
            "n_restarts": self.n_restarts,
            "n_iter": self.n_iter,
            "covariance_type": self.covariance_type,
            "vol_window": self.vol_window,
            "min_covar": self.min_covar,
            "random_state": self.random_state,
            "selection": self.selection,
            "observations": self.observations,
            "sticky": self.sticky,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"RegimeModel({args})"

    def _state_range(self) -> tuple[int, int]:
        """Validate the hyperparameters; return the inclusive state-count range."""
        n = self.n_states
        if _is_int(n) and n >= 1:
            lo = hi = int(n)
        elif (isinstance(n, (tuple, list)) and len(n) == 2 and all(_is_int(v) for v in n)
              and 1 <= n[0] <= n[1]):
            lo, hi = int(n[0]), int(n[1])
        else:
            raise SupsupError(f"RegimeModel: n_states expected an int >= 1 or a (lo, hi) tuple "
                              f"with 1 <= lo <= hi, got {n!r}")
        for name, low in (("n_restarts", 1), ("n_iter", 1), ("vol_window", 2)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise SupsupError(f"RegimeModel: {name} expected an int >= {low}, got {value!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise SupsupError(f"RegimeModel: covariance_type expected one of "
                              f"{list(COVARIANCE_TYPES)}, got {self.covariance_type!r}")
        if self.observations not in FEATURE_SETS:
            raise SupsupError(f"RegimeModel: observations expected one of {list(FEATURE_SETS)}, "
                              f"got {self.observations!r}")
        if self.selection not in SELECTIONS:
            raise SupsupError(f"RegimeModel: selection expected one of {list(SELECTIONS)}, "
                              f"got {self.selection!r}")
        if isinstance(self.sticky, bool) or not (isinstance(self.sticky, (int, float)) and self.sticky >= 0):
            raise SupsupError(f"RegimeModel: sticky expected a number >= 0 (self-transition "
                              f"pseudo-counts), got {self.sticky!r}")
        if not (isinstance(self.min_covar, (int, float)) and self.min_covar > 0):
            raise SupsupError(f"RegimeModel: min_covar expected a number > 0, "
                              f"got {self.min_covar!r}")
        return lo, hi

    def _restart_seeds(self) -> list[int]:
        rs = self.random_state
        if not (rs is None or _is_int(rs) or isinstance(rs, np.random.Generator)):
            raise SupsupError(f"RegimeModel: random_state expected an int, a numpy Generator "
                              f"or None, got {rs!r}")
        rng = np.random.default_rng(rs)
        return [int(s) for s in rng.integers(0, 2**31 - 1, size=self.n_restarts)]

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "transmat_"):
            raise NotFittedError(f"This RegimeModel is not fitted yet: call fit(prices) "
                                 f"before {what}")

    # ------------------------------------------------------------------ fitting

    def fit(self, prices: pd.DataFrame, previous: RegimeModel | None = None) -> Self:
        """Fit the HMM on a training prices frame.

        Parameters
        ----------
        prices : pandas.DataFrame
            Training segment only, ``n`` rows, column ``close``; needs
            ``n >= 10 * n_states * 2 + vol_window`` (``n_states``: the range's upper end).
        previous : RegimeModel, optional
            Earlier fit of the same market lineage: its state count is kept (``n_states`` is
            ignored) and the new states are matched to its states by the Hungarian
            on the state means and log standard deviations (both in ``previous``'s standardised units), so regime ``k``
            keeps its meaning and name. Fewer-state fallbacks are then not allowed. EM also runs
            once from ``previous``'s parameters (converted to this window's standardisation)
            beside the ``n_restarts`` k-means starts; it is kept when its likelihood beats theirs
            by more than one log-likelihood unit (so a refit on unchanged data reproduces the same fit, and
            one whose k-means starts all land in worse optima keeps the lineage's).

        Returns
        -------
        RegimeModel
            ``self``.
        """
        lo, hi = self._state_range()
        if previous is not None:
            if not isinstance(previous, RegimeModel):
                raise SupsupError(f"RegimeModel.fit: previous expected a fitted RegimeModel, "
                                  f"got {type(previous).__name__}")
            previous._check_fitted("using it as previous=")
            lo = hi = previous.n_states_
            if previous.observations != self.observations or previous.vol_window != self.vol_window:
                raise SupsupError(
                    f"RegimeModel.fit: previous= was fitted on observations {previous.observations!r} with "
                    f"vol_window {previous.vol_window}, this model uses {self.observations!r} with "
                    f"vol_window {self.vol_window}; a lineage keeps its observations")
        names = FEATURE_SETS[self.observations]
        min_rows = _ROWS_PER_PARAMETER * hi * len(names) + self.vol_window
        states = f"{hi} states" if lo == hi else f"n_states range ({lo}, {hi}): {hi} states"
        validate_prices(prices, min_rows, f"RegimeModel.fit with {states}")
        raw, index = raw_features(prices, self.vol_window, self.observations)
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        if not (std > 0).all():
            raise DataError(f"RegimeModel.fit: expected varying features, got constant "
                            f"{[names[i] for i in np.flatnonzero(std <= 0)]} (a constant price "
                            f"series has zero volatility) over {index[0].date()}..{index[-1].date()}")
        x = standardise(raw, mean, std)
        seeds = self._restart_seeds()
        args = (self.covariance_type, seeds, self.n_iter, self.min_covar)
        sticky = float(self.sticky)
        if lo == hi:
            init = None if previous is None else previous._in_units(mean, std)
            res, fallback = fit_with_fallback(x, lo, *args, allow_fewer_states=previous is None,
                                              sticky=sticky, init=init)
            bics = {res.n_states: res.bic}
            if res.seed == WARM_START_SEED:
                log.info("refit: EM started from the previous fit scored best (log-likelihood %.2f)",
                         res.log_likelihood)
        else:
            res, fallback, bics = select_state_count(x, (lo, hi), *args, self.selection, sticky)

        order = volatility_order(res.means, res.covars)
        names = regime_names(res.n_states)
        permutation = None
        if previous is not None:
            in_prev_units, new_covars = _rescale(res.means[order], res.covars[order], (mean, std),
                                                 (previous.feature_mean_, previous.feature_std_))
            new_var = np.diagonal(new_covars, axis1=1, axis2=2)
            old_var = np.diagonal(previous.covars_, axis1=1, axis2=2)
            perm = match_states(np.hstack([in_prev_units, 0.5 * np.log(new_var)]),
                                np.hstack([previous.means_, 0.5 * np.log(old_var)]))
            order = order[perm]
            permutation = [int(p) for p in perm]
            names = list(previous.names_)
            if permutation != sorted(permutation):
                log.info("refit states reordered to match the previous fit: %s", permutation)

        self.n_states_ = int(res.n_states)
        self.names_ = names
        self.startprob_ = res.startprob[order]
        self.transmat_ = res.transmat[np.ix_(order, order)]
        self.means_ = res.means[order]
        self.covars_ = res.covars[order]
        self.feature_mean_ = mean
        self.feature_std_ = std
        self.covariance_type_ = res.covariance_type
        self.converged_ = bool(res.converged)
        self.log_likelihood_ = float(res.log_likelihood)
        self.bic_ = {int(k): float(v) for k, v in bics.items()}
        self.permutation_ = permutation
        self.n_iter_ = int(res.n_iter)
        self.fallback_ = fallback
        self.n_train_rows_ = len(x)
        self._set_derived()
        if not self.converged_:
            log.warning("HMM EM did not converge within n_iter=%d (k=%d, log-likelihood %.3f)",
                        self.n_iter, self.n_states_, self.log_likelihood_)
        log.info("fitted %d-state HMM on %d rows %s..%s: log-likelihood %.2f, %d EM iterations, "
                 "converged=%s", self.n_states_, len(x), index[0].date(), index[-1].date(),
                 self.log_likelihood_, self.n_iter_, self.converged_)
        return self

    def _in_units(self, mean: np.ndarray, std: np.ndarray) -> FitResult:
        """This fit's parameters for features standardised with ``mean`` and ``std`` (a warm start)."""
        means, covars = _rescale(self.means_, self.covars_, (self.feature_mean_, self.feature_std_), (mean, std))
        return FitResult(
            n_states=self.n_states_, covariance_type=self.covariance_type_,
            startprob=self.startprob_.copy(), transmat=self.transmat_.copy(), means=means, covars=covars,
            log_likelihood=float("nan"), bic=float("nan"), converged=False, n_iter=0, seed=WARM_START_SEED,
        )

    def _set_derived(self, stationary: np.ndarray | None = None) -> None:
        self.stationary_ = (_forward.stationary_distribution(self.transmat_)
                            if stationary is None else stationary)
        with np.errstate(divide="ignore"):
            self.expected_durations_ = 1.0 / (1.0 - np.diag(self.transmat_))

    # ------------------------------------------------------------------ posteriors

    def min_rows(self, window: int) -> int:
        """Price rows one :meth:`rolling_next_proba` row needs: ``window + vol_window``."""
        if not _is_int(window) or window < 1:
            raise SupsupError(f"window expected an int >= 1, got {window!r}")
        return int(window) + int(self.vol_window)

    def _observations(self, prices: pd.DataFrame, what: str, min_rows: int | None = None
                      ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """Standardised features ``[n', 2]`` and their dates."""
        self._check_fitted(what)
        validate_prices(prices, self.vol_window + 1 if min_rows is None else min_rows,
                        f"RegimeModel.{what}")
        raw, index = raw_features(prices, self.vol_window, self.observations)
        return standardise(raw, self.feature_mean_, self.feature_std_), index

    def _log_densities(self, prices: pd.DataFrame, what: str, min_rows: int | None = None
                       ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        x, index = self._observations(prices, what, min_rows)
        return _forward.gaussian_log_densities(x, self.means_, self.covars_), index

    def _log_start(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.stationary_)

    def _frame(self, proba: np.ndarray, index: pd.DatetimeIndex) -> pd.DataFrame:
        return pd.DataFrame(proba, index=index, columns=list(self.names_))

    def features(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Standardised HMM observations.

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window, 2]``, columns ``log_return, log_vol``, index
            ``prices.index[vol_window:]``; row t uses prices ``t - vol_window .. t`` only.
        """
        x, index = self._observations(prices, "features")
        return pd.DataFrame(x, index=index, columns=list(FEATURE_SETS[self.observations]))

    def filter_proba(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Filtered posteriors ``P(z_t | x_1..t)``, the forward recursion.

        Starts from ``stationary_`` at the first feature row, so a row depends only on the
        rows up to it (bitwise: appending rows never changes it).

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window, K]``, columns ``names_``, rows sum to 1.
        """
        log_b, index = self._log_densities(prices, "filter_proba")
        log_alpha, _ = _forward.forward(log_b, self._log_start(),
                                        _forward.log_transmat(self.transmat_))
        return self._frame(np.exp(log_alpha), index)

    def predict_next_proba(self, prices: pd.DataFrame) -> pd.DataFrame:
        """One-step forecasts ``P(z_{t+1} | x_1..t) = filter_t @ transmat_``.

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window, K]``; row t is the forecast made at t for t + 1.
        """
        filtered = self.filter_proba(prices)
        proba = _forward.next_step(filtered.to_numpy(), self.transmat_)
        return self._frame(proba, filtered.index)

    def predict_next_proba_last(self, close: np.ndarray) -> np.ndarray:
        """The last row of :meth:`predict_next_proba`, from a close array, for a live forecast.

        Skips the frame and the per-row log-space filter: the observations come from the same
        window-exact statistics, and the filter's last row from
        :func:`~supsup_fin.regimes._forward.forward_last_proba` (equal to the log-space filter
        within ~1e-15). Only the last forecast is computed, so the cost is a few hundred
        microseconds for a 250-row window instead of milliseconds.

        Parameters
        ----------
        close : numpy.ndarray
            Shape ``[n]``, ``n > vol_window``, finite prices > 0 (oldest first): the ``close``
            column of a prices frame.

        Returns
        -------
        numpy.ndarray
            Shape ``[K]``: ``P(z_{t+1} | x_1..t)`` at the last row t, in ``names_`` order.

        Raises
        ------
        DataError
            If ``close`` is too short, not finite or not > 0.
        """
        self._check_fitted("predict_next_proba_last")
        close = np.asarray(close, dtype=np.float64)
        if close.ndim != 1 or len(close) <= self.vol_window:
            raise DataError(f"RegimeModel.predict_next_proba_last: expected a 1-D close array of more "
                            f"than vol_window={self.vol_window} prices, got shape {close.shape}")
        bad = ~(np.isfinite(close) & (close > 0))
        if bad.any():
            raise DataError(f"RegimeModel.predict_next_proba_last: expected finite prices > 0, got "
                            f"{int(bad.sum())} other values, first {float(close[np.argmax(bad)])!r} "
                            f"at position {int(np.argmax(bad))}")
        vw = int(self.vol_window)  # the same operations as raw_features, on arrays
        ret = log_returns(close)
        raw = np.empty((len(close) - vw, 2))
        raw[:, 0] = ret[vw:]
        raw[:, 1] = np.log(np.maximum(rolling_std(ret, vw)[vw:], VOL_FLOOR))
        x = standardise(raw[:, : len(FEATURE_SETS[self.observations])], self.feature_mean_, self.feature_std_)
        log_b = _forward.gaussian_log_densities(x, self.means_, self.covars_)
        last = _forward.forward_last_proba(log_b, self._log_start(),
                                           _forward.log_transmat(self.transmat_))
        return _forward.next_step(last[None, :], self.transmat_)[0]

    def smooth_proba(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Smoothed posteriors ``P(z_t | x_1..n)`` (forward-backward; looks ahead).

        For labelling training rows only, never for a decision at t.

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window, K]``; the last row equals the filter's last row.
        """
        log_b, index = self._log_densities(prices, "smooth_proba")
        log_a = _forward.log_transmat(self.transmat_)
        log_alpha, _ = _forward.forward(log_b, self._log_start(), log_a)
        return self._frame(_forward.smooth(log_alpha, _forward.backward(log_b, log_a)), index)

    def rolling_next_proba(self, prices: pd.DataFrame, window: int) -> pd.DataFrame:
        """One-step forecasts, each from only the last ``window`` feature rows.

        Row t equals ``predict_next_proba(prices.loc[:t].iloc[-min_rows(window):]).iloc[-1]``:
        the filter restarts from ``stationary_`` at each window's first row. All windows
        advance together, vectorised over a ``[n_windows, K]`` state.

        Parameters
        ----------
        prices : pandas.DataFrame
            At least ``min_rows(window)`` rows.
        window : int
            Feature rows per window.

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window - window + 1, K]``, index: the feature dates from the
            ``window``-th on.
        """
        need = self.min_rows(window)
        log_b, index = self._log_densities(prices, "rolling_next_proba", need)
        log_last = _forward.forward_last_of_windows(
            log_b, int(window), self._log_start(), _forward.log_transmat(self.transmat_))
        proba = _forward.next_step(np.exp(log_last), self.transmat_)
        return self._frame(proba, index[int(window) - 1:])

    # ------------------------------------------------------------------ summaries

    def regime_stats(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Per-regime statistics of ``prices`` under smoothed-argmax labels.

        Each feature row is assigned to the regime with the highest smoothed probability
        (a look-ahead labelling, for description only). Durations are lengths of runs of
        consecutive equal labels, in trading days (the first and last runs are censored).

        Returns
        -------
        pandas.DataFrame
            Index ``names_`` (``regime``); columns ``n_rows``, ``frequency``,
            ``mean_log_return`` (daily), ``ann_volatility`` (std of daily log returns, ddof=1,
            times sqrt(252)), ``mean_duration_days`` (observed runs) and
            ``expected_duration_days`` (``expected_durations_``). NaN where a regime has no rows.
        """
        labels = self.smooth_proba(prices).to_numpy().argmax(axis=1)
        raw, _ = raw_features(prices, self.vol_window)
        returns = raw[:, 0]
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        lengths = np.diff(np.r_[starts, len(labels)])
        rows = []
        for k in range(self.n_states_):
            mask = labels == k
            r = returns[mask]
            runs = lengths[labels[starts] == k]
            rows.append({
                "n_rows": int(mask.sum()),
                "frequency": float(mask.mean()),
                "mean_log_return": float(r.mean()) if len(r) else np.nan,
                "ann_volatility": (float(r.std(ddof=1) * np.sqrt(TRADING_DAYS_PER_YEAR))
                                   if len(r) > 1 else np.nan),
                "mean_duration_days": float(runs.mean()) if len(runs) else np.nan,
                "expected_duration_days": float(self.expected_durations_[k]),
            })
        return pd.DataFrame(rows, index=pd.Index(self.names_, name="regime"))

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """Every fitted parameter and hyperparameter as a JSON-able dict.

        Floats are written as Python floats (``json`` round-trips them exactly), so
        :meth:`from_dict` rebuilds a model whose ``filter_proba`` is bitwise identical.
        Layout: see :func:`supsup_fin.regimes._persist.to_dict`.
        """
        self._check_fitted("to_dict")
        return _persist.to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RegimeModel:
        """Rebuild a fitted model from :meth:`to_dict` output (e.g. after a JSON round trip).

        Raises
        ------
        SupsupError
            If the dict is of another format or version, or misses or mis-shapes a field.
        """
        model = _persist.from_dict(cls, d)
        model._set_derived(model.stationary_)  # the stored stationary_, not recomputed
        return model
