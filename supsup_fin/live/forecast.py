"""Live forecasts from the registered champion on the latest data, and their storage."""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from supsup_fin.config import Config, MonitorConfig
from supsup_fin.data import LoadedPrices, load_prices
from supsup_fin.errors import DataError, RegistryError
from supsup_fin.live.table import append_forecasts, table_path
from supsup_fin.monitor.novelty import detect_novelty
from supsup_fin.progress import report
from supsup_fin.tracking import connect, load_champion, log_forecasts, payload
from supsup_fin.tracking.model import predict_payload
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)


def champion(cfg: Config, workspace: Workspace) -> tuple[Any, int]:
    """The pyfunc model behind ``models:/<model_name>@champion`` and its version."""
    connect(cfg.tracking, workspace)
    return load_champion(cfg.tracking.model_name)


def forecast_one(
    model: Any, version: int, lp: LoadedPrices, as_of: str | None = None, monitor: MonitorConfig | None = None,
) -> dict[str, Any]:
    """One forecast row for ``lp``'s market made at its last date, or at the close of ``as_of``.

    Keys: market, as_of, target_date, horizon, ``p_<class>``, ``prior_<class>`` (the training
    class frequencies: knowing nothing), signal, expected_return (of the horizon's log return),
    position (the decision layer's recommendation), regime, regime_posterior (dict), masks (dict),
    mode (the gate mode that ran), out_of_distribution, class_edges (the version's edges of the
    market's forward-return classes, so that the row can be scored after the version is gone),
    model_version, source, data_as_of, stale_days.

    With ``as_of`` (``YYYY-MM-DD``) the forecast reads the prices up to that date only: it is the
    forecast a run at that day's close printed (``stale_days`` 0). A date that is not one of the
    market's trading dates raises :class:`DataError` naming the nearest earlier one.

    With ``monitor`` the row also says whether the market is in a regime no mask of it knows:
    ``novel_regime`` is ``"since YYYY-MM-DD"`` when SupSup's rule and the HMM test both fire on
    the rows up to the forecast (:func:`~supsup_fin.monitor.novelty.detect_novelty`), else ``""``.
    """
    prices = lp.frame if as_of is None else prices_upto(lp, as_of)
    row = _forecast(model, version, lp, prices, lp.stale_days if as_of is None else 0)
    if monitor is not None:
        row["novel_regime"] = novel_regime(model.unwrap_python_model().forecaster, lp.market, prices, monitor)
    return row


def novel_regime(forecaster: Any, market: str, prices: pd.DataFrame, monitor: MonitorConfig) -> str:
    """``"since YYYY-MM-DD"`` when ``market`` is in a regime none of its masks knows on ``prices``'
    last date (:func:`~supsup_fin.monitor.novelty.detect_novelty`), else ``""`` (also when the
    check is off, ``monitor.novelty.enabled``, or the model holds no novelty reference)."""
    if not monitor.novelty.enabled:
        return ""
    verdict = detect_novelty(forecaster, market, prices, monitor)
    return f"since {verdict['since']}" if verdict["novel"] else ""


def backfill(
    model: Any, version: int, lp: LoadedPrices, n: int, skip: Container[str] = (),
) -> list[dict[str, Any]]:
    """The forecasts the champion makes at the close of each of the last ``n`` dates of ``lp``.

    Each is :func:`forecast_one` with that date as ``as_of`` (the same rows, the same answer):
    causal, from the prices up to its date only. Dates with fewer than the model's ``min_rows``
    rows of history, and those in ``skip`` (``YYYY-MM-DD``: already forecast), are left out.
    Returns the rows oldest first.

    The calling thread's OpenMP (torch's intra-op pool) runs at one thread meanwhile: each
    forecast's network sees one input row, and more threads only contend (250 dates of 3 markets
    on a busy 2-core machine: 121 s with two threads, 18 s with one).
    """
    frame = lp.frame
    days = [i for i in range(max(len(frame) - n, _min_rows(model) - 1), len(frame))
            if str(frame.index[i].date()) not in skip]
    rows = []
    with threadpool_limits(limits=1, user_api="openmp"):
        for done, i in enumerate(days, 1):
            rows.append(_forecast(model, version, lp, frame.iloc[: i + 1], 0))
            if done % _REPORT_EVERY == 0 or done == len(days):
                report("backfill", done, len(days), lp.market)
    return rows


