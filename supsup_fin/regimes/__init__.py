"""Market regimes: a Gaussian HMM per market with causal (filtered) posteriors.

>>> from supsup_fin.regimes import RegimeModel, regime_names, plot_regimes
"""

from __future__ import annotations

from supsup_fin.regimes._canonical import regime_names
from supsup_fin.regimes._fit import RegimeFitError
from supsup_fin.regimes.model import NotFittedError, RegimeModel
from supsup_fin.regimes.plots import plot_regimes

__all__ = ["NotFittedError", "RegimeFitError", "RegimeModel", "plot_regimes", "regime_names"]
