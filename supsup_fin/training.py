"""Mask training for a set of tasks, and assembly of the gated forecaster.

The library calls behind the retrain flow's ``train masks`` step: one frozen network built
from the config's seed, all tasks' masks trained together in one batched pass.
"""

from __future__ import annotations

import logging

import torch

from supsup_fin import progress
from supsup_fin.config import Config, RuntimeConfig
from supsup_fin.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank, train_masks
from supsup_fin.prepare import FeatureSet, RegimeFit
from supsup_fin.tasks import ALL, Task, task_name

log = logging.getLogger(__name__)


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """``cuda`` when asked for or (``auto``) available, else ``cpu``; applies ``threads``."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device is 'cuda' but torch sees no CUDA device")
    if runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def build_network(cfg: Config, in_dim: int) -> FrozenNet:
    """The frozen base: ``in_dim -> hidden... -> n_classes``, regenerated from the config's seed."""
    return FrozenNet(sizes=(in_dim, *cfg.network.hidden, cfg.features.n_classes), seed=cfg.network.seed)


def train_tasks(tasks: list[Task], cfg: Config, bank: MaskBank | None = None) -> tuple[FrozenNet, MaskBank]:
    """Train every task's mask together on the config's frozen network.

    Returns the network and a bank holding ``bank``'s masks (untouched) plus the new ones.
    """
    if not tasks:
        raise ValueError("no tasks to train: every market was skipped")
    net = build_network(cfg, tasks[0].X.shape[1])
    device = resolve_device(cfg.runtime)
    t = cfg.training
    log.info("training %d masks together on %s (%s, density %.2f, %d steps)",
             len(tasks), device, cfg.masks.method, cfg.masks.density, t.steps)

    def on_step(step: int, steps: int, losses: dict[str, float]) -> None:
        mean = sum(losses.values()) / max(len(losses), 1)
        progress.report("train masks", step, steps, f"mean loss {mean:.4f}")

    bank = train_masks(
        net, {task.name: (task.X, task.y) for task in tasks}, method=cfg.masks.method,
        density=cfg.masks.density, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
        momentum=t.momentum, weight_decay=t.weight_decay, seed=t.seed, bank=bank,
        device=device, progress=on_step, task_meta={task.name: task.meta for task in tasks},
    )
    return net.to("cpu"), bank


def build_forecaster(
    features: dict[str, FeatureSet], regimes: dict[str, RegimeFit], net: FrozenNet, bank: MaskBank,
    cfg: Config,
) -> RegimeGatedForecaster:
    """Assemble the gated forecaster; regimes without a mask of their own use the ALL mask."""
    markets = {}
    for name in sorted(features):
        fs, rf = features[name], regimes[name]
        all_mask = task_name(name, ALL)
        masks = {r: task_name(name, r) if task_name(name, r) in bank else all_mask for r in rf.names}
        markets[name] = MarketModel(name, fs.scaler, fs.class_edges, fs.prior, rf.model, masks, all_mask)
    return RegimeGatedForecaster(
        markets, net, bank, feature_names=cfg.features.names, lookback=cfg.features.lookback,
        horizon=cfg.features.horizon, regime_window=cfg.regimes.warmup, mode=cfg.gating.mode,
    )
