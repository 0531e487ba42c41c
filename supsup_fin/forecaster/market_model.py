"""One market's part of the gated forecaster: scaler, class edges and prior, HMM, masks, maps.

A :class:`MarketModel` is what :class:`~supsup_fin.forecaster.gating.RegimeGatedForecaster`
holds per market and what ``forecaster.json`` stores under ``markets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from supsup_fin.decision import ClassReturns
from supsup_fin.errors import DataError
from supsup_fin.features import Scaler
from supsup_fin.forecaster.calibration import Calibrator
from supsup_fin.regimes import RegimeModel


SOFT = "soft"
"""Key of a market's calibration map for the ``soft`` superposition (mask names hold a ``/``)."""
INFER = "infer:"
"""Prefix of the keys of the maps ``infer`` uses: a mask calibrated on the rows task inference routes to it."""


@dataclass(frozen=True)
class MarketModel:
    """Everything market-specific: scaler, class edges, prior, HMM and the regime -> mask map.

    Fitted on held-out rows (absent in models built without a selection slice):
    ``calibrators`` (mask name, or :data:`SOFT`, -> map), ``mode`` (the gate mode ``auto``
    chose) and ``selection`` (held-out scores behind those choices). ``class_returns``: each
    class's forward-return mean and variance on training rows, for the decision layer.
    ``reference``: what monitoring compares live rows with, computed on training rows
    (:mod:`supsup_fin.monitor.reference`; empty in models built before it existed).
    """

    name: str
    scaler: Scaler
    class_edges: np.ndarray
    prior: np.ndarray
    regime: RegimeModel
    masks: dict[str, str]
    all_mask: str
    class_returns: ClassReturns | None = None
    calibrators: dict[str, Calibrator] = field(default_factory=dict)
    mode: str | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "scaler": self.scaler.to_dict(), "class_edges": self.class_edges.tolist(),
            "prior": self.prior.tolist(), "regime": self.regime.to_dict(),
            "masks": self.masks, "all_mask": self.all_mask,
        }
        if self.class_returns is not None:
            out["class_returns"] = self.class_returns.to_dict()
        if self.calibrators:
            out["calibrators"] = {k: c.to_dict() for k, c in self.calibrators.items()}
        if self.mode is not None:
            out["mode"] = self.mode
        if self.selection:
            out["selection"] = self.selection
        if self.reference:
            out["reference"] = self.reference
        return out

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> MarketModel:
        """Rebuild from :meth:`to_dict`; parameters out of range raise :class:`DataError` naming
        the market and the field (a changed digit must not silently change forecasts)."""
        cr = d.get("class_returns")
        _check_parameters(name, d)
        return cls(
            name=name, scaler=Scaler.from_dict(d["scaler"]),
            class_edges=np.asarray(d["class_edges"], np.float64), prior=np.asarray(d["prior"], np.float64),
            regime=RegimeModel.from_dict(d["regime"], market=name), masks=dict(d["masks"]), all_mask=d["all_mask"],
            class_returns=None if cr is None else ClassReturns.from_dict(cr),
            calibrators={k: Calibrator.from_dict(c) for k, c in d.get("calibrators", {}).items()},
            mode=d.get("mode"), selection=dict(d.get("selection", {})), reference=dict(d.get("reference", {})),
        )

    def gate_mode(self, default: str) -> str:
        """The mode this market runs under the forecaster's ``default`` (``auto``: its chosen one)."""
        if default != "auto":
            return default
        if self.mode is None:
            raise ValueError(f"market {self.name!r}: gate mode 'auto' needs a mode chosen on held-out rows; "
                             "this model has none (trained without a selection slice)")
        return self.mode


def _check_parameters(name: str, d: dict[str, Any]) -> None:
    """Sanity of the stored scaler, class edges and prior (the HMM checks its own)."""

    def bad(field: str, why: str) -> DataError:
        return DataError(f"market {name!r}: {field} {why}")

    mean = np.asarray(d["scaler"]["mean"], np.float64)
    std = np.asarray(d["scaler"]["std"], np.float64)
    if mean.shape != std.shape or mean.ndim != 1:
        raise bad("scaler", f"mean and std must be vectors of one length, got {mean.shape} and {std.shape}")
    if not np.isfinite(mean).all():
        raise bad("scaler.mean", f"must be finite, got {mean[~np.isfinite(mean)][0]} at position {int(np.flatnonzero(~np.isfinite(mean))[0])}")
    if not (np.isfinite(std) & (std > 0)).all():
        i = int(np.flatnonzero(~(np.isfinite(std) & (std > 0)))[0])
        raise bad("scaler.std", f"must be positive and finite, got {std[i]} at position {i}")
    edges = np.asarray(d["class_edges"], np.float64)
    if not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise bad("class_edges", f"must be finite and strictly increasing, got {edges.tolist()}")
    prior = np.asarray(d["prior"], np.float64)
    if prior.shape != (len(edges) + 1,) or not np.isfinite(prior).all() or (prior < 0).any() \
            or abs(prior.sum() - 1.0) > 1e-6:
        raise bad("prior", f"must be {len(edges) + 1} non-negative probabilities summing to 1, got {prior.tolist()}")