_REPORT_EVERY = 25
"""Backfilled forecasts between two progress reports."""


def prices_upto(lp: LoadedPrices, as_of: str | pd.Timestamp) -> pd.DataFrame:
    """``lp``'s prices up to and including the trading date ``as_of``.

    Raises :class:`DataError` when ``as_of`` is not a date or not one of the market's trading
    dates (naming the nearest earlier one).
    """
    try:
        day = pd.Timestamp(as_of).normalize()
    except ValueError:
        raise DataError(f"as-of date expected YYYY-MM-DD, got {as_of!r}") from None
    index = lp.frame.index
    end = int(index.searchsorted(day, side="right"))
    if end and index[end - 1] == day:
        return lp.frame.iloc[:end]
    where = f"the nearest earlier trading date is {index[end - 1].date()}" if end else \
        f"its prices start on {index[0].date()}"
    raise DataError(f"market {lp.market!r} has no prices on {day.date()}; {where}")


def _min_rows(model: Any) -> int:
    return int((model.metadata.metadata or {})["min_rows"])


def _forecast(model: Any, version: int, lp: LoadedPrices, prices: pd.DataFrame, stale_days: int) -> dict[str, Any]:
    """The champion's forecast at the close of ``prices``' last row (it reads the last ``min_rows``)."""
    out = predict_payload(model, payload(lp.market, prices, _min_rows(model))).iloc[0].to_dict()
    out |= {"class_edges": class_edges(model, lp.market), "model_version": version, "source": lp.source,
            "data_as_of": str(prices.index[-1].date()), "stale_days": stale_days}
    return out


def class_edges(model: Any, market: str) -> list[float]:
    """The loaded pyfunc model's edges of ``market``'s forward-return classes ``[C - 1]``."""
    return model.unwrap_python_model().forecaster.markets[market].class_edges.tolist()


def known_markets(model: Any, version: int, names: list[str]) -> list[str]:
    """``names`` the champion has masks for (a warning for each other one)."""
    known = set((model.metadata.metadata or {}).get("markets", []))
    keep = [n for n in names if not known or n in known]
    for name in sorted(set(names) - set(keep)):
        log.warning("market %r is configured but the champion v%d has no masks for it", name, version)
    return keep


def forecast_markets(
    cfg: Config, workspace: Workspace, markets: list[str] | None = None, as_of: str | None = None,
) -> list[dict[str, Any]]:
    """One forecast per market from ``models:/<model_name>@champion`` (nothing in memory), at each
    market's last date or at the close of ``as_of`` (:func:`forecast_one`).

    ``markets`` asked for by name must be configured (:class:`~supsup_fin.errors.ConfigError`
    listing the configured ones) and known to the champion (:class:`RegistryError` listing its
    markets); without ``markets``, configured markets the champion lacks are skipped with a warning.
    """
    for name in markets or []:
        cfg.market(name)
    model, version = champion(cfg, workspace)
    known = sorted((model.metadata.metadata or {}).get("markets", []))
    lacking = [n for n in markets or [] if known and n not in known]
    if lacking:
        raise RegistryError(f"champion v{version} has no masks for market(s) {lacking}; it knows {known}")
    names = known_markets(model, version, markets or [m.name for m in cfg.markets])
    return [forecast_one(model, version, load_prices(cfg.market(n), cfg.data, workspace.cache_dir), as_of, cfg.monitor)
            for n in names]


def store_forecasts(cfg: Config, workspace: Workspace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Append ``rows`` to the forecasts table and log the new ones in an MLflow run (idempotent).

    Returns ``{"table", "added", "skipped", "run_id"}``; no run is logged when nothing is new.
    """
    added: pd.DataFrame = append_forecasts(workspace, rows)
    run_id = log_forecasts(cfg.tracking, workspace, added) if len(added) else None
    return {"table": str(table_path(workspace)), "added": len(added), "skipped": len(rows) - len(added),
            "run_id": run_id}
