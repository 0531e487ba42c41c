"""One market's fit at one walk-forward window: features, the aligned HMM, new rows and its model.

On prices up to the window's ``as_of`` only (see :func:`~supsup_fin.backtest.windows.fit_view`):
features, scaler and class edges on the window's ``train`` rows, and the regime HMM refitted
and aligned to the market's previous window (``previous=``) so a regime keeps its name across
windows. The window's tasks are the market's regime and ALL tasks renamed
``market/regime@as_of``; once their masks are in the bank, :meth:`WindowFit.with_model` gives
the fit its gated :class:`~supsup_fin.forecaster.gating.MarketModel`, calibrated and with its
gate mode chosen on the window's selection slice: the last ``training.holdout_fraction`` of the
window's own training rows (:mod:`~supsup_fin.forecaster.selection`), so no choice of a window
reads a day after its ``as_of``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from supsup_fin.backtest.windows import Window, fit_view
from supsup_fin.config import Config
from supsup_fin.forecaster.choose import fit_market as choose_on_holdout
from supsup_fin.forecaster.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.forecaster.selection import SelectionSplit, selection_split
from supsup_fin.forecaster.training import decision_rule, stochastic_samples
from supsup_fin.forecaster.mask_tasks import ALL, Task, make_tasks
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit, build_features, fit_regimes
from supsup_fin.masks import FrozenNet, MaskBank
from supsup_fin.regimes import RegimeModel


def windowed(name: str, tag: str) -> str:
    """``market/regime@as_of``: a task of one walk-forward window."""
    return f"{name}@{tag}"


@dataclass(frozen=True)
class WindowFit:
    """One market's fit at one window (kept for the continual scores and the notebooks).

    ``new_rows``: training rows first seen at this window (after the previous window's last
    training row): the window's own task in the continual scores, and what the fine-tuned dense
    net trains on. ``last_train``: the date of the window's last labelled training row (``None``
    without one). ``model``: the gated market model, once the window's masks are trained.
    """

    window: Window
    features: FeatureSet
    regimes: RegimeFit
    new_rows: np.ndarray
    last_train: pd.Timestamp | None = None
    model: MarketModel | None = None
    split: SelectionSplit | None = None
    """The window's fit rows and selection slice (``None``: every training row is a fit row)."""

    @property
    def market(self) -> str:
        """The market's name."""
        return self.features.market

    def train_rows(self) -> np.ndarray:
        """Rows ``[n]`` of the ``train`` segment before the selection slice that have a regime label
        (what the tasks train on)."""
        rows = self.features.rows("train") if self.split is None else self.split.fit
        return rows[self.regimes.train_labels[rows] >= 0]

    @property
    def holdout_rows(self) -> np.ndarray:
        """The selection slice's rows ``[m]`` (empty without one)."""
        return np.array([], dtype=np.int64) if self.split is None else self.split.holdout

    def with_model(self, bank: MaskBank, net: FrozenNet, cfg: Config) -> WindowFit:
        """This fit with its gated model on ``bank`` (which holds the window's masks); regimes
        without a mask of their own use the window's ALL mask. With a selection slice the masks
        are calibrated and the gate mode chosen on it (:func:`~supsup_fin.forecaster.choose.fit_market`)."""
        tag, market, rf = self.window.tag, self.market, self.regimes
        all_mask = windowed(f"{market}/{ALL}", tag)
        masks = {r: windowed(f"{market}/{r}", tag) for r in rf.names}
        masks = {r: (t if t in bank else all_mask) for r, t in masks.items()}
        fs = self.features
        model = MarketModel(market, fs.scaler, fs.class_edges, fs.prior, rf.model, masks, all_mask,
                            fs.class_returns())
        if len(self.holdout_rows):
            fc = forecaster_for([dataclasses.replace(self, model=model)], cfg, net, bank, mode="market")
            model = choose_on_holdout(fc, model, fs, rf, self.holdout_rows)
        return dataclasses.replace(self, model=model)


def fit_market(cfg: Config, prices: pd.DataFrame, market: str, window: Window,
               previous: RegimeModel | None, since: pd.Timestamp | None) -> WindowFit:
    """Fit one market at ``window`` on its prices up to ``as_of``.

    Parameters
    ----------
    prices : the market's whole price frame (only rows up to ``window.as_of`` are read).
    previous : the market's HMM at the previous window (names the new one's regimes), if any.
    since : the previous windows' last training date; rows after it are the window's new rows.

    Raises
    ------
    DataError
        When the market has too little history up to ``as_of``.
    """
    seen, segments = fit_view(prices, window, cfg, market)
    fs = build_features(market, seen, cfg.model_copy(update={"segments": segments}))
    rf = fit_regimes(market, seen, cfg.regimes, segments, previous=previous)
    split = selection_split(fs.rows("train"), cfg.training.holdout_fraction,
                            cfg.features.horizon + cfg.features.lookback, market)
    fit = WindowFit(window, fs, rf, np.array([], dtype=np.int64), split=split)
    rows = fit.train_rows()
    new = rows if since is None else rows[fs.dates[rows] > since]
    last = fs.dates[rows[-1]] if len(rows) else None
    return dataclasses.replace(fit, new_rows=new, last_train=last)


def window_tasks(fits: dict[str, WindowFit], cfg: Config, tag: str) -> list[Task]:
    """The window's regime and ALL tasks of every fitted market, named ``market/regime@tag``."""
    tasks = make_tasks({m: f.features for m, f in fits.items()}, {m: f.regimes for m, f in fits.items()}, cfg)
    return [dataclasses.replace(t, name=windowed(t.name, tag), meta={**t.meta, "as_of": tag}) for t in tasks]


def forecaster_for(fits: list[WindowFit], cfg: Config, net: FrozenNet, bank: MaskBank,
                   mode: str | None = None) -> RegimeGatedForecaster:
    """The gated forecaster of one window's market fits on ``bank`` (which must hold their masks)."""
    return RegimeGatedForecaster(
        {f.model.name: f.model for f in fits}, net, bank, feature_names=cfg.features.names,  # type: ignore[union-attr]
        lookback=cfg.features.lookback, horizon=cfg.features.horizon, regime_window=cfg.regimes.regime_window,
        mode=mode or cfg.gating.mode, infer_window=cfg.gating.infer_window,
        stochastic_samples=stochastic_samples(cfg), decision=decision_rule(cfg),
    )


def oracle_params(cfg: Config, market: str) -> str | None:
    """The synthetic preset a market was drawn from (what the oracle knows), else ``None``."""
    mc = cfg.market(market)
    return mc.dataset if mc.source == "synthetic" else None
