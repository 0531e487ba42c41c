"""The forecaster as an MLflow pyfunc model: payload layout, signature, logging."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, DataType, Map, Schema

from supsup_fin.data.frame import validate_frame
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster

log = logging.getLogger(__name__)

MODEL_FILE = Path(__file__).with_name("_pyfunc_model.py")
OPTIONAL_COLUMNS = ("open", "high", "low", "volume")
MAX_ROWS_PER_MARKET = 2_000
"""Rows of one market a payload may hold (8 years of business days)."""


class PayloadError(MlflowException, DataError):
    """A payload the served model refuses: MLflow's scoring server answers it with a 400 whose
    message is this one sentence, and callers of the library catch it as a :class:`DataError`."""

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE, **kwargs: object) -> None:
        super().__init__(message, error_code=error_code, **kwargs)
        self.reason = message

    def serialize_as_json(self) -> str:
        # the scoring server prefixes ``message`` with a dump of the whole input frame before
        # it serializes the error: the answer keeps the reason alone
        return json.dumps({"error_code": self.error_code, "message": self.reason})


def predict_payload(model: mlflow.pyfunc.PyFuncModel, frame: pd.DataFrame) -> pd.DataFrame:
    """``model.predict(frame)``, a refused payload raised as :class:`DataError` with the reason the
    server gives (models registered before :class:`PayloadError` refuse with a plain ``MlflowException``)."""
    check_payload(frame)
    try:
        return model.predict(frame)
    except MlflowException as err:
        if isinstance(err, DataError) or err.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise DataError(" ".join(err.message.split())) from None


def check_payload(frame: pd.DataFrame) -> None:
    """Refuse (:class:`DataError`) a payload without the columns ``market, date, close``, or
    with a value in ``close`` (or ``open high low volume``) that is not a number, naming the
    market, column, row and date: the checks the model's signature makes, said the same way as
    the model's own."""
    missing = [c for c in ("market", "date", "close") if c not in frame.columns]
    if missing:
        raise DataError(f"payload needs columns market, date, close; missing {missing} (got {list(frame.columns)})")
    for column in ("close", *[c for c in OPTIONAL_COLUMNS if c in frame.columns]):
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            continue
        bad = next((i for i, (v, given) in enumerate(zip(values, values.notna())) if given and not _is_number(v)), None)
        if bad is not None:
            raise DataError(f"market {frame['market'].iloc[bad]!r}: column {column!r} expected a number; "
                            f"row {bad} (date {frame['date'].iloc[bad]}) has {values.iloc[bad]!r}")


def _is_number(value: object) -> bool:
    """Whether ``float(value)`` works, as the signature's conversion of a column to double needs."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def payload(market: str, prices: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The pyfunc input for one market: its last ``rows`` rows as ``market, date, close, ...``."""
    frame = prices.iloc[-rows:].reset_index()
    frame.insert(0, "market", market)
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return frame[["market", "date", "close", *[c for c in OPTIONAL_COLUMNS if c in frame.columns]]]


