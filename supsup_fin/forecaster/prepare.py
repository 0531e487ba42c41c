"""Per-market preparation: features and targets by segment, and the market's regime fit.

These are the library calls behind the retrain flow's ``features`` and ``regimes`` steps.
Everything fitted here (feature scaler, class edges, class prior, HMM) sees the ``train``
segment only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from supsup_fin.config import Config, RegimesConfig, SegmentsConfig
from supsup_fin.data.frame import validate_frame
from supsup_fin.decision import ClassReturns
from supsup_fin.errors import DataError
from supsup_fin.features import (
    Scaler,
    classify,
    feature_warmup,
    fit_class_edges,
    forward_returns,
    input_windows,
    make_features,
)
from supsup_fin.regimes import RegimeModel

log = logging.getLogger(__name__)

SEGMENTS = ("train", "valid", "test")


def segment_labels(dates: pd.DatetimeIndex, segments: SegmentsConfig, horizon: int) -> np.ndarray:
    """The segment of each row, or ``""``: row t belongs to a segment when t and t+horizon do.

    So no training target reaches into ``valid`` and no validation target into ``test``.
    Shape ``[n]`` of str.
    """
    out = np.full(len(dates), "", dtype=object)
    target_dates = pd.DatetimeIndex(list(dates[horizon:]) + [pd.NaT] * min(horizon, len(dates)))
    for name in SEGMENTS:
        start, end = getattr(segments, name)
        lo = pd.Timestamp(start) if start is not None else dates.min()
        hi = pd.Timestamp(end) if end is not None else dates.max()
        inside = (dates >= lo) & (dates <= hi) & (target_dates <= hi)
        out[np.asarray(inside)] = name
    return out


def train_slice(prices: pd.DataFrame, segments: SegmentsConfig) -> pd.DataFrame:
    """The prices up to the end of the ``train`` segment (from its start, if it has one)."""
    start, end = segments.train
    out = prices.loc[pd.Timestamp(start) if start else None: pd.Timestamp(end)]
    return out


@dataclass(frozen=True)
class FeatureSet:
    """One market's model inputs and targets on its full date range.

    ``X[t]`` is the flattened, scaled feature window ending at t (float32, NaN where it is
    incomplete), ``y[t]`` the class of the forward return (``-1`` where unknown), ``segment[t]``
    one of ``train valid test`` or ``""``.
    """

    market: str
    dates: pd.DatetimeIndex
    X: np.ndarray
    y: np.ndarray
    fwd: np.ndarray
    segment: np.ndarray
    scaler: Scaler
    class_edges: np.ndarray
    prior: np.ndarray

    def rows(self, segment: str) -> np.ndarray:
        """Indices of the usable rows (complete inputs, known target) of a segment."""
        ok = (self.segment == segment) & (self.y >= 0) & np.isfinite(self.X).all(axis=1)
        return np.flatnonzero(ok)

    def class_returns(self) -> ClassReturns:
        """Each class's forward-return mean and variance on the ``train`` rows (for the decision layer)."""
        rows = self.rows("train")
        return ClassReturns.fit(self.fwd[rows], self.y[rows], len(self.prior))


