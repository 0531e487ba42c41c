"""Tasks: the (market, regime) and (market, ALL) training sets that each get a supermask.

A task is named ``market/regime`` or ``market/ALL``. Training rows come from the ``train``
segment before its selection slice (see :mod:`~supsup_fin.forecaster.selection`); a regime
task takes the rows whose smoothed regime is that regime. A regime with fewer than
``training.min_task_rows`` rows gets no mask: the forecaster falls back to the market's ALL
mask there. Each task also carries its held-out rows (``X_holdout``, ``y_holdout``), empty when
``training.holdout_fraction`` is 0.

A task's metadata also names the device its mask trains on (:func:`device_label`): a mask's bits
depend on it, so a mask trained on one device is never carried over as if another had trained it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from supsup_fin.config import DEVICE_PATTERN, Config, RuntimeConfig
from supsup_fin.errors import ConfigError
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit
from supsup_fin.forecaster.selection import regime_rows, selection_split

log = logging.getLogger(__name__)

ALL = "ALL"
DEVICES = "auto, cpu, cuda or cuda:N"
"""The values ``runtime.device`` accepts."""
_DEVICE = re.compile(DEVICE_PATTERN)  # checked again here: model_copy skips the config's validation


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


def training_device(runtime: RuntimeConfig) -> torch.device:
    """The device ``runtime.device`` names; ``auto`` is ``cuda`` when torch sees a CUDA device, else ``cpu``.

    Raises :class:`~supsup_fin.errors.ConfigError` for a name other than :data:`DEVICES`, and for
    ``cuda`` (``cuda:N``) when torch sees no CUDA device (no device ``N``).
    """
    name = runtime.device
    match = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ConfigError(f"runtime.device: expected {DEVICES}, got {name!r}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not cuda:
        raise ConfigError(f"runtime.device is {name!r} but torch sees no CUDA device; use cpu or auto")
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise ConfigError(f"runtime.device is {name!r} but torch sees {count} CUDA device(s), cuda:0 to "
                          f"cuda:{count - 1}; use one of them, cpu or auto")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """What a mask's bits depend on of the device it trained on: ``cpu``, or ``cuda`` with the GPU's
    name (``cuda (NVIDIA H200)``; the index is left out: the same GPU model gives the same bits)."""
    if device.type != "cuda":
        return device.type
    return f"cuda ({torch.cuda.get_device_name(device)})"


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
    """Every market's regime tasks and its ALL task, in a stable order (market, regime, ALL); each
    task's ``meta`` holds its market, regime, dates, data and config hashes and ``device`` (the
    :func:`device_label` of the device ``runtime.device`` names)."""
    cfg_hash = training_config_hash(cfg)
    device = device_label(training_device(cfg.runtime))
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
                "device": device,
            }
            if len(hold):
                meta.update(holdout_start=str(fs.dates[split.holdout[0]].date()),
                            holdout_end=str(fs.dates[split.holdout[-1]].date()))
            tasks.append(Task(task_name(market, regime), market, regime, X, y, meta, Xh, yh))
    return tasks