def forecasts_from_payload(forecaster: RegimeGatedForecaster, frame: pd.DataFrame) -> pd.DataFrame:
    """One forecast row per market in ``frame`` (the pyfunc input layout).

    Refuses (:class:`DataError`) what :func:`check_payload` refuses, an empty payload, a row
    without a market or with a date that is not an ISO-8601 string, and more than
    :func:`max_rows` rows of one market, before any work; then each market's rows as
    :func:`~supsup_fin.data.frame.validate_frame` and :meth:`RegimeGatedForecaster.predict` do.
    ``regime_posterior`` and ``masks`` hold a dict per row.
    """
    check_payload(frame)
    if not len(frame):
        raise DataError(f"payload has no rows; expected at least min_rows={forecaster.min_rows} rows per market")
    markets, dates = frame["market"].tolist(), frame["date"].tolist()
    for i, (market, date) in enumerate(zip(markets, dates)):
        if not (isinstance(market, str) and market):
            raise DataError(f"payload column 'market' expected a market name on every row; row {i} "
                            f"(date {date!r}) has {market!r}")
        if not isinstance(date, str):
            after = next((d for m, d in zip(markets[i - 1::-1], dates[i - 1::-1]) if m == market), None) if i else None
            raise DataError(f"market {market!r}: column 'date' expected YYYY-MM-DD strings; row {i} has {date!r}"
                            + (f" (after {after})" if after else ""))
    limit = max_rows(forecaster)
    counts = frame["market"].value_counts(sort=False)
    if (counts > limit).any():
        market = counts.index[int((counts > limit).argmax())]
        raise DataError(f"market {market!r}: payload has {counts[market]} rows, at most {limit} per market "
                        f"(the model reads the last {forecaster.min_rows})")
    out = []
    for market, rows in frame.groupby("market", sort=False):
        present = [c for c in OPTIONAL_COLUMNS if c in rows.columns and rows[c].notna().all()]
        f = forecaster.predict(market, validate_frame(rows[["date", "close", *present]], market))
        out.append({
            "market": f["market"], "as_of": f["as_of"], "target_date": f["target_date"], "horizon": f["horizon"],
            **{f"p_{c}": p for c, p in f["probabilities"].items()},
            **{f"prior_{c}": p for c, p in f["prior"].items()},
            "signal": f["signal"], "expected_return": f["expected_return"], "position": f["position"],
            "regime": f["regime"],
            "regime_posterior": f["regime_posterior"], "masks": f["masks"],
            "mode": f["mode"], "out_of_distribution": f["out_of_distribution"],
        })
    return pd.DataFrame(out)


def max_rows(forecaster: RegimeGatedForecaster) -> int:
    """Rows of one market a payload may hold: :data:`MAX_ROWS_PER_MARKET`, or the model's
    ``min_rows`` when that is more (``predict`` reads only the last ``min_rows``)."""
    return max(MAX_ROWS_PER_MARKET, forecaster.min_rows)


def signature(classes: list[str]) -> ModelSignature:
    """Input: market rows (OHLV optional); output: one forecast row per market, its
    ``regime_posterior`` (regime -> probability) and ``masks`` (mask -> weight) JSON objects."""
    inputs = Schema([
        ColSpec("string", "market"), ColSpec("string", "date"), ColSpec("double", "close"),
        *[ColSpec("double", c, required=False) for c in OPTIONAL_COLUMNS],
    ])
    outputs = Schema([
        ColSpec("string", "market"), ColSpec("string", "as_of"), ColSpec("string", "target_date"),
        ColSpec("long", "horizon"),
        *[ColSpec("double", f"p_{c}") for c in classes],
        *[ColSpec("double", f"prior_{c}") for c in classes],
        ColSpec("double", "signal"), ColSpec("double", "expected_return"), ColSpec("double", "position"),
        ColSpec("string", "regime"), ColSpec(Map(DataType.double), "regime_posterior"),
        ColSpec(Map(DataType.double), "masks"),
        ColSpec("string", "mode"), ColSpec("string", "out_of_distribution"),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_forecaster(
    forecaster: RegimeGatedForecaster, forecaster_dir: Path, input_example: pd.DataFrame,
    registered_model_name: str,
) -> ModelInfo:
    """Log the forecaster (models-from-code + artifacts) in the active run and register it."""
    return mlflow.pyfunc.log_model(
        name="forecaster",
        python_model=str(MODEL_FILE),
        artifacts={"forecaster": str(forecaster_dir)},
        signature=signature(forecaster.classes),
        input_example=input_example,
        registered_model_name=registered_model_name,
        metadata={"min_rows": forecaster.min_rows, "markets": sorted(forecaster.markets),
                  "horizon": forecaster.horizon, "mode": forecaster.mode},
        pip_requirements=[],
    )
