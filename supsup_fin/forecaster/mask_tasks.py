"""Tasks: the (market, regime) and (market, ALL) training sets that each get a supermask.

A task is named ``market/regime`` or ``market/ALL``. Training rows come from the ``train``
segment; a regime task takes the rows whose smoothed regime is that regime. A regime with
fewer than ``training.min_task_rows`` rows gets no mask: the forecaster falls back to the
market's ALL mask there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from supsup_fin.config import Config
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit

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
    """One supermask's training set: ``X`` ``[n, in]`` float32, ``y`` ``[n]`` int64."""

    name: str
    market: str
    regime: str
    X: np.ndarray
    y: np.ndarray
    meta: dict = field(default_factory=dict)


def make_tasks(
    features: dict[str, FeatureSet], regimes: dict[str, RegimeFit], cfg: Config
) -> list[Task]:
    """Every market's regime tasks and its ALL task, in a stable order (market, regime, ALL)."""
    cfg_hash = training_config_hash(cfg)
    tasks: list[Task] = []
    for market in sorted(features):
        fs, rf = features[market], regimes[market]
        rows = fs.rows("train")
        rows = rows[rf.train_labels[rows] >= 0]
        groups = [(name, rows[rf.train_labels[rows] == k]) for k, name in enumerate(rf.names)]
        groups.append((ALL, rows))
        for regime, idx in groups:
            if regime != ALL and len(idx) < cfg.training.min_task_rows:
                log.warning(
                    "%s: regime %r has %d training rows (< min_task_rows %d): no mask, ALL is used",
                    market, regime, len(idx), cfg.training.min_task_rows,
                )
                continue
            X, y = fs.X[idx], fs.y[idx]
            meta = {
                "market": market, "regime": regime,
                "train_start": str(fs.dates[idx[0]].date()), "train_end": str(fs.dates[idx[-1]].date()),
                "data_hash": _digest(X, y), "config_hash": cfg_hash,
            }
            tasks.append(Task(task_name(market, regime), market, regime, X, y, meta))
    return tasks