def build_features(market: str, prices: pd.DataFrame, cfg: Config) -> FeatureSet:
    """Features, scaler (fitted on ``train``), forward-return classes (edges from ``train``).

    Raises ``DataError`` naming the market when a segment ends up empty or the series is
    shorter than the feature warm-up + lookback + horizon.
    """
    fc = cfg.features
    prices = validate_frame(prices, market)  # structural faults named by column and date first
    need = feature_warmup(fc.names) + fc.lookback + fc.horizon + 1
    if len(prices) < need:
        raise DataError(
            f"market {market!r}: {len(prices)} rows of prices, need at least {need} "
            f"(feature warm-up + lookback {fc.lookback} + horizon {fc.horizon})"
        )
    raw = make_features(prices, fc.names, market=market).to_numpy()
    fwd = forward_returns(prices, fc.horizon).to_numpy()
    seg = segment_labels(prices.index, cfg.segments, fc.horizon)
    is_train = (seg == "train") & np.isfinite(raw).all(axis=1) & np.isfinite(fwd)
    if is_train.sum() < 10 * fc.n_classes:
        raise DataError(
            f"market {market!r}: only {int(is_train.sum())} usable training rows in segment "
            f"train {cfg.segments.train} (data {prices.index[0].date()}..{prices.index[-1].date()})"
        )
    scaler = Scaler.fit(raw[is_train])
    edges = fit_class_edges(fwd[is_train], fc.n_classes)
    y = classify(fwd, edges)
    prior = np.bincount(y[is_train], minlength=fc.n_classes) / is_train.sum()
    X = input_windows(scaler.transform(raw), fc.lookback)
    fs = FeatureSet(market, prices.index, X, y, fwd, seg, scaler, edges, prior)
    for s in SEGMENTS:
        log.info("%s: %d usable %s rows", market, len(fs.rows(s)), s)
    return fs


def lineage_of(previous: RegimeModel | None, cfg: Config) -> RegimeModel | None:
    """``previous`` if a refit under ``cfg.regimes`` can continue its lineage, else ``None``.

    A lineage keeps its observation model, volatility window and regime order (``order_by``: its
    regimes' names); after a config change to any of them the refit starts a fresh state search
    (and says so in the log).
    """
    if previous is None:
        return None
    r = cfg.regimes
    if previous.observations != r.observations or previous.vol_window != r.vol_window:
        log.info("regime lineage restarts: the champion's HMM uses observations %r / vol_window %d, the "
                 "config %r / %d", previous.observations, previous.vol_window, r.observations, r.vol_window)
        return None
    if previous.order_by != r.order_by:
        log.info("regime lineage restarts: the champion's HMM orders its regimes by %r (%s), the config "
                 "by %r", previous.order_by, ", ".join(previous.names_), r.order_by)
        return None
    return previous


@dataclass(frozen=True)
class RegimeFit:
    """One market's fitted HMM, training labels and causal posteriors.

    ``train_labels[t]``: smoothed-argmax regime on the train segment (``-1`` elsewhere) — used
    only to assign training rows to tasks. ``next_proba[t]``: P(z_{t+1} | the last
    ``regime_window`` feature rows up to t), NaN where unavailable — what gates forecasts and
    assigns evaluation rows.
    """

    market: str
    model: RegimeModel
    regime_window: int
    train_labels: np.ndarray
    next_proba: np.ndarray

    @property
    def names(self) -> list[str]:
        return list(self.model.names_)


def fit_regimes(
    market: str, prices: pd.DataFrame, regimes: RegimesConfig, segments: SegmentsConfig,
    previous: RegimeModel | None = None,
) -> RegimeFit:
    """Fit the market's HMM on ``train`` and compute its labels and rolling posteriors."""
    train = train_slice(prices, segments)
    model = RegimeModel(
        n_states=regimes.n_states, n_restarts=regimes.n_restarts, n_iter=regimes.n_iter,
        covariance_type=regimes.covariance_type, vol_window=regimes.vol_window,
        random_state=regimes.random_state, selection=regimes.selection,
        observations=regimes.observations, sticky=regimes.sticky, market=market, order_by=regimes.order_by,
    )
    try:
        model.fit(train, previous=previous)
    except DataError as err:  # the model's message names the market already
        raise DataError(f"regime fit on the train segment failed: {err}") from None
    smooth = model.smooth_proba(train)
    labels = pd.Series(-1, index=prices.index, dtype=np.int64)
    labels.loc[smooth.index] = smooth.to_numpy().argmax(axis=1)
    regime_window = regimes.regime_window
    nxt = model.rolling_next_proba(prices, regime_window).reindex(prices.index)
    log.info("%s: %d regimes %s, converged=%s", market, model.n_states_, model.names_, model.converged_)
    return RegimeFit(market, model, regime_window, labels.to_numpy(), nxt.to_numpy())
