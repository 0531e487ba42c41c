"""Tasks: the (market, regime) and (market, ALL) training sets that each get a supermask.

A task is named ``market/regime`` or ``market/ALL``. Training rows come from the ``train``
segment before its selection slice (see :mod:`~supsup_fin.forecaster.selection`); a regime
task takes the rows whose smoothed regime is that regime. A regime with fewer than
``training.min_task_rows`` rows gets no mask: the forecaster falls back to the market's ALL
mask there. Each task also carries its held-out rows (``X_holdout``, ``y_holdout``), empty when
``training.holdout_fraction`` is 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from supsup_fin.config import Config
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit
from supsup_fin.forecaster.selection import regime_rows, selection_split

log = logging.getLogger(__name__)

ALL = "ALL"


def task_name(market: str, regime: str) -> str:
    """``market/regime``."""
    return f"{market}/{regime}"


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def training_config_hash(cfg: Config) -> str:
    """Hash of every config section a mask's training depends on."""
    parts = {k: cfg.model_dump(mode="json")[k] for k in ("features", "network", "masks", "training")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Task:
    """One supermask's training set: ``X`` ``[n, in]`` float32, ``y`` ``[n]`` int64, and its held-out
    rows ``X_holdout`` ``[m, in]``, ``y_holdout`` ``[m]`` (``m = 0``: no selection slice)."""

    name: str
    market: str
    regime: str
    X: np.ndarray
    y: np.ndarray
    meta: dict = field(default_factory=dict)
    X_holdout: np.ndarray | None = None
    y_holdout: np.ndarray | None = None


def make_tasks(
    features: dict[str, FeatureSet], regimes: dict[str, RegimeFit], cfg: Config
) -> list[Task]:
    """Every market's regime tasks and its ALL task, in a stable order (market, regime, ALL)."""
    cfg_hash = training_config_hash(cfg)
    purge = cfg.features.horizon + cfg.features.lookback
    tasks: list[Task] = []
    for market in sorted(features):
        fs, rf = features[market], regimes[market]
        split = selection_split(fs.rows("train"), cfg.training.holdout_fraction, purge, market)
        rows = split.fit[rf.train_labels[split.fit] >= 0]
        groups = [(name, k, rows[rf.train_labels[rows] == k]) for k, name in enumerate(rf.names)]
        groups.append((ALL, None, rows))
        for regime, k, idx in groups:
            if regime != ALL and len(idx) < cfg.training.min_task_rows:
                log.warning(
                    "%s: regime %r has %d training rows (< min_task_rows %d): no mask, ALL is used",
                    market, regime, len(idx), cfg.training.min_task_rows,
                )
                continue
            hold = regime_rows(split.holdout, rf.next_proba, k)
            X, y, Xh, yh = fs.X[idx], fs.y[idx], fs.X[hold], fs.y[hold]
            meta = {
                "market": market, "regime": regime,
                "train_start": str(fs.dates[idx[0]].date()), "train_end": str(fs.dates[idx[-1]].date()),
                "data_hash": _digest(X, y, Xh, yh) if len(hold) else _digest(X, y), "config_hash": cfg_hash,
            }
            if len(hold):
                meta.update(holdout_start=str(fs.dates[split.holdout[0]].date()),
                            holdout_end=str(fs.dates[split.holdout[-1]].date()))
            tasks.append(Task(task_name(market, regime), market, regime, X, y, meta, Xh, yh))
    return tasks
