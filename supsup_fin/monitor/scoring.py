"""Scoring matured forecasts against what happened, and each model version's rolling scores.

A forecast made at ``as_of`` for ``horizon`` days matures once its market's prices hold
``horizon`` trading rows after ``as_of``: its realised return is then the ``horizon``-row log
return of :func:`~supsup_fin.features.forward_returns` (the training target's definition), whose
class (by the version's class edges) scores the forecast, next to the class prior it was made
with (knowing nothing).

The scores table, ``<workspace>/forecasts/scores.parquet``, holds one row per scored forecast,
keyed like the forecasts table by (as_of, market, model_version): a forecast is scored once;
appending is idempotent, atomic and locked as the forecasts table's is.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supsup_fin.config import MonitorConfig
from supsup_fin.errors import DataError
from supsup_fin.features import class_names, classify, forward_returns
from supsup_fin.forecaster.calibration import row_nll
from supsup_fin.live.table import KEY
from supsup_fin.live.table import append_keyed
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

SCORES = "scores.parquet"

COLUMNS = (*KEY, "target_date", "horizon", "n_classes", "realised_return", "realised_class", "predicted_class",
           "p_realised", "log_loss", "prior_log_loss", "hit", "prior_hit", "confidence", "position",
           "position_return", "scored_at")
"""Columns of a scored row (see :func:`score_rows`)."""

REQUIRED = (*KEY, "target_date", "horizon", "position")
"""Columns a forecasts frame needs to be scored, besides ``p_<class>`` and ``prior_<class>``."""

SKIP_REASONS = ("no_prices", "not_a_trading_date", "no_edges")
"""Why a forecast is skipped: its market has no prices, its as_of is not a date of them, no class edges."""


def scores_path(ws: Workspace) -> Path:
    """``<workspace>/forecasts/scores.parquet``."""
    return ws.forecasts_dir / SCORES


def read_scores(ws: Workspace) -> pd.DataFrame:
    """The whole scores table (an empty frame with the :data:`COLUMNS` when nothing was scored yet)."""
    path = scores_path(ws)
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=list(COLUMNS))


def score_rows(
    forecasts: pd.DataFrame, prices: dict[str, pd.DataFrame], edges: Callable[[str, int], np.ndarray | None],
) -> pd.DataFrame:
    """Score the forecasts whose horizon has passed in their market's prices (pure: reads and writes nothing).

    Parameters
    ----------
    forecasts : pd.DataFrame, shape (n, k)
        Rows of the forecasts table: :data:`REQUIRED` columns, ``p_<class>`` and ``prior_<class>``,
        and optionally ``class_edges`` (a list, or its JSON, of the version's class edges).
    prices : dict of str to pd.DataFrame
        Per market, its prices frame (trading dates as index, a ``close`` column).
    edges : callable
        ``edges(market, model_version)``: the version's class edges for the market ``[C - 1]``, or
        None; asked (once per pair) only for rows without ``class_edges``.

    Returns
    -------
    pd.DataFrame, shape (n_matured, len(COLUMNS))
        One row per matured forecast: its key and ``target_date``, ``horizon``, ``n_classes``,
        ``realised_return`` (log), ``realised_class`` and ``predicted_class`` (argmax; names),
        ``p_realised``, ``log_loss`` (``-log p_realised``, clipped as
        :func:`~supsup_fin.forecaster.calibration.row_nll` does) and ``prior_log_loss`` (the
        same for the prior), ``hit`` and ``prior_hit`` (the forecast's and the prior's argmax
        was the realised class), ``confidence`` (max p), ``position``, ``position_return``
        (``position * expm1(realised_return)``: the simple return the recommended position
        earned over the horizon, before costs; NaN without a position) and ``scored_at`` (UTC).
        ``attrs["counts"]`` is ``{"matured": int, "pending": int, "skipped": {reason: int}}``,
        with every reason of :data:`SKIP_REASONS`; ``pending`` rows' horizon has not passed yet.

    Raises
    ------
    DataError
        A column is missing, or a row's probabilities do not match its class edges.
    """
    missing = [c for c in REQUIRED if c not in forecasts.columns]
    if missing:
        raise DataError(f"score_rows: the forecasts frame lacks columns {missing} (expected {list(REQUIRED)})")
    edges_of = functools.cache(edges)
    fwd: dict[tuple[str, int], pd.Series] = {}
    scored_at = pd.Timestamp.now(tz="UTC")
    rows, pending, skipped = [], 0, Counter({r: 0 for r in SKIP_REASONS})
    for r in forecasts.to_dict("records"):
        market, version, horizon = str(r["market"]), int(r["model_version"]), int(r["horizon"])
        if market not in prices:
            skipped["no_prices"] += 1
            continue
        if (market, horizon) not in fwd:
            fwd[market, horizon] = forward_returns(prices[market], horizon)
        as_of = _date(r["as_of"], market)
        if as_of not in fwd[market, horizon].index:
            skipped["not_a_trading_date"] += 1
            continue
        realised = float(fwd[market, horizon].loc[as_of])
        if not math.isfinite(realised):
            pending += 1
            continue
        row_edges = _row_edges(r.get("class_edges"))
        row_edges = edges_of(market, version) if row_edges is None else row_edges
        if row_edges is None:
            skipped["no_edges"] += 1
            continue
        rows.append(_score(r, realised, np.asarray(row_edges, np.float64)) | {"scored_at": scored_at})
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    out.attrs["counts"] = {"matured": len(rows), "pending": pending, "skipped": dict(skipped)}
    if skipped.total():
        log.info("scoring: %d matured, %d pending, skipped %s", len(rows), pending, dict(skipped))
    return out


def _date(value: Any, market: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(value)
    except ValueError:
        raise DataError(f"score_rows: a forecast of {market!r} has as_of {value!r}, expected YYYY-MM-DD") from None


def _row_edges(value: Any) -> list[float] | None:
    """A row's ``class_edges``: a list, its JSON, or missing (None, NaN) in rows stored before it existed."""
    if isinstance(value, str):
        return json.loads(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return None


def _score(r: dict[str, Any], realised: float, edges: np.ndarray) -> dict[str, Any]:
    """One matured forecast's scores (every column but ``scored_at``)."""
    where = f"forecast of {r['market']!r} at {r['as_of']} by v{int(r['model_version'])}"
    n_classes = len(edges) + 1
    if n_classes not in (2, 3):
        raise DataError(f"{where}: expected 1 or 2 class edges, got {list(edges)}")
    names = class_names(n_classes)
    p, prior = (np.array([r.get(f"{prefix}{c}", np.nan) for c in names], np.float64) for prefix in ("p_", "prior_"))
    if not (np.isfinite(p).all() and np.isfinite(prior).all()):
        raise DataError(f"{where}: expected finite p_<class> and prior_<class> for its classes {names} "
                        f"(from {n_classes - 1} class edges), got p {p.tolist()} and prior {prior.tolist()}")
    y = int(classify(np.array([realised]), edges)[0])
    position = float(r["position"]) if r["position"] is not None else math.nan
    return {
        "as_of": r["as_of"], "market": r["market"], "model_version": int(r["model_version"]),
        "target_date": r["target_date"], "horizon": int(r["horizon"]), "n_classes": n_classes,
        "realised_return": realised, "realised_class": names[y], "predicted_class": names[int(p.argmax())],
        "p_realised": float(p[y]), "log_loss": float(row_nll(p[None], np.array([y]))[0]),
        "prior_log_loss": float(row_nll(prior[None], np.array([y]))[0]),
        "hit": bool(p.argmax() == y), "prior_hit": bool(prior.argmax() == y), "confidence": float(p.max()),
        "position": position, "position_return": position * math.expm1(realised),
    }


def append_scores(ws: Workspace, scored: pd.DataFrame) -> pd.DataFrame:
    """Append ``scored`` (rows of :func:`score_rows`) to the scores table; returns the rows added.

    A row whose (as_of, market, model_version) is already in the table is skipped, never
    overwritten. The new table is written beside the old one and renamed over it, under a lock
    file beside the table.
    """
    return append_keyed(scores_path(ws), scored.astype({"model_version": "int64"}), KEY, "scores table")


def _round(x: float, digits: int = 6) -> float | None:
    """``x`` rounded, or None where it is undefined (NaN)."""
    return None if pd.isna(x) else round(float(x), digits)


def by_date(scores: pd.DataFrame, last: int | None = None) -> pd.DataFrame:
    """``scores`` oldest first by ``as_of`` (a ``_date`` column added), only the ``last`` rows when given."""
    out = scores.assign(_date=pd.to_datetime(scores["as_of"])).sort_values("_date", kind="stable")
    return out if last is None else out.tail(last)


def rolling_summary(scores: pd.DataFrame, window: int, bins: int) -> list[dict[str, Any]]:
    """Per (market, model_version), the scores of its last ``window`` matured forecasts (by as_of).

    Returns
    -------
    list of dict
        Sorted by market then version, each with ``market``, ``model_version``, ``n``, ``first`` and
        ``last`` (as_of dates, ``YYYY-MM-DD``), the mean ``log_loss`` and ``prior_log_loss``,
        ``gap`` (their difference: negative beats knowing nothing), ``hit_rate``,
        ``prior_hit_rate`` (always predicting the prior's argmax), ``ece`` (:func:`ece`),
        ``mean_position_return`` and ``total_position_return`` (sum; None without positions)
        and ``worse_than_prior`` (``gap > 0``). Floats are rounded to 6 digits.
    """
    if window < 1:
        raise DataError(f"rolling_summary: expected a window of at least 1 forecast, got {window}")
    out = []
    for (market, version), g in scores.groupby(["market", "model_version"], sort=True):
        g = by_date(g, window)
        gap = _round(g["log_loss"].mean() - g["prior_log_loss"].mean())
        positions = g["position_return"].astype(np.float64).dropna()
        out.append({
            "market": str(market), "model_version": int(version), "n": len(g),
            "first": str(g["_date"].iloc[0].date()), "last": str(g["_date"].iloc[-1].date()),
            "log_loss": _round(g["log_loss"].mean()), "prior_log_loss": _round(g["prior_log_loss"].mean()),
            "gap": gap, "hit_rate": _round(g["hit"].astype(np.float64).mean()),
            "prior_hit_rate": _round(g["prior_hit"].astype(np.float64).mean()), "ece": _round(ece(g, bins)),
            "mean_position_return": _round(positions.mean()) if len(positions) else None,
            "total_position_return": _round(positions.sum()) if len(positions) else None,
            "worse_than_prior": bool(gap is not None and gap > 0),
        })
    return out


RELIABILITY_COLUMNS = ("n_classes", "bin", "conf_lo", "conf_hi", "count", "confidence", "accuracy")


def reliability_table(scores: pd.DataFrame, bins: int) -> pd.DataFrame:
    """Top-label reliability: the forecasts' confidence (max p) in ``bins`` equal-width bins on ``[1/C, 1]``.

    Returns
    -------
    pd.DataFrame, shape (bins * number of class counts, 7)
        Per class count ``C`` in the scores (``n_classes``) and bin: ``bin`` (0 ..
        ``bins - 1``), its ``conf_lo`` and ``conf_hi``, ``count`` (forecasts in it), mean
        ``confidence`` and ``accuracy`` (share of hits); NaN means for empty bins.
    """
    if bins < 1:
        raise DataError(f"reliability_table: expected at least 1 bin, got {bins}")
    tables = []
    for n_classes, g in scores.groupby("n_classes", sort=True):
        lo = 1.0 / int(n_classes)
        conf = g["confidence"].to_numpy(np.float64)
        k = np.clip(np.floor((conf - lo) / (1.0 - lo) * bins), 0, bins - 1).astype(np.int64)
        stats = pd.DataFrame({"bin": k, "confidence": conf, "accuracy": g["hit"].to_numpy(np.float64)})
        stats = stats.groupby("bin").agg(count=("confidence", "size"), confidence=("confidence", "mean"),
                                         accuracy=("accuracy", "mean"))
        edges = lo + (1.0 - lo) * np.arange(bins + 1) / bins
        t = stats.reindex(range(bins)).rename_axis("bin").reset_index()
        t["count"] = t["count"].fillna(0).astype(np.int64)
        t.insert(0, "n_classes", int(n_classes))
        t.insert(2, "conf_lo", edges[:-1])
        t.insert(3, "conf_hi", edges[1:])
        tables.append(t)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(RELIABILITY_COLUMNS))


def ece(scores: pd.DataFrame, bins: int) -> float:
    """Top-label expected calibration error ``sum_b n_b / n |accuracy_b - confidence_b|`` over the
    bins of :func:`reliability_table`; NaN without scores."""
    t = reliability_table(scores, bins)
    t = t[t["count"] > 0]
    if t.empty:
        return float("nan")
    gaps = (t["accuracy"] - t["confidence"]).abs().to_numpy(np.float64)
    return float((t["count"].to_numpy(np.float64) * gaps).sum() / t["count"].sum())


def worse_than_prior(summary: list[dict[str, Any]], cfg: MonitorConfig) -> list[dict[str, Any]]:
    """An alert for each (market, version) of :func:`rolling_summary` with at least
    ``cfg.min_matured`` matured forecasts whose log-loss exceeds the prior's by more than
    ``cfg.loss_margin``.

    Each alert: ``kind`` (``"worse_than_prior"``), ``market``, ``model_version``, ``as_of`` (the
    last matured forecast's), ``value`` (the gap), ``threshold`` (the margin) and ``message``.
    """
    return [{
        "kind": "worse_than_prior", "market": s["market"], "model_version": s["model_version"], "as_of": s["last"],
        "value": s["gap"], "threshold": cfg.loss_margin,
        "message": (f"{s['market']} v{s['model_version']}: mean log-loss {s['log_loss']:.4f} over the last "
                    f"{s['n']} matured forecasts is worse than the class prior's {s['prior_log_loss']:.4f} "
                    f"(gap {s['gap']:+.4f}, margin {cfg.loss_margin:g})."),
    } for s in summary if s["n"] >= cfg.min_matured and s["gap"] is not None and s["gap"] > cfg.loss_margin]
