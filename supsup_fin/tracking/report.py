"""The files of a retrain run's ``report/`` folder: tables with a row for every market, figures for a
bounded few, so a retrain of thousands of markets logs a handful of files and not thousands of plots.

Every market: ``regimes.csv`` (its HMM at a glance, and whether it has a plot), ``hmm.json`` (its
fitted parameters), ``health.json`` (its data-health findings), the evaluation and selection tables.
At most :data:`FIGURE_MARKETS` markets: ``regimes_<market>.png`` and the masks in
``mask_inputs.png`` / ``.csv`` and ``mask_overlap.csv``; markets whose HMM fell back to fewer
states or did not converge come first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from supsup_fin._figures import save_png
from supsup_fin.data import LoadedPrices
from supsup_fin.forecaster.evaluate import Evaluation
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.prepare import RegimeFit
from supsup_fin.masks.explain import explain_bank, explain_figure, usage_frame
from supsup_fin.regimes import plot_regimes

FIGURE_MARKETS = 12
"""Markets a retrain run draws figures for (regime plot, mask-input heat maps); every market has its
row in the tables. A regime plot costs about a second, and the heat-map mosaic grows with the masks
(4,000 masks: 170,000 pixels tall, minutes to draw; their pairwise overlaps grow with the square)."""


def figure_markets(regimes: Mapping[str, RegimeFit], limit: int = FIGURE_MARKETS) -> list[str]:
    """The markets that get figures, at most ``limit``: those whose HMM fell back to fewer states
    than asked or did not converge first, then the others, each group in ``regimes`` order."""
    def looked_at_first(market: str) -> bool:
        model = regimes[market].model
        return bool(model.fallback_reason_) or not model.converged_

    return sorted(regimes, key=lambda m: not looked_at_first(m))[:limit]


def _joined(values: np.ndarray, fmt: str) -> str:
    return " / ".join(format(float(v), fmt) for v in values)


def regime_table(regimes: Mapping[str, RegimeFit], plotted: list[str]) -> pd.DataFrame:
    """One row per market: its HMM's states (names, share of the training rows, expected duration in
    trading days, each ``a / b / c`` in state order), fit (log-likelihood, converged, fallback), the
    regime its latest posterior expects next, and its plot's file name (empty: no plot)."""
    rows = []
    for market, rf in regimes.items():
        model, labels = rf.model, rf.train_labels[rf.train_labels >= 0]
        share = np.bincount(labels, minlength=model.n_states_) / max(len(labels), 1)
        known = rf.next_proba[~np.isnan(rf.next_proba).any(axis=1)]
        last = known[-1] if len(known) else None
        rows.append({
            "market": market, "n_states": model.n_states_, "regimes": " / ".join(model.names_),
            "train_share": _joined(share, ".3f"), "expected_days": _joined(model.expected_durations_, ".1f"),
            "log_likelihood": model.log_likelihood_, "converged": bool(model.converged_),
            "fallback": model.fallback_reason_ or model.fallback_ or "",
            "next_regime": model.names_[int(last.argmax())] if last is not None else "",
            "next_regime_proba": float(last.max()) if last is not None else float("nan"),
            "plot": f"regimes_{market}.png" if market in plotted else "",
        })
    return pd.DataFrame(rows)


def _tables(forecaster: RegimeGatedForecaster) -> dict[str, pd.DataFrame]:
    """The selection, calibration and per-mask figures as tables (``report/<name>.csv``)."""
    selection, calibration = [], []
    for market, mm in forecaster.markets.items():
        sel = mm.selection or {}
        selection += [{"market": market, "mode": mode, "log_loss": v, "prior_log_loss": sel.get("prior_log_loss"),
                       "n_holdout": sel.get("n_holdout"), "chosen": mode == mm.mode}
                      for mode, v in sel.get("log_loss", {}).items()]
        calibration += [{"market": market, "map": key, "temperature": cal.temperature, "prior_weight": cal.weight}
                        for key, cal in mm.calibrators.items()]
    keys = ("n_train", "selected_step", "steps", "carried_from", "device")
    masks = [{"task": t, **{k: forecaster.bank.meta(t).get(k) for k in keys}} for t in forecaster.bank.names]
    return {"selection": pd.DataFrame(selection), "calibration": pd.DataFrame(calibration),
            "masks": pd.DataFrame(masks)}


def write_report(folder: Path, loaded: Mapping[str, LoadedPrices], regimes: Mapping[str, RegimeFit],
                 evaluation: Evaluation, forecaster: RegimeGatedForecaster, plotted: list[str]) -> None:
    """Write the report files (see the module docstring) into ``folder``, figures for the markets
    ``plotted`` (:func:`figure_markets`)."""
    for market in plotted:
        plot_regimes(loaded[market].frame, regimes[market].model, folder / f"regimes_{market}.png", title=market)
    regime_table(regimes, plotted).to_csv(folder / "regimes.csv", index=False)
    (folder / "hmm.json").write_text(json.dumps({m: rf.model.to_dict() for m, rf in regimes.items()}, indent=1))
    health = [record for lp in loaded.values() for record in lp.health.to_records()]
    (folder / "health.json").write_text(json.dumps(health, indent=1, default=str))
    evaluation.tasks.to_csv(folder / "eval_tasks.csv", index=False)
    evaluation.markets.to_csv(folder / "eval_markets.csv", index=False)
    for table, frame in _tables(forecaster).items():
        frame.to_csv(folder / f"{table}.csv", index=False)
    shown = set(plotted)
    bank = forecaster.bank.subset(t for t in forecaster.bank.names if forecaster.bank.meta(t).get("market") in shown)
    explained = explain_bank(bank, forecaster.feature_names, forecaster.lookback)
    save_png(explain_figure(explained), folder / "mask_inputs.png")
    usage_frame(explained).to_csv(folder / "mask_inputs.csv", index=False)
    pd.DataFrame(explained["overlap"]).to_csv(folder / "mask_overlap.csv", index=False)
    return plotted
