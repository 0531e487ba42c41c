"""From the walk-forward forecasts to positions, returns and the comparison tables.

:func:`run_backtest` is the one call behind the ``backtest`` flow, the CLI and the notebooks:
it runs :func:`~supsup_fin.backtest.engine.run_walk_forward`, fills every strategy's decisions
with costs (:mod:`~supsup_fin.backtest.positions`), combines markets into an equal-risk
portfolio, and scores everything with :mod:`~supsup_fin.backtest.metrics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from supsup_fin.backtest import metrics as mx
from supsup_fin.backtest.continual import continual_mode, continual_table
from supsup_fin.backtest.engine import Forecasts, run_walk_forward
from supsup_fin.backtest.positions import equal_risk_portfolio, simulate
from supsup_fin.backtest.strategies import SUPSUP
from supsup_fin.config import Config

log = logging.getLogger(__name__)

PORTFOLIO = "portfolio"
"""The ``market`` of the equal-risk portfolio's rows."""

TABLE_COLUMNS = ("sharpe", "sharpe_lo", "sharpe_hi", "psr", "dsr", "sortino", "ann_return", "ann_vol",
                 "max_drawdown", "calmar", "hit_rate", "turnover", "accuracy", "log_loss", "brier", "days",
                 "flat_missing")


@dataclass
class BacktestResult:
    """A walk-forward backtest's outputs.

    ``daily``: one row per (market, strategy, date) with the forecast columns (``flat_missing``: the
    decision is flat because the strategy had no finite forecast that day), ``decision``,
    ``position`` (held after the close), ``exposure`` (the position behind the day's return),
    ``held_regime`` (the regime at the decision behind it), ``trade``, ``cost``, ``gross``, ``ret``, ``equity``;
    ``portfolio``: the equal-risk portfolio per strategy (``gross``, ``trade``, ``cost``, ``ret``,
    ``equity``, ``w_<market>``; costs on its own rebalancing trades);
    ``table``: strategies x metrics per market and for the portfolio, after costs, with
    ``flat_missing`` (decision days flat for want of a forecast; the portfolio's: over its markets);
    ``per_regime``: the same metrics by the HMM regime behind each held position;
    ``calibration``: reliability per strategy (markets pooled); ``continual``: average accuracy,
    BWT and forgetting across windows of the gated masks and of the fine-tuned dense net;
    ``storage``: bytes per model family; ``windows``: one row per refit.
    """

    daily: pd.DataFrame
    portfolio: pd.DataFrame
    table: pd.DataFrame
    per_regime: pd.DataFrame
    calibration: pd.DataFrame
    continual: pd.DataFrame
    storage: pd.DataFrame
    windows: pd.DataFrame
    forecasts: Forecasts

    def comparison(self, market: str | None = None, columns: tuple[str, ...] = TABLE_COLUMNS) -> pd.DataFrame:
        """The comparison table (strategies x metrics) of one market, or all rows."""
        t = self.table if market is None else self.table.xs(market, level="market")
        return t[[c for c in columns if c in t.columns]]


def run_backtest(cfg: Config, prices: dict[str, pd.DataFrame]) -> BacktestResult:
    """Walk forward over ``prices`` (market -> frame) as ``cfg.backtest`` says, and score it."""
    fc = run_walk_forward(cfg, prices)
    return summarise(fc, cfg, prices)


def summarise(fc: Forecasts, cfg: Config, prices: dict[str, pd.DataFrame]) -> BacktestResult:
    """Positions, returns, portfolio and tables from a walk-forward's forecasts."""
    bt = cfg.backtest
    pcols = [f"p_{c}" for c in fc.classes]
    daily_parts, sims = [], {}
    for (market, strategy), rows in fc.rows.groupby(["market", "strategy"], sort=True):
        rows = rows.sort_values("date").set_index("date")
        sim = simulate(rows["decision"].rename(f"{market}/{strategy}"), fc.closes[market].reindex(rows.index),
                       bt.cost_bps, bt.slippage_bps)
        part = pd.concat([rows.drop(columns="decision"), sim], axis=1)
        part["held_regime"] = part["regime"].shift(2)
        daily_parts.append(part.reset_index())
        sims.setdefault(strategy, {})[market] = sim
    daily = pd.concat(daily_parts, ignore_index=True)
    markets = sorted(fc.closes)
    portfolio = pd.concat(
        [equal_risk_portfolio({m: s["gross"] for m, s in by_m.items()}, {m: s["position"] for m, s in by_m.items()},
                              fc.asset_returns, bt.vol_window, bt.cost_bps, bt.slippage_bps)
         .assign(strategy=strategy).rename_axis("date").reset_index()
         for strategy, by_m in sorted(sims.items()) if sorted(by_m) == markets],
        ignore_index=True)
    table = _table(daily, portfolio, pcols, bt.bootstrap)
    return BacktestResult(
        daily=daily, portfolio=portfolio, table=table, per_regime=_per_regime(daily, pcols),
        calibration=_calibration(daily, pcols, fc.classes), continual=_continual(fc, cfg),
        storage=_storage_table(fc), windows=pd.DataFrame(fc.window_log), forecasts=fc,
    )


