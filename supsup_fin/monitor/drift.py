"""Feature and HMM drift: do a market's recent rows still look like its training rows?

Feature drift: each input feature's population stability index (:func:`psi`) over the last
``drift_window`` rows against its training distribution, binned on the training quantiles
stored in the market's reference (:mod:`supsup_fin.monitor.reference`). HMM drift: the recent
mean predictive log-likelihood against its training range (:func:`supsup_fin.monitor.hmm.hmm_check`).
Both read the rows of ``prices`` up to its last date only, so a check at date d is the same
whatever follows d.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.config import MonitorConfig
from supsup_fin.errors import DataError
from supsup_fin.features import feature_warmup
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.monitor.hmm import GRID, hmm_check, reference_quantile
from supsup_fin.monitor.reference import bin_fractions, latest_inputs

NO_REFERENCE = "no training reference: retrain to enable drift checks"
"""The detail of the one row a market without a reference gets (a model built before references)."""

ALERT_KINDS = {"psi": "feature_drift", "hmm": "hmm_drift"}
"""Check -> the kind of alert its breach raises."""


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index ``sum_i (a_i - e_i) ln(a_i / e_i)`` of two binnings of one feature.

    Parameters
    ----------
    expected, actual : ``[B]`` fractions per bin (training, recent), each summing to 1.
    eps : fractions below it count as ``eps``, so an empty bin is a large but finite shift (an
        empty bin that held 10 % of training adds ``(1e-4 - 0.1) ln(1e-3) ~= 0.69``).

    Returns
    -------
    float
        ``>= 0``, 0 for identical fractions. Read by the usual rule of thumb: below 0.1 stable,
        0.1-0.25 a moderate shift, above 0.25 a large one.
    """
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape:
        raise DataError(f"psi: expected two [B] fraction vectors of one length, got shapes {e.shape} and {a.shape}")
    return float(psi_rows(e, a[None, :], eps)[0])


