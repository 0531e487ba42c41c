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
from mlflow.types.schema import ColSpec, Schema

from supsup_fin.data.frame import validate_frame
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster

log = logging.getLogger(__name__)

MODEL_FILE = Path(__file__).with_name("_pyfunc_model.py")
OPTIONAL_COLUMNS = ("open", "high", "low", "volume")
MAX_ROWS_PER_MARKET = 2_000
"""Rows of one market a payload may hold (8 years of business days)."""


class PayloadError(MlflowException, DataError):
    """A payload the served model refuses: MLflow's scoring server answers it with a 400, and
    callers of the library catch it as a :class:`DataError`."""


def predict_payload(model: mlflow.pyfunc.PyFuncModel, frame: pd.DataFrame) -> pd.DataFrame:
    """``model.predict(frame)``, a refused payload raised as :class:`DataError` (also by models
    registered before :class:`PayloadError`, whose refusals are plain ``MlflowException``)."""
    try:
        return model.predict(frame)
    except MlflowException as err:
        if isinstance(err, DataError) or err.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise DataError(" ".join(err.message.split())) from None


def payload(market: str, prices: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The pyfunc input for one market: its last ``rows`` rows as ``market, date, close, ...``."""
    frame = prices.iloc[-rows:].reset_index()
    frame.insert(0, "market", market)
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return frame[["market", "date", "close", *[c for c in OPTIONAL_COLUMNS if c in frame.columns]]]


def forecasts_from_payload(forecaster: RegimeGatedForecaster, frame: pd.DataFrame) -> pd.DataFrame:
    """One forecast row per market in ``frame`` (the pyfunc input layout).

    Refuses (:class:`DataError`) an empty payload, a row without a market or with a date that is
    not an ISO-8601 string, and more than :func:`max_rows` rows of one market, before any work;
    then each market's rows as :func:`~supsup_fin.data.frame.validate_frame` and
    :meth:`RegimeGatedForecaster.predict` do.
    """
    missing = [c for c in ("market", "date", "close") if c not in frame.columns]
    if missing:
        raise DataError(f"payload needs columns market, date, close; missing {missing} (got {list(frame.columns)})")
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
            "regime_posterior": json.dumps(f["regime_posterior"]), "masks": json.dumps(f["masks"]),
            "mode": f["mode"], "out_of_distribution": f["out_of_distribution"],
        })
    return pd.DataFrame(out)


def max_rows(forecaster: RegimeGatedForecaster) -> int:
    """Rows of one market a payload may hold: :data:`MAX_ROWS_PER_MARKET`, or the model's
    ``min_rows`` when that is more (``predict`` reads only the last ``min_rows``)."""
    return max(MAX_ROWS_PER_MARKET, forecaster.min_rows)


def signature(classes: list[str]) -> ModelSignature:
    """Input: market rows (OHLV optional); output: one forecast row per market."""
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
        ColSpec("string", "regime"), ColSpec("string", "regime_posterior"),
        ColSpec("string", "masks"), ColSpec("string", "mode"), ColSpec("string", "out_of_distribution"),
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