def _forecast_scores(rows: pd.DataFrame, pcols: list[str]) -> dict[str, float]:
    probs = rows[pcols].to_numpy()
    known = np.isfinite(probs).all(axis=1) & (rows["y"].to_numpy() >= 0)
    if not known.any():
        return {}
    return mx.forecast_metrics(probs[known], rows["y"].to_numpy()[known])


def _table(daily: pd.DataFrame, portfolio: pd.DataFrame, pcols: list[str], n_boot: int) -> pd.DataFrame:
    records = []
    groups = [(m, s, g.set_index("date")) for (m, s), g in daily.groupby(["market", "strategy"], sort=True)]
    groups += [(PORTFOLIO, s, g.set_index("date")) for s, g in portfolio.groupby("strategy", sort=True)]
    trials: dict[str, list[float]] = {}
    for market, _, g in groups:
        trials.setdefault(market, []).append(mx.daily_sharpe(g["ret"]))
    for market, strategy, g in groups:
        pos = g.get("exposure")
        rec = {"market": market, "strategy": strategy, **mx.return_metrics(g["ret"], pos)}
        rec["sharpe_lo"], rec["sharpe_hi"] = mx.sharpe_ci(g["ret"], n_boot=n_boot)
        rec["psr"] = mx.probabilistic_sharpe(g["ret"])
        rec["dsr"] = mx.deflated_sharpe(g["ret"], trials[market])
        src = g if market != PORTFOLIO else daily[daily.strategy == strategy]
        rec |= {k: v for k, v in _forecast_scores(src, pcols).items() if k != "n"}
        rec["flat_missing"] = int(src["flat_missing"].sum())
        records.append(rec)
    return pd.DataFrame(records).set_index(["market", "strategy"]).sort_index()


def _per_regime(daily: pd.DataFrame, pcols: list[str]) -> pd.DataFrame:
    parts = []
    for (market, strategy), g in daily.groupby(["market", "strategy"], sort=True):
        g = g.dropna(subset=["held_regime"])
        if g.empty:
            continue
        probs = pcols if np.isfinite(g[pcols].to_numpy()).any() else None
        t = mx.metrics_by_group(g, "held_regime", positions="exposure", probs=probs, target="y" if probs else None)
        parts.append(t.assign(market=market, strategy=strategy).rename_axis("regime").reset_index())
    return pd.concat(parts, ignore_index=True).set_index(["market", "strategy", "regime"]) if parts else pd.DataFrame()


def _calibration(daily: pd.DataFrame, pcols: list[str], classes: list[str]) -> pd.DataFrame:
    parts = []
    for strategy, g in daily.groupby("strategy", sort=True):
        probs, y = g[pcols].to_numpy(), g["y"].to_numpy()
        ok = np.isfinite(probs).all(axis=1) & (y >= 0)
        if ok.sum():
            parts.append(mx.calibration_table(probs[ok], y[ok], classes=classes).assign(strategy=strategy))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _continual(fc: Forecasts, cfg: Config) -> pd.DataFrame:
    """Average accuracy, BWT and forgetting across windows of the gated masks and the fine-tuned
    dense net (see :mod:`supsup_fin.backtest.continual`)."""
    return continual_table(sorted(fc.closes), {f"{SUPSUP}_{continual_mode(cfg)}": fc.mask_acc,
                                               "dense_finetune": fc.dense_finetune_acc})


def _storage_table(fc: Forecasts) -> pd.DataFrame:
    return pd.DataFrame.from_dict(fc.storage, orient="index").rename_axis("model")
