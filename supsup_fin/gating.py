"""Import path of :class:`RegimeGatedForecaster` in registered models logged before the forecaster package.

A registered MLflow model keeps a copy of the model file it was logged with, and older copies import
``supsup_fin.gating``; this name keeps them loadable. New code imports
:mod:`supsup_fin.forecaster.gating`.
"""

from supsup_fin.forecaster.gating import RegimeGatedForecaster

__all__ = ["RegimeGatedForecaster"]
