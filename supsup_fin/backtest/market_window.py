"""What a strategy sees of one market in one walk-forward window, and its forecast as rows.

A :class:`MarketWindow` holds one market's fit at a window, its prices, the window's test days,
the gated forecaster and the window's dense nets; everything a strategy derives from it (the
gated frames, the regime posterior, the network inputs) is computed once, from the price rows
up to each test day only. A strategy answers with a :class:`Forecast`;
:meth:`MarketWindow.rows` turns it into the forecast rows of the backtest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from supsup_fin.backtest.dense import DenseBank
from supsup_fin.backtest.fitting import WindowFit
from supsup_fin.config import Config
from supsup_fin.features import classify, forward_returns
from supsup_fin.forecaster.gating import RegimeGatedForecaster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forecast:
    """One strategy's forecasts on a window's ``n`` test days of one market.

    ``probs [n, classes]`` (``None`` for rule strategies, NaN rows where there is no forecast),
    ``signal [n]`` in [-1, 1] (``p_up - p_down``, or a rule strategy's position, NaN where it has none),
    ``masks [n]`` the JSON of the masks used (gated strategies only).
    """

    probs: np.ndarray | None
    signal: np.ndarray
    masks: np.ndarray | None = None

    @classmethod
    def from_probs(cls, probs: np.ndarray, masks: np.ndarray | None = None) -> Forecast:
        """A probabilistic forecast; its signal is ``p_up - p_down`` (last minus first class), NaN on
        rows that are not wholly finite."""
        ok = np.isfinite(probs).all(axis=1)
        signal = np.full(len(probs), np.nan)
        signal[ok] = probs[ok, -1] - probs[ok, 0]
        return cls(probs, signal, masks)

    @classmethod
    def rule(cls, signal: np.ndarray) -> Forecast:
        """A position rule without class probabilities."""
        return cls(None, signal)


@dataclass(frozen=True)
class MarketWindow:
    """What the strategies see of one market in one window.

    ``fit``: the market's fit at the window (with its gated model); ``prices``: the market's whole
    frame, of which the forecasts read, for each test day, the rows up to that day only;
    ``test_pos``: the positions of the window's test days in ``prices`` (non-empty);
    ``forecaster``: the gated forecaster of ``fit``; ``dense``: the window's dense nets
    (``None`` when no strategy trains one); ``prepared``: strategy name -> what its
    :meth:`Strategy.prepare` computed for this market.
    """

    cfg: Config
    fit: WindowFit
    prices: pd.DataFrame
    test_pos: np.ndarray
    forecaster: RegimeGatedForecaster
    dense: DenseBank | None
    prepared: Mapping[str, object] = field(default_factory=dict)

    @property
    def market(self) -> str:
        return self.fit.market

    @property
    def n(self) -> int:
        """Number of test days."""
        return len(self.test_pos)

    @property
    def dates(self) -> pd.DatetimeIndex:
        """The test days (decision dates)."""
        return self.prices.index[self.test_pos]

    @property
    def classes(self) -> list[str]:
        return self.forecaster.classes

    @property
    def start(self) -> int:
        """First price row the forecasts need (``min_rows`` before the first test day)."""
        return max(0, self.test_pos[0] - self.forecaster.min_rows + 1)

    @cached_property
    def view(self) -> pd.DataFrame:
        """The price rows from :attr:`start` to the last test day."""
        return self.prices.iloc[self.start: self.test_pos[-1] + 1]

    @cached_property
    def gated(self) -> dict[str, pd.DataFrame]:
        """Gate mode -> the gated forecaster's frame on the test days, every configured mode at once."""
        frames = self.forecaster.predict_frames(self.market, self.view, list(self.cfg.backtest.modes))
        return {mode: f.reindex(self.dates) for mode, f in frames.items()}

    @cached_property
    def posterior(self) -> np.ndarray:
        """``[n, regimes]`` P(next regime | data up to t), regimes in canonical order (calm first)."""
        base = self.gated[self.cfg.backtest.modes[0]]
        return base[[f"regime_{r}" for r in self.fit.regimes.names]].to_numpy()

    @cached_property
    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs ``[n, in]`` float32 (0 where incomplete) and which are complete ``[n]``."""
        X = self.forecaster.inputs(self.market, self.view)[self.test_pos - self.start]
        ok = np.isfinite(X).all(axis=1)
        return np.where(ok[:, None], X, 0.0).astype(np.float32), ok

    def dense_proba(self, name: str) -> np.ndarray:
        """``[n, classes]`` probabilities of dense net ``name`` (NaN rows where inputs are incomplete)."""
        X, ok = self.inputs
        p = self.dense.predict_proba(name, X)  # type: ignore[union-attr]
        p[~ok] = np.nan
        return p

    @cached_property
    def common(self) -> pd.DataFrame:
        """The columns every strategy's rows share: date, market, window, realised class ``y``
        (-1 while unknown), the most probable next ``regime`` and the ``regime_<name>`` posteriors."""
        base = self.gated[self.cfg.backtest.modes[0]]
        fwd = forward_returns(self.prices, self.cfg.features.horizon).reindex(self.dates).to_numpy()
        out = pd.DataFrame({"date": self.dates, "market": self.market, "window": self.fit.window.index,
                            "y": classify(fwd, self.fit.features.class_edges), "regime": base["regime"].to_numpy()})
        for c in base.columns:
            if c.startswith("regime_"):
                out[c] = base[c].to_numpy()
        return out

    def rows(self, strategy: str, fc: Forecast) -> pd.DataFrame:
        """One strategy's forecast as rows: :attr:`common`, ``strategy``, ``p_<class>``, ``signal``,
        ``expected_return``, ``decision`` (the decision layer's position from the probabilities and
        the window's class returns, the same rule for every probabilistic strategy; a rule strategy's
        decision is its signal), ``flat_missing`` and ``masks``.

        A day without a finite forecast (a probability or a rule's signal that is NaN or infinite,
        or, under the ``kelly`` rule, an expected return that is not finite) is decided flat and
        flagged ``flat_missing``; the window's count of such days is logged.
        """
        part = self.common.copy()
        part["strategy"] = strategy
        for j, c in enumerate(f"p_{c}" for c in self.classes):
            part[c] = fc.probs[:, j] if fc.probs is not None else np.nan
        part["signal"] = fc.signal
        mu, pos = np.full(self.n, np.nan), np.zeros(self.n)
        if fc.probs is None:
            ok = np.isfinite(fc.signal)
            pos[ok] = fc.signal[ok]
        else:
            ok = np.isfinite(fc.probs).all(axis=1)
            if ok.any():
                returns = self.fit.model.class_returns if self.fit.model is not None else None
                mu[ok], pos[ok] = self.forecaster.decision.positions(fc.probs[ok], returns, self.cfg.features.horizon)
            if self.forecaster.decision.rule == "kelly":
                ok &= np.isfinite(mu)
                pos[~ok] = 0.0
        part["expected_return"], part["decision"], part["flat_missing"] = mu, pos, ~ok
        if not ok.all():
            log.warning("window %d: %s on %s is flat on %d of %d days without a finite forecast, first %s",
                        self.fit.window.index, strategy, self.market, int((~ok).sum()), self.n,
                        self.dates[~ok][0].date())
        part["masks"] = fc.masks if fc.masks is not None else ""
        return part
