"""The forecaster as an MLflow pyfunc model: payload layout, signature, logging."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ColSpec, Schema

from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster

log = logging.getLogger(__name__)

MODEL_FILE = Path(__file__).with_name("_pyfunc_model.py")
OPTIONAL_COLUMNS = ("open", "high", "low", "volume")


def payload(market: str, prices: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The pyfunc input for one market: its last ``rows`` rows as ``market, date, close, ...``."""
    frame = prices.iloc[-rows:].reset_index()
    frame.insert(0, "market", market)
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return frame[["market", "date", "close", *[c for c in OPTIONAL_COLUMNS if c in frame.columns]]]


def forecasts_from_payload(forecaster: RegimeGatedForecaster, frame: pd.DataFrame) -> pd.DataFrame:
    """One forecast row per market in ``frame`` (the pyfunc input layout)."""
    missing = [c for c in ("market", "date", "close") if c not in frame.columns]
    if missing:
        raise DataError(f"payload needs columns market, date, close; missing {missing} (got {list(frame.columns)})")
    out = []
    for market, rows in frame.groupby("market", sort=False):
        try:
            dates = pd.to_datetime(rows["date"])
        except (ValueError, TypeError) as err:
            raise DataError(f"market {market!r}: column 'date' is not parseable as dates: {err}") from None
        cols = ["close", *[c for c in OPTIONAL_COLUMNS if c in rows.columns and rows[c].notna().all()]]
        prices = pd.DataFrame(
            {c: pd.to_numeric(rows[c], errors="coerce").to_numpy("float64") for c in cols},
            index=pd.DatetimeIndex(dates, name="date"),
        )
        f = forecaster.predict(str(market), prices)
        out.append({
            "market": f["market"], "as_of": f["as_of"], "target_date": f["target_date"], "horizon": f["horizon"],
            **{f"p_{c}": p for c, p in f["probabilities"].items()},
            **{f"prior_{c}": p for c, p in f["prior"].items()},
            "signal": f["signal"], "expected_return": f["expected_return"], "position": f["position"],
            "regime": f["regime"],
            "regime_posterior": json.dumps(f["regime_posterior"]), "masks": json.dumps(f["masks"]),
            "mode": f["mode"],
        })
    return pd.DataFrame(out)


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
        ColSpec("string", "masks"), ColSpec("string", "mode"),
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
