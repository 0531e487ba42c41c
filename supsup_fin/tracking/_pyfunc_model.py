"""MLflow models-from-code entry: the registered forecaster.

Loads the forecaster artifact (mask bank + JSON spec; the base network is rebuilt from its
seed) and delegates to :class:`supsup_fin.forecaster.gating.RegimeGatedForecaster`. No pickled objects.

Input: rows of ``market``, ``date``, ``close`` (``open high low volume`` optional), at least the
model's ``min_rows`` per market, at most ``MAX_ROWS_PER_MARKET``. Output: one forecast row per
market. A payload the library refuses raises :class:`~supsup_fin.tracking.model.PayloadError`
(a 400 from the scoring server, a ``DataError`` to a Python caller).
"""

import mlflow
import pandas as pd
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from supsup_fin.errors import SupsupError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.tracking.model import PayloadError, forecasts_from_payload


class SupsupForecaster(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        self.forecaster = RegimeGatedForecaster.load(context.artifacts["forecaster"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        try:
            return forecasts_from_payload(self.forecaster, model_input)
        except SupsupError as err:
            raise PayloadError(str(err), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(SupsupForecaster())