def psi_rows(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """:func:`psi` of each row of ``actual [n, B]`` against ``expected [B]``: ``[n]``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    return np.sum((a - e) * np.log(a / e), axis=1)


def psi_threshold(feature_ref: dict[str, Any], cfg: MonitorConfig) -> float:
    """A feature's alert level: its training range's ``psi_quantile`` quantile (when the reference
    has one for this window), never below ``psi_threshold``."""
    if feature_ref.get("psi_window") != cfg.drift_window or "psi_quantiles" not in feature_ref:
        return cfg.psi_threshold
    own = reference_quantile({"grid": GRID, "quantiles": feature_ref["psi_quantiles"]}, cfg.psi_quantile)
    return max(cfg.psi_threshold, round(own, 6))


def _bin_label(edges: list[float], i: int) -> str:
    if not edges:
        return "all values"
    if i == 0:
        return f"below {edges[0]:.2f}"
    if i == len(edges):
        return f"from {edges[-1]:.2f}"
    return f"{edges[i - 1]:.2f} to {edges[i]:.2f}"


def feature_psi(
    fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, reference: dict[str, Any], window: int,
) -> list[dict[str, Any]]:
    """Each input feature's PSI over the last ``window`` rows of ``prices`` against training.

    The rows' lag-0 scaled features (:meth:`RegimeGatedForecaster.inputs`, causal) are binned on
    the edges stored in ``reference["features"]`` and compared with the stored fractions.

    Returns
    -------
    list of dict
        One per feature, in the forecaster's feature order: ``{"check": "psi", "name", "value",
        "window_start", "window_end", "detail"}``; ``detail`` names the bin that moved most.

    Raises
    ------
    DataError
        ``prices`` has fewer rows than the feature warm-up + lookback + ``window`` need, or the
        reference lacks a feature.
    """
    names = fc.feature_names
    need = feature_warmup(names) + fc.lookback - 1 + window
    X = fc.inputs(market, prices)[-window:]
    if len(prices) < need or not np.isfinite(X).all():
        raise DataError(f"market {market!r}: the feature drift check needs {need} rows of prices (feature warm-up "
                        f"+ lookback {fc.lookback} + window {window}) with complete inputs, got {len(prices)}")
    missing = [n for n in names if n not in reference["features"]]
    if missing:
        raise DataError(f"market {market!r}: the training reference has no bins for features {missing}")
    recent = latest_inputs(X, len(names))
    start, end = str(prices.index[-window].date()), str(prices.index[-1].date())
    out = []
    for name, col in zip(names, recent.T):
        ref = reference["features"][name]
        expected, actual = np.asarray(ref["fractions"]), bin_fractions(col, ref["edges"])
        value = psi(expected, actual)
        moved = int(np.argmax(np.abs(actual - expected)))
        out.append({
            "check": "psi", "name": name, "value": round(value, 6), "window_start": start, "window_end": end,
            "detail": f"PSI {value:.3f} of the last {window} rows in {len(expected)} training-quantile bins; "
                      f"the bin {_bin_label(ref['edges'], moved)} (scaled) holds {actual[moved]:.0%} (training "
                      f"{expected[moved]:.0%})",
        })
    return out


def drift_checks(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, cfg: MonitorConfig) -> list[dict[str, Any]]:
    """Every drift check of ``market`` on the last rows of ``prices``.

    Returns
    -------
    list of dict
        One row per input feature (``check`` ``"psi"``, breached at or above its
        :func:`psi_threshold`: the ``cfg.psi_quantile`` quantile of its PSI on training windows,
        at least ``cfg.psi_threshold``) and the HMM row (``check`` ``"hmm"``, breached below the
        ``cfg.hmm_quantile`` quantile of its training range), each ``{"market", "check", "name",
        "value", "threshold", "breach", "window_start", "window_end", "detail"}``. A model
        without a reference gives one row, ``check`` ``"reference"``, never breached.
    """
    mm = fc.market_model(market)
    if not mm.reference:
        return [{"market": market, "check": "reference", "name": "reference", "value": None, "threshold": None,
                 "breach": False, "window_start": None, "window_end": None, "detail": NO_REFERENCE}]
    rows = []
    for r in feature_psi(fc, market, prices, mm.reference, cfg.drift_window):
        threshold = psi_threshold(mm.reference["features"][r["name"]], cfg)
        rows.append({"market": market, "check": "psi", "name": r["name"], "value": r["value"],
                     "threshold": threshold, "breach": bool(r["value"] >= threshold), "window_start": r["window_start"],
                     "window_end": r["window_end"], "detail": r["detail"]})
    rows.append({"market": market, **hmm_check(mm.regime, prices, mm.reference["hmm"], cfg.hmm_quantile)})
    return rows


def _message(row: dict[str, Any]) -> str:
    window = f"over {row['window_start']}..{row['window_end']}"
    if row["check"] == "psi":
        return (f"Market {row['market']!r}: input feature {row['name']!r} drifted from its training distribution "
                f"(PSI {row['value']:.3f} >= {row['threshold']:g}) {window}.")
    return (f"Market {row['market']!r}: the HMM explains recent rows worse than in training (mean predictive "
            f"log-likelihood {row['value']:.3f} < {row['threshold']:.3f}) {window}.")


def drift_alerts(rows: list[dict[str, Any]], model_version: int) -> list[dict[str, Any]]:
    """The alerts of the breached rows of :func:`drift_checks`.

    Returns
    -------
    list of dict
        ``{"kind": "feature_drift" | "hmm_drift", "market", "model_version", "as_of" (the
        window's last date), "value", "threshold", "message", "check"}`` per breach, in row order
        (``check``: the feature, or ``log_likelihood``; the alerts table keys on it).
    """
    return [
        {"kind": ALERT_KINDS[r["check"]], "market": r["market"], "model_version": int(model_version),
         "as_of": r["window_end"], "value": r["value"], "threshold": r["threshold"], "message": _message(r),
         "check": r["name"]}
        for r in rows if r["breach"]
    ]
