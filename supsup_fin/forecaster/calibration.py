"""Calibration maps fitted on held-out rows: temperature scaling, then shrinkage toward the class prior.

A map turns a model's log-probabilities ``z`` ``[n, C]`` into calibrated probabilities::

    p = (1 - w) * softmax(z / T) + w * prior

``T > 0`` is fitted first by minimising the held-out negative log-likelihood (Guo et al., 2017:
it leaves the argmax unchanged), then ``w`` in ``[0, 1]`` the same way. A map whose held-out
log-loss does not beat the prior's by more than :data:`SKILL_SE` standard errors of the paired
per-row difference (and by more than ``2 / n``, an AIC-style allowance for its two fitted
numbers), or does not beat it in both halves of the held-out rows (taken in time order: skill
that lives in one episode of the slice is not trusted), gets ``w = 1``: a model without
measurable, persistent held-out skill outputs the prior exactly.
The test matters because the held-out rows have also chosen the model's training steps, so
its held-out score is optimistic; a noisy gain is not taken for skill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from supsup_fin.masks.early_stop import temperature_nll

_EPS = 1e-12
# Fewer held-out rows than this: no evidence either way, the map outputs the prior.
MIN_ROWS = 20
SKILL_SE = 2.0


def row_nll(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each row's label ``[n]`` (natural log, probabilities floored at 1e-12).
    ``probs`` ``[n, C]``, ``y`` ``[n]``."""
    return -np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1.0))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of ``y`` (natural log; NaN without rows). ``probs`` ``[n, C]``, ``y`` ``[n]``."""
    if not len(y):
        return float("nan")
    return float(row_nll(probs, y).mean())


def prior_log_loss(prior: np.ndarray, y: np.ndarray) -> float:
    """Log-loss of always predicting ``prior`` on labels ``y``."""
    return log_loss(np.broadcast_to(np.asarray(prior, np.float64), (len(y), len(prior))), y)


@dataclass(frozen=True)
class Calibrator:
    """``p = (1 - weight) * softmax(z / temperature) + weight * prior``.

    ``n`` held-out rows it was fitted on, with their log-loss before (``raw_log_loss``), after
    (``log_loss``) and under the prior (``prior_log_loss``); NaN for an unfitted identity map.
    """

    temperature: float
    weight: float
    prior: tuple[float, ...]
    n: int = 0
    raw_log_loss: float = float("nan")
    log_loss: float = float("nan")
    prior_log_loss: float = float("nan")

    @classmethod
    def fit(cls, z: np.ndarray, y: np.ndarray, prior: np.ndarray) -> Calibrator:
        """Fit ``T`` then ``w`` on held-out log-probabilities ``z`` ``[n, C]`` and labels ``y`` ``[n]``."""
        z, y = np.asarray(z, np.float64), np.asarray(y, np.int64)
        prior = np.asarray(prior, np.float64)
        if z.ndim != 2 or z.shape[0] != len(y) or z.shape[1] != len(prior):
            raise ValueError(f"calibration expected z [n, {len(prior)}] and y [n], got z {z.shape} and y {y.shape}")
        if not np.isfinite(z).all():
            raise ValueError("calibration got non-finite log-probabilities")
        pri = tuple(float(p) for p in prior)
        ll_prior = prior_log_loss(prior, y)
        if len(y) < MIN_ROWS:
            return cls(1.0, 1.0, pri, len(y), float("nan"), ll_prior, ll_prior)
        raw = log_loss(np.exp(log_softmax(z, axis=1)), y)
        t, _ = temperature_nll(z, y)
        scaled = np.exp(log_softmax(z / t, axis=1))

        def nll(w: float) -> float:
            return log_loss((1.0 - w) * scaled + w * prior, y)

        w = float(minimize_scalar(nll, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-4}).x)
        w = 0.0 if nll(0.0) <= nll(w) else w
        ll = nll(w)
        gain = -row_nll((1.0 - w) * scaled + w * prior, y) - np.log(prior[y])
        se = float(gain.std(ddof=1) / np.sqrt(len(y)))
        halves = np.array_split(gain, 2)  # rows come in time order: skill must hold in both halves
        if ll_prior - ll <= max(2.0 / len(y), SKILL_SE * se) or min(h.mean() for h in halves) <= 0:
            w, ll = 1.0, ll_prior
        return cls(t, w, pri, len(y), raw, ll, ll_prior)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[n, C]`` from log-probabilities (or logits) ``z`` ``[n, C]``."""
        prior = np.asarray(self.prior, np.float64)
        if self.weight >= 1.0:
            return np.broadcast_to(prior, np.shape(z)).copy()
        p = np.exp(log_softmax(np.asarray(z, np.float64) / self.temperature, axis=1))
        return (1.0 - self.weight) * p + self.weight * prior

    @property
    def skill(self) -> float:
        """Held-out log-loss skill score ``1 - log_loss / prior_log_loss`` (0: no skill, NaN: unfitted)."""
        return 1.0 - self.log_loss / self.prior_log_loss if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "weight": self.weight, "prior": list(self.prior), "n": self.n,
                "raw_log_loss": _num(self.raw_log_loss), "log_loss": _num(self.log_loss),
                "prior_log_loss": _num(self.prior_log_loss)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        nan = float("nan")
        return cls(float(d["temperature"]), float(d["weight"]), tuple(float(p) for p in d["prior"]), int(d.get("n", 0)),
                   _nan(d.get("raw_log_loss", nan)), _nan(d.get("log_loss", nan)), _nan(d.get("prior_log_loss", nan)))


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
