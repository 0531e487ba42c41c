"""A new mask for a novel regime, and the challenger forecaster that routes its market to it.

When the novel-regime check (:mod:`supsup_fin.monitor.novelty`) says novel, SupSup's answer is a
new task: one more supermask on the same frozen network, trained on the novel rows, the other
masks untouched. The rows are the market's dates from ``since`` (the first date of the current
run of novel dates) whose target has matured (``as_of + horizon`` within the data), with the
inputs scaled by the market's stored scaler and the targets classed by its stored class edges,
so the new mask answers in the champion's units.

They are used as a retrain uses a market's training rows, at a smaller scale: the mask trains
on the first rows and the last half is held out, after a purge of ``horizon`` rows (their
targets overlap), to choose its step budget and fit its calibration map
(:class:`~supsup_fin.forecaster.calibration.Calibrator`, toward the novel rows' class
frequencies: without measurable held-out skill the map answers those frequencies exactly). A
map is fitted only on at least ``MIN_HOLDOUT_ROWS`` held-out rows, as a retrain's selection
slice needs; until then the challenger answers the novel rows' class frequencies (maps fitted
on 20 held-out rows passed the skill test and then lost up to 20 nats a forecast in
``benchmarks/novelty_bench.py``). The mask is task ``<market>/novel-<YYYYMMDD of since>``,
trained with the config's mask and training settings and appended to a copy of the bank: the
old masks are the same bits and the base is rebuilt from its seed, so both stay bit-identical.

The challenger differs from the champion in that market only: every regime and the ALL mask
point to the new mask (so every gate mode runs it), its calibration maps are the new mask's (the
old ones were fitted for the old masks), its gate mode is ``market`` and its held-out choices are
dropped, its class prior and class returns are the novel rows' (the prior smoothed by one count
per class), and its novelty reference is dropped (it described the old masks; a retrain computes
a new one). Its HMM, scaler, class edges and other references stay. Other markets are unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from supsup_fin.config import Config
from supsup_fin.decision import ClassReturns
from supsup_fin.errors import ConfigError, DataError
from supsup_fin.features import classify, forward_returns
from supsup_fin.forecaster.calibration import Calibrator
from supsup_fin.forecaster.gating import INFER, SOFT, RegimeGatedForecaster
from supsup_fin.forecaster.mask_tasks import Task, task_name, training_config_hash
from supsup_fin.forecaster.selection import MIN_HOLDOUT_ROWS
from supsup_fin.forecaster.training import build_network, train_group
from supsup_fin.masks import MaskBank

log = logging.getLogger(__name__)

__all__ = ["FIT_ROWS", "NewMask", "challenger_forecaster", "new_mask_challenger", "novel_rows", "novel_task"]

FIT_ROWS = 10
"""Fewest novel rows a new mask trains on (before the purge and its held-out half)."""


@dataclass(frozen=True)
class NewMask:
    """What the new-mask step did for one market.

    ``status``: ``trained`` (``task`` and the challenger ``forecaster`` are set), ``need_rows``
    (too few matured novel rows: ``need`` more), ``not_novel`` (the verdict is
    not novel) or ``disabled`` (``monitor.novelty.train_new_mask`` is off). ``n_rows``: the
    matured novel rows since ``since``; ``message``: one sentence saying which.
    """

    market: str
    status: str
    since: str | None
    n_rows: int
    need: int
    message: str
    task: str | None = None
    forecaster: RegimeGatedForecaster | None = None


def novel_task(market: str, since: str | pd.Timestamp) -> str:
    """The new mask's task name, ``<market>/novel-<YYYYMMDD>``."""
    return task_name(market, f"novel-{pd.Timestamp(since):%Y%m%d}")


def novel_rows(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame,
               since: str | pd.Timestamp) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DatetimeIndex]:
    """The matured rows of ``prices`` from ``since`` on, in the market's stored units.

    Returns ``X`` ``[n, in]`` float32 (scaled input windows), ``y`` ``[n]`` int64 (classes by the
    stored edges), ``fwd`` ``[n]`` (forward log returns) and their dates: the rows on or after
    ``since`` with a complete input and a known target (``as_of + horizon`` within ``prices``).
    """
    mm = fc.market_model(market)
    X = fc.inputs(market, prices)
    fwd = forward_returns(prices, fc.horizon).to_numpy()
    y = classify(fwd, mm.class_edges)
    ok = (prices.index >= pd.Timestamp(since)) & (y >= 0) & np.isfinite(X).all(axis=1)
    return X[ok], y[ok], fwd[ok], prices.index[ok]


def challenger_forecaster(fc: RegimeGatedForecaster, market: str, task: str, bank: MaskBank,
                          **changes: Any) -> RegimeGatedForecaster:
    """``fc`` on ``bank`` with ``market`` routed to mask ``task`` in every regime and gate mode.

    The market's calibration maps, held-out choices and novelty reference are dropped and its
    gate mode set to ``market`` (see the module docstring); ``changes`` replace further
    :class:`~supsup_fin.forecaster.market_model.MarketModel` fields (``calibrators``, ``prior``,
    ``class_returns``). Other markets are the same objects.
    """
    mm = fc.market_model(market)
    reference = {k: v for k, v in mm.reference.items() if k != "novelty"}
    routed = dataclasses.replace(mm, masks=dict.fromkeys(mm.regime.names_, task), all_mask=task, calibrators={},
                                 mode="market", selection={}, reference=reference)
    return RegimeGatedForecaster(
        {**fc.markets, market: dataclasses.replace(routed, **changes)}, fc.net, bank,
        feature_names=fc.feature_names, lookback=fc.lookback, horizon=fc.horizon, regime_window=fc.regime_window,
        mode=fc.mode, infer_window=fc.infer_window, stochastic_samples=fc.stochastic_samples, decision=fc.decision,
    )


