"""Choices made on the selection slice: each mask's calibration map and each market's gate mode.

For every market of a built forecaster, on its held-out training rows
(:mod:`~supsup_fin.forecaster.selection`):

1. each mask gets a calibration map fitted on the rows it would answer (a regime mask: the rows
   the causal posterior routes to its regime; the ALL mask: every held-out row), and the
   ``soft`` superposition one map of its own, and ``infer`` one map per mask fitted on the rows
   task inference sends it;
2. every gate mode is scored, calibrated, by held-out log-loss, and ``auto`` keeps ``market``
   (the ALL mask, no gating) unless another mode beats it by more than :data:`SE_MARGIN`
   standard errors of the paired per-row difference (one-sided, about 2.5 % by chance). Regimes must earn their complexity: where gating adds
   nothing measurable the market gets one mask.

Nothing here reads ``valid`` or ``test`` rows.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from supsup_fin.forecaster.calibration import Calibrator, prior_log_loss, row_nll
from supsup_fin.forecaster.gating import INFER, SOFT, MarketModel, RegimeGatedForecaster
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit
from supsup_fin.forecaster.selection import MIN_REGIME_ROWS, regime_rows, selection_split
from supsup_fin.gate_modes import GATE_MODES

log = logging.getLogger(__name__)

SE_MARGIN = 2.0
MIN_GAIN = 1e-4
"""Nats per row below which two modes tie (e.g. both outputting the prior, up to rounding)."""


def pick_mode(nll: dict[str, np.ndarray], default: str = "market") -> str:
    """``default`` unless another mode's mean per-row NLL beats it by more than :data:`SE_MARGIN`
    standard errors of the paired difference (and :data:`MIN_GAIN`); then the best such mode.
    ``nll``: mode -> ``[n]`` per-row NLL."""
    base = nll[default]
    best, best_gain = default, 0.0
    for mode, v in nll.items():
        d = base - v
        gain, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else np.inf
        if gain > max(SE_MARGIN * se, MIN_GAIN) and gain > best_gain:
            best, best_gain = mode, gain
    return best


def _task_map(fc: RegimeGatedForecaster, task: str, fs: FeatureSet, rows: np.ndarray, prior: np.ndarray) -> Calibrator:
    """Mask ``task``'s calibration map fitted on input rows ``rows`` of ``fs``."""
    z = torch.log_softmax(fc.task_logits(torch.as_tensor(fs.X[rows], dtype=torch.float32), task), dim=1).numpy()
    return Calibrator.fit(z, fs.y[rows], prior)


@torch.no_grad()
def fit_market(
    fc: RegimeGatedForecaster, mm: MarketModel, fs: FeatureSet, rf: RegimeFit, holdout: np.ndarray,
    modes: tuple[str, ...] = GATE_MODES,
) -> MarketModel:
    """``mm`` with calibration maps, the chosen gate mode and the held-out scores behind them, all
    fitted on ``holdout``: the market's selection-slice rows of ``fs`` (:func:`selection_split`)."""
    hold = holdout[np.isfinite(rf.next_proba[holdout]).all(axis=1)]
    names = list(rf.names)
    cals: dict[str, Calibrator] = {}
    for task in dict.fromkeys([mm.masks.get(r, mm.all_mask) for r in names] + [mm.all_mask]):
        own = [k for k, r in enumerate(names) if mm.masks.get(r) == task and task != mm.all_mask]
        cals[task] = _task_map(fc, task, fs, regime_rows(hold, rf.next_proba, own[0] if len(own) == 1 else None),
                               mm.prior)
    post = rf.next_proba[hold]
    weights: dict[str, np.ndarray] = {}
    for k, r in enumerate(names):
        t = mm.masks.get(r, mm.all_mask)
        weights[t] = weights.get(t, 0.0) + post[:, k]
    x = torch.as_tensor(fs.X[hold], dtype=torch.float32)
    z = torch.log_softmax(fc.soft_logits(x, weights), dim=1).numpy()
    cals[SOFT] = Calibrator.fit(z, fs.y[hold], mm.prior)
    candidates = list(dict.fromkeys(mm.masks.get(r, mm.all_mask) for r in names))
    inferred = np.array(fc.inferred_tasks(candidates, fs.X, hold))
    for task in candidates:  # infer: each mask calibrated on the rows task inference sends it
        rows = hold[inferred == task]
        cals[INFER + task] = _task_map(fc, task, fs, rows if len(rows) >= MIN_REGIME_ROWS else hold, mm.prior)
    mm = replace(mm, calibrators=cals)
    y = fs.y[hold]
    nll = {m: row_nll(fc.route(mm, fs.X, hold, post, m)[0], y) for m in modes}
    chosen = pick_mode(nll)
    selection = {
        "n_holdout": int(len(hold)), "holdout_start": str(fs.dates[hold[0]].date()),
        "holdout_end": str(fs.dates[hold[-1]].date()), "prior_log_loss": prior_log_loss(mm.prior, y),
        "log_loss": {m: float(v.mean()) for m, v in nll.items()}, "chosen": chosen,
    }
    log.info("%s: gate mode %s chosen on %d held-out rows (log-loss %s; prior %.4f)", mm.name, chosen, len(hold),
             {m: round(v, 4) for m, v in selection["log_loss"].items()}, selection["prior_log_loss"])
    return replace(mm, mode=chosen, selection=selection)


def fit_selection(
    fc: RegimeGatedForecaster, features: dict[str, FeatureSet], regimes: dict[str, RegimeFit], fraction: float,
    purge: int,
) -> RegimeGatedForecaster:
    """Calibrate every market of ``fc`` and choose its gate mode on its selection slice (in place)."""
    for name, mm in list(fc.markets.items()):
        holdout = selection_split(features[name].rows("train"), fraction, purge, name).holdout
        fc.markets[name] = fit_market(fc, mm, features[name], regimes[name], holdout)
    return fc
