"""The decision layer: class probabilities -> expected forward return and variance -> a position.

Each class ``c`` of the ``horizon``-day forward log return has a mean ``m_c`` and a variance
``v_c`` measured on the fit's training rows (:class:`ClassReturns`). A forecast ``p`` then
implies the mixture's mean and variance::

    mu  = Σ_c p_c m_c
    var = Σ_c p_c (v_c + m_c²) - mu²

and the ``kelly`` rule holds ``fraction · mu / var`` (the growth-optimal fraction for a return
of mean ``mu`` and variance ``var``, scaled down), capped at ``±cap`` and at the exposure whose
predicted annualised volatility is ``target_vol`` (``sqrt(var / horizon · 252)`` per unit).
Better-calibrated probabilities earn more under this rule; over-confident ones are sized up
and lose. The threshold rules (``sign``, ``proportional``) read ``signal = p_up - p_down``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TRADING_DAYS = 252


@dataclass(frozen=True)
class ClassReturns:
    """Per-class mean and variance of the forward log return, ``[C]`` each (training rows)."""

    mean: tuple[float, ...]
    var: tuple[float, ...]

    @classmethod
    def fit(cls, fwd: np.ndarray, y: np.ndarray, n_classes: int) -> ClassReturns:
        """From forward returns ``fwd`` ``[n]`` and their classes ``y`` ``[n]`` (rows with ``y < 0`` ignored).

        A class without rows gets mean 0 and the pooled variance.
        """
        fwd, y = np.asarray(fwd, np.float64), np.asarray(y, np.int64)
        ok = (y >= 0) & np.isfinite(fwd)
        fwd, y = fwd[ok], y[ok]
        pooled = float(fwd.var()) if len(fwd) > 1 else 0.0
        mean, var = [], []
        for c in range(n_classes):
            r = fwd[y == c]
            mean.append(float(r.mean()) if len(r) else 0.0)
            var.append(float(r.var()) if len(r) > 1 else pooled)
        return cls(tuple(mean), tuple(var))

    def moments(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected forward return and its variance ``[n]`` each, for class probabilities ``[n, C]``."""
        p = np.asarray(probs, np.float64)
        m, v = np.asarray(self.mean), np.asarray(self.var)
        mu = p @ m
        var = p @ (v + m**2) - mu**2
        return mu, np.maximum(var, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "var": list(self.var)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassReturns:
        return cls(tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["var"]))


def kelly_positions(
    mu: np.ndarray, var: np.ndarray, horizon: int, fraction: float, cap: float, target_vol: float | None,
    allow_short: bool = True,
) -> np.ndarray:
    """``clip(fraction · mu / var, ±limit)`` with ``limit = min(cap, target_vol / predicted annual vol)``.

    ``mu``, ``var``: the ``horizon``-day forward return's mean and variance ``[n]``. NaN inputs give 0.
    """
    mu, var = np.asarray(mu, np.float64), np.asarray(var, np.float64)
    raw = fraction * mu / var
    limit = np.full_like(raw, cap)
    if target_vol is not None:
        annual = np.sqrt(var / horizon * TRADING_DAYS)
        limit = np.minimum(limit, target_vol / annual)
    pos = np.clip(raw, -limit, limit)
    if not allow_short:
        pos = np.maximum(pos, 0.0)
    return np.where(np.isfinite(pos), pos, 0.0) + 0.0


def threshold_positions(signal: np.ndarray, rule: str, threshold: float, scale: float, allow_short: bool) -> np.ndarray:
    """``sign``: ±1 where ``|signal| > threshold``, else 0; ``proportional``: ``clip(signal / scale, ±1)``
    beyond the threshold. NaN signals give 0."""
    s = np.nan_to_num(np.asarray(signal, np.float64), nan=0.0)
    active = np.abs(s) > threshold
    pos = np.where(active, np.sign(s) if rule == "sign" else np.clip(s / scale, -1.0, 1.0), 0.0)
    if not allow_short:
        pos = np.maximum(pos, 0.0)
    return pos + 0.0


@dataclass(frozen=True)
class DecisionRule:
    """How a forecast becomes a position (the config's ``backtest.positions``, kept with a model).

    ``kelly``: :func:`kelly_positions` of the forecast's expected return and variance;
    ``sign`` / ``proportional``: :func:`threshold_positions` of ``signal = p_up - p_down``.
    """

    rule: str = "kelly"
    fraction: float = 0.5
    cap: float = 1.0
    target_vol: float | None = 0.15
    allow_short: bool = True
    threshold: float = 0.05
    scale: float = 0.5

    def positions(
        self, probs: np.ndarray, class_returns: ClassReturns | None, horizon: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected ``horizon``-day return (NaN without class returns) and the position, ``[n]`` each,
        for class probabilities ``[n, C]`` (NaN rows give position 0)."""
        p = np.asarray(probs, np.float64)
        mu = np.full(len(p), np.nan)
        if class_returns is not None:
            mu, var = class_returns.moments(p)
        if self.rule == "kelly":
            if class_returns is None:
                raise ValueError("the kelly rule needs each class's mean forward return (class_returns)")
            return mu, kelly_positions(mu, var, horizon, self.fraction, self.cap, self.target_vol, self.allow_short)
        signal = p[:, -1] - p[:, 0]
        return mu, threshold_positions(signal, self.rule, self.threshold, self.scale, self.allow_short)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "fraction": self.fraction, "cap": self.cap, "target_vol": self.target_vol,
                "allow_short": self.allow_short, "threshold": self.threshold, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionRule:
        return cls(**{k: d[k] for k in cls().to_dict() if k in d})