def new_mask_challenger(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, verdict: dict[str, Any],
                        cfg: Config) -> NewMask:
    """Train a new mask on the novel rows of ``verdict`` and build the challenger forecaster.

    Parameters
    ----------
    fc : the champion.
    market : the market the verdict is about.
    prices : the market's prices the verdict was computed on (rows after ``verdict["as_of"]``
        are ignored).
    verdict : :func:`~supsup_fin.monitor.novelty.detect_novelty`'s result.
    cfg : the config the champion was trained with (network, masks, training) and its
        ``monitor.novelty`` (``train_new_mask``, ``min_rows``).

    Returns
    -------
    NewMask
        ``trained`` with the challenger, or why not: ``need_rows`` says how many more matured
        novel rows it takes (``monitor.novelty.min_rows``, and at least ``2 * FIT_ROWS + horizon``
        for the fit rows, the purge and the held-out half).

    Raises
    ------
    ConfigError
        When ``cfg``'s network is not the one the champion's masks were trained on.
    DataError
        When the model already holds the mask this novel run would get.
    """
    nov = cfg.monitor.novelty
    since = verdict.get("since")
    if not nov.train_new_mask:
        return NewMask(market, "disabled", since, 0, 0, f"market {market!r}: monitor.novelty.train_new_mask is off")
    if not verdict.get("novel") or since is None:
        return NewMask(market, "not_novel", since, 0, 0, f"market {market!r}: no novel regime to train a mask for")
    upto = prices.loc[: pd.Timestamp(verdict["as_of"])] if verdict.get("as_of") else prices
    X, y, fwd, dates = novel_rows(fc, market, upto, since)
    required = max(nov.min_rows, 2 * FIT_ROWS + fc.horizon)
    if len(X) < required:
        need = required - len(X)
        return NewMask(market, "need_rows", since, len(X), need,
                       f"market {market!r}: {len(X)} matured novel rows since {since}; need {need} more "
                       f"(monitor.novelty.min_rows {nov.min_rows}) before a new mask is trained")
    name = novel_task(market, since)
    if name in fc.bank:
        raise DataError(f"market {market!r}: the model already holds a mask {name!r}; the novel regime since "
                        f"{since} has one")
    if not fc.bank.matches(build_network(cfg, X.shape[1])):
        raise ConfigError(f"the config's network (network.hidden {list(cfg.network.hidden)}, network.seed "
                          f"{cfg.network.seed}, masks.superfluous {cfg.masks.superfluous}) is not the model's base "
                          f"network {fc.bank.sizes} seed {fc.bank.seed}; use the config the model was trained with")
    n_hold = len(X) // 2
    fit, hold = slice(0, len(X) - n_hold - fc.horizon), slice(len(X) - n_hold, len(X))
    meta = {"market": market, "regime": name.split("/", 1)[1], "novel_since": since,
            "train_start": str(dates[0].date()), "train_end": str(dates[fit.stop - 1].date()),
            "holdout_start": str(dates[hold.start].date()), "holdout_end": str(dates[-1].date()),
            "config_hash": training_config_hash(cfg)}
    task = Task(name, market, meta["regime"], X[fit], y[fit], meta, X[hold], y[hold])
    bank = train_group([task], cfg, fc.bank)
    prior = (np.bincount(y, minlength=len(fc.classes)) + 1.0) / (len(y) + len(fc.classes))
    challenger = challenger_forecaster(fc, market, name, bank, prior=prior,
                                       class_returns=ClassReturns.fit(fwd, y, len(fc.classes)))
    if n_hold >= MIN_HOLDOUT_ROWS:
        z = torch.log_softmax(challenger.task_logits(torch.as_tensor(X[hold]), name), dim=1).numpy()
        cal = Calibrator.fit(z, y[hold], prior)
    else:
        cal = Calibrator(1.0, 1.0, tuple(float(p) for p in prior), n_hold)
    challenger.markets[market] = dataclasses.replace(challenger.markets[market],
                                                     calibrators={name: cal, SOFT: cal, INFER + name: cal})
    answer = (f"calibrated on {n_hold} held-out rows {meta['holdout_start']}..{meta['holdout_end']} (weight "
              f"{cal.weight:.2f} on the novel rows' class frequencies)" if n_hold >= MIN_HOLDOUT_ROWS else
              f"answering the novel rows' class frequencies until {MIN_HOLDOUT_ROWS} held-out rows calibrate it "
              f"({n_hold} now)")
    log.info("market %s: trained mask %s on %d novel rows, %s", market, name, fit.stop, answer)
    return NewMask(market, "trained", since, len(X), 0,
                   f"market {market!r}: trained mask {name!r} on {fit.stop} matured novel rows "
                   f"{meta['train_start']}..{meta['train_end']}, {answer}", name, challenger)
