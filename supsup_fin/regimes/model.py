"""``RegimeModel``: fit one market's Gaussian HMM and compute its regime posteriors.

hmmlearn fits the parameters (see :mod:`supsup_fin.regimes._fit`), stored in canonical state
order (ascending volatility or ascending mean return, by ``order_by``; the lineage's order on a
refit, see :mod:`supsup_fin.regimes._canonical`); every probability is then
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

from supsup_fin._validate import is_int
from supsup_fin.errors import DataError, SupsupError
from supsup_fin.regimes import _forward, _lineage, _persist
from supsup_fin.regimes._canonical import canonical_order, check_order, regime_names
from supsup_fin.regimes._fit import EMSettings, RegimeFitError, fit_states
from supsup_fin.regimes._hyperparams import PARAM_NAMES, restart_seeds, state_range
from supsup_fin.regimes._stats import regime_table
from supsup_fin.regimes.observations import (
    FEATURE_SETS,
    fit_scaler,
    raw_feature_array,
    raw_features,
    standardise,
    validate_close,
    validate_prices,
)

log = logging.getLogger(__name__)

_ROWS_PER_PARAMETER = 10  # fit needs >= 10 * n_states * d feature rows
_PARAMS = (*PARAM_NAMES, "order_by")


class NotFittedError(SupsupError):
    """A method that needs fitted parameters was called before ``fit``."""


class RegimeModel:
    """Gaussian HMM of a market's regimes on standardised (log return, log realised vol) or log return.

    scikit-learn contract: ``__init__`` only stores the hyperparameters; :meth:`fit`
    validates them and the data, sets the attributes ending in ``_`` and returns ``self``.

    Parameters
    ----------
    n_states : int or (int, int)
        State count, or an inclusive range searched by ``selection``.
    n_restarts : int
        EM restarts per state count (for the selection, then per covariance type for the kept
        count); the highest training log-likelihood is kept.
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
        (default), or BIC of the two-feature model (over-selects); see
        :func:`supsup_fin.regimes._fit.select_state_count`.
    sticky : float
        Self-transition pseudo-counts added in EM (a Dirichlet prior on ``transmat_`` rows).
    market : str or None
        The market's name, used only in messages: every error, warning and fallback reason
        starts with ``market '<name>': `` when it is given. Stored by :meth:`to_dict`.
    order_by : {"volatility", "mean"}
        Canonical state order and names: ascending return variance, ``calm / normal /
        turbulent`` (default), or ascending mean return, ``bear / sideways / bull`` (see
        :func:`~supsup_fin.regimes._canonical.regime_names` for other state counts).

    Attributes
    ----------
    n_states_ : int
    names_ : list of str
        Regime names in ``order_by``'s order, unless aligned to a previous fit (then its names).
    startprob_, transmat_ : numpy.ndarray, shapes [K] and [K, K]
    means_, covars_ : numpy.ndarray, shapes [K, d] and [K, d, d]
        In standardised feature units (d = 2, or 1 with ``observations="return"``).
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
        With ``previous``: ``permutation_[j]`` is the index, in this fit's canonical (``order_by``)
        order, of the state stored at position ``j`` (aligned to the previous fit's state j).
    n_iter_ : int
        EM iterations of the kept restart.
    fallback_ : str or None
        Why the requested configuration was replaced (diagonal covariance, fewer states, another
        count of the range than BIC's choice): each configuration tried and why it was unusable.
    fallback_reason_ : str or None
        Why the fit has fewer states than requested (see :attr:`degenerate`), naming the market
        and, per state count tried, what made it unusable (a state almost never visited, a
        covariance not positive-definite, EM failing, ...); ``None`` when a requested count
        was usable.
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
        market: str | None = None,
        order_by: str = "volatility",
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
        self.market = market
        self.order_by = order_by

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__``."""
        return {name: getattr(self, name) for name in _PARAMS}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"RegimeModel({args})"

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "transmat_"):
            raise NotFittedError(f"{self._market()}This RegimeModel is not fitted yet: call fit(prices) "
                                 f"before {what}")

    def _check_params(self) -> tuple[int, int]:
        """Validate the hyperparameters (all but ``random_state``); the inclusive state-count range."""
        check_order(self.order_by)
        return state_range(self.get_params())

    def _market(self) -> str:
        """``"market '<name>': "``, the start of the model's messages, or ``""`` without a name."""
        return "" if self.market is None else f"market {self.market!r}: "

    def _lowest_requested(self) -> int:
        n = self.n_states
        return int(n) if is_int(n) else int(n[0])

    @property
    def degenerate(self) -> bool:
        """Whether the fit has fewer states than requested (``n_states``, or its range's lower end).

        True after every requested count proved unusable and the fit fell back below them (to
        one state, say), or for a refit that kept such a previous fit's count;
        :attr:`fallback_reason_` then says why. Such a model gates nothing it was asked to.
        """
        self._check_fitted("degenerate")
        return self.n_states_ < self._lowest_requested()

    def fit(self, prices: pd.DataFrame, previous: RegimeModel | None = None) -> Self:
        """Fit the HMM on a training prices frame.

        Parameters
        ----------
        prices : pandas.DataFrame
            Training segment only, ``n`` rows, column ``close``; needs
            ``n >= 10 * n_states * 2 + vol_window`` (``n_states``: the range's upper end).
        previous : RegimeModel, optional
            Earlier fit of the same market lineage (see :mod:`supsup_fin.regimes._lineage`):
            its state count is kept (``n_states`` is ignored, no fewer-state fallback) and the
            new states are matched to its states, so regime ``k`` keeps its meaning and name
            (``previous`` must share ``observations``, ``vol_window`` and ``order_by``).
            EM also runs once from ``previous``'s parameters beside the ``n_restarts`` k-means
            starts; it is kept when its likelihood beats theirs by more than one log-likelihood
            unit (so a refit on unchanged data reproduces the same fit).

        Returns
        -------
        RegimeModel
            ``self``.
        """
        lo, hi = self._check_params()
        where = f"{self._market()}RegimeModel.fit"
        if previous is not None:
            if not isinstance(previous, RegimeModel):
                raise SupsupError(f"{where}: previous expected a fitted RegimeModel, "
                                  f"got {type(previous).__name__}")
            previous._check_fitted("using it as previous=")
            lo = hi = previous.n_states_
            _lineage.check_same_lineage(previous, self.observations, self.vol_window, self.order_by)
        min_rows = _ROWS_PER_PARAMETER * hi * len(FEATURE_SETS[self.observations]) + self.vol_window
        states = f"{hi} states" if lo == hi else f"n_states range ({lo}, {hi}): {hi} states"
        validate_prices(prices, min_rows, f"{where} with {states}")
        raw, index = raw_features(prices, self.vol_window, self.observations)
        mean, std = fit_scaler(raw, index, self.observations, where)
        x = standardise(raw, mean, std)
        settings = EMSettings(self.covariance_type, self.n_iter, self.min_covar,
                              restart_seeds(self.random_state, self.n_restarts), float(self.sticky))
        init = None if previous is None else _lineage.warm_start(previous, (mean, std))
        try:
            res, fallback, bics = fit_states(x, (lo, hi), settings, self.selection, init,
                                             allow_fewer_states=previous is None)
        except RegimeFitError as exc:
            raise RegimeFitError(f"{where}: {exc}") from None
        if fallback is not None:
            log.warning("%sHMM fit %s", self._market(), fallback)
            fallback = self._market() + fallback

        order = canonical_order(res.means, res.covars, self.order_by)
        names, permutation = regime_names(res.n_states, self.order_by), None
        if previous is not None:
            perm = _lineage.match_previous(res.means[order], res.covars[order], (mean, std), previous)
            order, permutation, names = order[perm], [int(p) for p in perm], list(previous.names_)

        self._set_fitted(
            n_states_=int(res.n_states), names_=names, startprob_=res.startprob[order],
            transmat_=res.transmat[np.ix_(order, order)], means_=res.means[order],
            covars_=res.covars[order], feature_mean_=mean, feature_std_=std,
            covariance_type_=res.covariance_type, converged_=bool(res.converged),
            log_likelihood_=float(res.log_likelihood), bic_={int(k): float(v) for k, v in bics.items()},
            permutation_=permutation, n_iter_=int(res.n_iter), fallback_=fallback, n_train_rows_=len(x),
            fallback_reason_=self._fallback_reason(res.n_states, fallback, previous),
        )
        if not self.converged_:
            log.warning("%sHMM EM did not converge within n_iter=%d (k=%d, log-likelihood %.3f)",
                        self._market(), self.n_iter, self.n_states_, self.log_likelihood_)
        log.info("%sfitted %d-state HMM on %d rows %s..%s: log-likelihood %.2f, %d EM iterations, "
                 "converged=%s", self._market(), self.n_states_, len(x), index[0].date(),
                 index[-1].date(), self.log_likelihood_, self.n_iter_, self.converged_)
        return self

    def _fallback_reason(self, n_states: int, fallback: str | None, previous: RegimeModel | None
                         ) -> str | None:
        """``fallback_reason_`` of a fit with ``n_states`` states (see :attr:`degenerate`)."""
        lowest = self._lowest_requested()
        if n_states >= lowest:
            return None
        if previous is None:
            return fallback
        kept = (f"{self._market()}refit keeps the previous fit's {n_states} "
                f"state{'' if n_states == 1 else 's'}, fewer than the requested {lowest}")
        reason = previous.fallback_reason_ or previous.fallback_
        return kept if reason is None else f"{kept}: {reason}"

    def _set_fitted(self, **fitted: Any) -> None:
        """Set the fitted attributes (those of ``_persist.FITTED``; ``stationary_`` is computed
        from ``transmat_`` unless given) and ``expected_durations_``."""
        for name, value in fitted.items():
            setattr(self, name, value)
        if "stationary_" not in fitted:
            self.stationary_ = _forward.stationary_distribution(self.transmat_)
        with np.errstate(divide="ignore"):
            self.expected_durations_ = 1.0 / (1.0 - np.diag(self.transmat_))

    def min_rows(self, regime_window: int) -> int:
        """Price rows one :meth:`rolling_next_proba` row needs: ``regime_window + vol_window``."""
        if not is_int(regime_window) or regime_window < 1:
            raise SupsupError(f"regime_window expected an int >= 1, got {regime_window!r}")
        return int(regime_window) + int(self.vol_window)

    def _raw(self, prices: pd.DataFrame, what: str, min_rows: int | None = None
             ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """Validated ``prices``' raw features ``[n', d]`` and their dates."""
        self._check_fitted(what)
        validate_prices(prices, self.vol_window + 1 if min_rows is None else min_rows,
                        f"{self._market()}RegimeModel.{what}")
        return raw_features(prices, self.vol_window, self.observations)

    def _log_densities(self, prices: pd.DataFrame, what: str, min_rows: int | None = None
                       ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        raw, index = self._raw(prices, what, min_rows)
        return self._finite_log_densities(raw, what, index), index

    def _finite_log_densities(self, raw: np.ndarray, what: str, index: pd.DatetimeIndex | None = None
                              ) -> np.ndarray:
        """Emission log-densities ``[n, K]`` of raw features ``[n, d]``, all finite, or ``DataError``.

        Fitted parameters keep them finite for any valid prices; a stored model with an extreme
        scale, mean or covariance (say a ``feature_std`` of 1e-200) overflows float64, and its
        posteriors would be NaN: refused here, naming the first such row's date.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            x = standardise(raw, self.feature_mean_, self.feature_std_)
            log_b = _forward.gaussian_log_densities(x, self.means_, self.covars_)
        if not np.isfinite(log_b).all():
            i = int(np.argmax(~np.isfinite(log_b).all(axis=1)))
            on = f"on {index[i].date()}" if index is not None else f"at row {i}"
            raise DataError(f"{self._market()}RegimeModel.{what}: expected finite state densities, got "
                            f"{log_b[i].tolist()} {on} (raw features {raw[i].tolist()}): the model's "
                            f"feature_std, means or covars overflow float64")
        return log_b

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
        raw, index = self._raw(prices, "features")
        x = standardise(raw, self.feature_mean_, self.feature_std_)
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

    def predictive_log_likelihood(self, prices: pd.DataFrame) -> pd.Series:
        """Each row's one-step predictive log-likelihood ``log p(x_t | x_1..t-1)`` under the model.

        The filter's normaliser, started from ``stationary_`` at the first feature row like
        :meth:`filter_proba`, so a row depends only on the rows up to it. Low values say the
        observations are unlike what the fitted regimes produce (HMM drift).

        Returns
        -------
        pandas.Series
            Shape ``[n - vol_window]``, named ``log_likelihood``, index ``prices.index[vol_window:]``.
        """
        log_b, index = self._log_densities(prices, "predictive_log_likelihood")
        _, totals = _forward.forward_with_normalisers(log_b, self._log_start(),
                                                      _forward.log_transmat(self.transmat_))
        return pd.Series(totals, index=index, name="log_likelihood")

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

        Skips the frame and the per-row log-space filter: the filter's last row comes from
        :func:`~supsup_fin.regimes._forward.forward_last_proba` (equal to the log-space filter
        within ~1e-15), a few hundred microseconds for a 250-row window instead of milliseconds.

        Parameters
        ----------
        close : numpy.ndarray
            Shape ``[n]``, ``n > vol_window``, finite prices > 0, oldest first (else ``DataError``).

        Returns
        -------
        numpy.ndarray
            Shape ``[K]``: ``P(z_{t+1} | x_1..t)`` at the last row t, in ``names_`` order.
        """
        self._check_fitted("predict_next_proba_last")
        close = validate_close(close, self.vol_window,
                               f"{self._market()}RegimeModel.predict_next_proba_last")
        raw = raw_feature_array(close, self.vol_window, self.observations)
        log_b = self._finite_log_densities(raw, "predict_next_proba_last")
        last = _forward.forward_last_proba(log_b, self._log_start(),
                                           _forward.log_transmat(self.transmat_))
        return _forward.next_step(last[None, :], self.transmat_)[0]

    def smooth_proba(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Smoothed posteriors ``P(z_t | x_1..n)`` (forward-backward; looks ahead).

        For labelling training rows only, never for a decision at t.

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window, K]``; the last row equals the filter's last row to ~1e-12
            (the smoothing is hmmlearn's compiled forward-backward: :func:`_forward.smoothed_proba`).
        """
        log_b, index = self._log_densities(prices, "smooth_proba")
        return self._frame(_forward.smoothed_proba(log_b, self.stationary_, self.transmat_), index)

    def rolling_next_proba(self, prices: pd.DataFrame, regime_window: int) -> pd.DataFrame:
        """One-step forecasts, each from only the last ``regime_window`` feature rows.

        Row t equals ``predict_next_proba(prices.loc[:t].iloc[-min_rows(regime_window):]).iloc[-1]``:
        the filter restarts from ``stationary_`` at each window's first row. All windows
        advance together, vectorised over a ``[n_windows, K]`` state.

        Parameters
        ----------
        prices : pandas.DataFrame
            At least ``min_rows(regime_window)`` rows.
        regime_window : int
            Feature rows per window.

        Returns
        -------
        pandas.DataFrame
            Shape ``[n - vol_window - regime_window + 1, K]``, index: the feature dates from the
            ``regime_window``-th on.
        """
        need = self.min_rows(regime_window)
        log_b, index = self._log_densities(prices, "rolling_next_proba", need)
        log_last = _forward.forward_last_of_windows(
            log_b, int(regime_window), self._log_start(), _forward.log_transmat(self.transmat_))
        proba = _forward.next_step(np.exp(log_last), self.transmat_)
        return self._frame(proba, index[int(regime_window) - 1:])

    def states_by(self, key: str) -> np.ndarray:
        """Indices ``[K]`` into ``names_`` by ascending return variance (``"volatility"``) or
        ascending mean return (``"mean"``), whatever order the states are stored in.

        ``states_by("volatility")[-1]`` is the most turbulent regime, ``states_by("mean")[0]`` the
        most bearish, under either ``order_by``.
        """
        self._check_fitted("states_by")
        return canonical_order(self.means_, self.covars_, check_order(key, "states_by key"))

    def regime_stats(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Per-regime statistics of ``prices`` under smoothed-argmax labels.

        Each feature row is assigned to the regime with the highest smoothed probability
        (a look-ahead labelling, for description only).

        Returns
        -------
        pandas.DataFrame
            Index ``names_`` (``regime``); columns as in
            :func:`~supsup_fin.regimes._stats.regime_table`, ``expected_duration_days`` from
            ``expected_durations_``.
        """
        labels = self.smooth_proba(prices).to_numpy().argmax(axis=1)
        raw, _ = raw_features(prices, self.vol_window)
        return regime_table(labels, raw[:, 0], self.expected_durations_, self.names_)

    def to_dict(self) -> dict[str, Any]:
        """Every fitted parameter and hyperparameter as a JSON-able dict.

        Floats are written as Python floats (``json`` round-trips them exactly), so
        :meth:`from_dict` rebuilds a model whose ``filter_proba`` is bitwise identical.
        Layout: see :func:`supsup_fin.regimes._persist.encode`.
        """
        self._check_fitted("to_dict")
        fitted = {name: getattr(self, name) for name in _persist.FITTED}
        return _persist.encode(self.get_params(), fitted)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, market: str | None = None) -> RegimeModel:
        """Rebuild a fitted model from :meth:`to_dict` output (e.g. after a JSON round trip).

        The parameters are checked (see :func:`~supsup_fin.regimes._persist.check_parameters`):
        a stored model whose probabilities are not distributions, or whose covariances are not
        positive-definite, is refused here rather than giving NaN posteriors later.

        Parameters
        ----------
        d : Mapping
            :meth:`to_dict` output.
        market : str, optional
            The market's name, for the messages and as the model's ``market`` when ``d`` names
            none (dicts written before models knew their market).

        Raises
        ------
        DataError
            If the dict is of another format or version, misses or mis-shapes a field, or holds
            impossible parameters; the message names the field (and row or state) and the market.
        """
        where = ("" if market is None else f"market {market!r}: ") + "RegimeModel.from_dict"
        params = _persist.decode_hyperparameters(d, where)
        if params.get("market") is None:
            params["market"] = market
        try:
            model = cls(**params)
            model._check_params()
        except (TypeError, SupsupError) as exc:
            raise DataError(f"{where}: bad 'hyperparameters': {exc}") from None
        where = f"{model._market()}RegimeModel.from_dict"
        model._set_fitted(**_persist.decode_fitted(d, params, where))  # the stored stationary_
        if model.fallback_reason_ is None and model.degenerate:  # written before the reason was stored
            model.fallback_reason_ = model.fallback_ or "fewer states than requested; no reason recorded"
        return model
