"""Scores on ``valid`` and ``test`` against the class-prior baseline.

Two tables:

- per task (``market/regime`` and ``market/ALL``): the task's mask alone, through its calibration
  map when the model has one, on the evaluation rows assigned to that regime by the causal
  posterior P(z_{t+1} | x_1..t) (ALL: every row). A row whose posterior is not finite has no
  regime: it is left out of every regime's task (``n_unrouted`` counts them, and a warning
  names the first) and scored by ALL only;
- per market and gate mode: the regime-gated forecaster on every evaluation row, plus ``auto``
  (each market's mode chosen on held-out rows; ``runs`` names it) when the model has chosen.

The baseline always predicts the market's training class frequencies (the class prior, also
reported per class as ``prior_<class>`` in the market table): a log-loss above the baseline's
is worse than knowing nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from supsup_fin.forecaster.calibration import log_loss
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit
from supsup_fin.forecaster.mask_tasks import ALL
from supsup_fin.gate_modes import AUTO, GATE_MODES

log = logging.getLogger(__name__)


def most_probable_regime(posterior: np.ndarray) -> np.ndarray:
    """Index ``[n]`` of the most probable regime of each row of ``posterior [n, K]`` (a tie goes to
    the first), -1 where the row is not wholly finite: a missing posterior is no regime."""
    post = np.asarray(posterior, dtype=np.float64)
    known = np.isfinite(post).all(axis=1)
    return np.where(known, np.where(known[:, None], post, 0.0).argmax(axis=1), -1)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose most probable class is ``y``. ``probs`` ``[n, C]``."""
    return float((probs.argmax(axis=1) == y).mean()) if len(y) else float("nan")


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error between ``probs`` and the one-hot ``y``."""
    if not len(y):
        return float("nan")
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def _scores(probs: np.ndarray, prior: np.ndarray, y: np.ndarray) -> dict[str, float]:
    base = np.broadcast_to(prior, probs.shape)
    return {
        "accuracy": accuracy(probs, y), "baseline_accuracy": accuracy(base, y),
        "log_loss": log_loss(probs, y), "baseline_log_loss": log_loss(base, y),
        "brier": brier(probs, y), "baseline_brier": brier(base, y),
    }


@dataclass(frozen=True)
class Evaluation:
    """``tasks``: one row per (task, segment); ``markets``: one row per (market, mode, segment)."""

    tasks: pd.DataFrame
    markets: pd.DataFrame

    def score(self, segment: str, metric: str, mode: str) -> tuple[float, float]:
        """Mean over markets of (forecaster, prior baseline) ``metric`` on ``segment``."""
        m = self.markets[(self.markets.segment == segment) & (self.markets["mode"] == mode)]
        return float(m[metric].mean()), float(m[f"baseline_{metric}"].mean())


@torch.no_grad()
def evaluate(
    forecaster: RegimeGatedForecaster, features: dict[str, FeatureSet], regimes: dict[str, RegimeFit],
    prices: dict[str, pd.DataFrame], segments: tuple[str, ...] = ("valid", "test"),
    device: str | torch.device | None = None,
) -> Evaluation:
    """Score every task mask and every gate mode on each segment, the network run on ``device``
    (``runtime.device`` resolved by :func:`~supsup_fin.forecaster.training.resolve_device`;
    default: where ``forecaster``'s network is)."""
    if device is not None:
        forecaster = forecaster.to(device)
    task_rows, market_rows = [], []
    for market in sorted(features):
        fs, mm = features[market], forecaster.markets[market]
        modes = (*GATE_MODES, AUTO) if mm.mode is not None else GATE_MODES
        frames = forecaster.predict_frames(market, prices[market], modes)
        prior = {f"prior_{c}": float(p) for c, p in zip(forecaster.classes, fs.prior)}
        names = list(mm.regime.names_)
        for seg in segments:
            idx = fs.rows(seg)
            dates = fs.dates[idx]
            have = frames["market"].index.intersection(dates)
            idx = idx[np.isin(dates, have)]
            y = fs.y[idx]
            for mode, frame in frames.items():
                probs = frame.loc[fs.dates[idx], [f"p_{c}" for c in forecaster.classes]].to_numpy()
                market_rows.append({"market": market, "mode": mode, "runs": mm.gate_mode(mode), "segment": seg,
                                    "n": len(idx), **_scores(probs, fs.prior, y), **prior})
            regime_of = most_probable_regime(regimes[market].next_proba[idx])
            routed = regime_of >= 0
            if not routed.all():
                log.warning("evaluate: %s %s: %d of %d rows have no finite regime posterior, first on %s; they are "
                            "scored by ALL only", market, seg, int((~routed).sum()), len(idx),
                            pd.Timestamp(fs.dates[idx][~routed][0]).date())
            x = torch.as_tensor(fs.X[idx], dtype=torch.float32)
            for regime in [*names, ALL]:
                task = mm.all_mask if regime == ALL else mm.masks.get(regime)
                if task is None or (regime != ALL and task == mm.all_mask):
                    continue
                sel = np.ones(len(idx), bool) if regime == ALL else regime_of == names.index(regime)
                logits = (forecaster.net(x[sel], mask=forecaster.bank[task]).cpu() if sel.any()
                          else torch.zeros(0, len(fs.prior)))
                cal = mm.calibrators.get(task)  # the mask's calibration map, as the forecaster applies it
                if cal is None:
                    probs = torch.softmax(logits.double(), dim=1).numpy()
                else:
                    probs = cal(torch.log_softmax(logits.double(), dim=1).numpy())
                meta = forecaster.bank.meta(task)
                task_rows.append({
                    "task": task, "market": market, "regime": regime, "segment": seg,
                    "n_train": meta.get("n_train"), "n_eval": int(sel.sum()), "n_unrouted": int((~routed).sum()),
                    "mask_density": float(forecaster.bank[task].density()),
                    **_scores(probs, fs.prior, y[sel]),
                })
    return Evaluation(pd.DataFrame(task_rows), pd.DataFrame(market_rows))
