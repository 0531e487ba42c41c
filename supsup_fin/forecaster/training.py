"""Mask training for a set of tasks, and assembly of the gated forecaster.

The library calls behind the retrain flow's ``train masks`` step: one frozen network built
from the config's seed, all tasks' masks trained together in one batched pass.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from supsup_fin import progress
from supsup_fin.config import Config, RuntimeConfig
from supsup_fin.decision import DecisionRule
from supsup_fin.forecaster.choose import fit_selection
from supsup_fin.forecaster.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, Mask, MaskBank, train_masks
from supsup_fin.masks.bank import pack_layer, unpack_layer
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit
from supsup_fin.forecaster.mask_tasks import ALL, Task, device_label, task_name, training_device

log = logging.getLogger(__name__)


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """The device the net runs on (:func:`~supsup_fin.forecaster.mask_tasks.training_device`), after
    applying ``threads``; under ``auto`` the choice is logged (cuda: with the GPU's name)."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = training_device(runtime)
    if runtime.device == "auto":
        log.info("runtime.device auto: %s", device_label(device) if device.type == "cuda"
                 else "cpu (torch sees no CUDA device)")
    return device


def build_network(cfg: Config, in_dim: int) -> FrozenNet:
    """The frozen base: ``in_dim -> hidden... -> n_classes``, regenerated from the config's seed."""
    return FrozenNet(sizes=(in_dim, *cfg.network.hidden, cfg.features.n_classes), seed=cfg.network.seed,
                     superfluous=cfg.masks.superfluous)


def reusable_masks(tasks: list[Task], previous: MaskBank | None, net: FrozenNet, source: str = "champion") -> MaskBank:
    """The masks of ``previous`` that ``tasks`` can reuse bit-identically, in ``tasks`` order.

    A mask is reused when ``previous`` was built on ``net`` and holds a mask of the same name
    whose recorded market, regime, data hash, config hash and device equal the task's (a mask
    recorded without a device is retrained: its device is unknown). Each reused mask
    gets ``carried_from=source`` in its metadata; its bits are the same tensor objects.
    """
    if previous is None or not previous.matches(net):
        if previous is not None:
            log.info("carry-over: the previous bank was built on another base network; retraining every mask")
        return MaskBank(net)
    keys = ("market", "regime", "data_hash", "config_hash", "device")
    keep, moved = {}, []
    for task in tasks:
        if task.name in previous:
            old = previous.meta(task.name)
            if all(old.get(k) == task.meta.get(k) for k in keys):
                probs = [previous.probabilities(task.name)] if previous.has_probabilities(task.name) else []
                keep[task.name] = (previous[task.name], {**old, "carried_from": source}, *probs)
            elif all(old.get(k) == task.meta.get(k) for k in keys[:-1]):
                moved.append((old.get("device", "an unrecorded device"), task.meta.get("device")))
    log.info("carry-over: %d of %d masks unchanged since %s", len(keep), len(tasks), source)
    if moved:
        log.info("carry-over: %d masks of %s were trained on %s, this retrain trains on %s: retraining them",
                 len(moved), source, *moved[0])
    return merge_banks(net, keep)


MaskBits = dict[str, tuple]
"""What travels back from a training worker: ``name -> (packed layers, metadata)`` or ``(packed
layers, metadata, keep probabilities per layer)`` for masks that store them. Each layer is its bits
packed eight to a byte (:func:`~supsup_fin.masks.bank.pack_layer`, as the bank saves them): a
market's four demo masks are 41 KB on the wire, not 337 KB of one byte per weight."""


def to_bits(bank: MaskBank) -> MaskBits:
    """A bank's masks as packed bits and metadata (picklable; no base network)."""
    return {n: ([pack_layer(layer) for layer in bank[n].layers], bank.meta(n),
                *([bank.probabilities(n)] if bank.has_probabilities(n) else []))
            for n in bank.names}


def merge_banks(net: FrozenNet, parts: list[MaskBank | MaskBits] | MaskBits) -> MaskBank:
    """One bank on ``net`` from banks and/or :data:`MaskBits` (or ``name -> (Mask, meta)``), in order.

    Stored keep probabilities travel with their masks.
    """
    out = MaskBank(net)
    for part in parts if isinstance(parts, list) else [parts]:
        if not isinstance(part, MaskBank):
            part = MaskBank(net).extended({n: (_as_mask(m, out.shapes), *rest) for n, (m, *rest) in part.items()})
        out = out.merged(part)
    return out


def _as_mask(layers: Mask | list, shapes: tuple[tuple[int, int], ...]) -> Mask:
    """A :class:`Mask` from a mask, bool layers, or :func:`to_bits`' packed layers."""
    if isinstance(layers, Mask):
        return layers
    return Mask([unpack_layer(b, s) if isinstance(b, np.ndarray) else b for b, s in zip(layers, shapes)])


def training_groups(tasks: list[Task], runtime: RuntimeConfig) -> list[list[Task]]:
    """The batched training groups: every task together, or one group per market (``dask``: always)."""
    if runtime.training_groups == "all" and runtime.task_runner != "dask":
        return [tasks] if tasks else []
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.market, []).append(task)
    return list(groups.values())


def train_group(tasks: list[Task], cfg: Config, bank: MaskBank | None = None) -> MaskBank:
    """Train ``tasks``' masks together in one batched pass (appended to ``bank``).

    Rebuilds the frozen base from the config's seed and applies ``runtime.threads`` first, so a
    Dask worker gives the same bits as the driver; only the returned bank needs to travel. Each
    mask's metadata records the device it trained on (``device``: its
    :func:`~supsup_fin.forecaster.mask_tasks.device_label`).
    """
    net = build_network(cfg, tasks[0].X.shape[1])
    device = resolve_device(cfg.runtime)
    label = device_label(device)
    t = cfg.training
    log.info("training %d masks together on %s (%s, density %.2f, %d steps)",
             len(tasks), label, cfg.masks.method, cfg.masks.density, t.steps)

    def on_step(step: int, steps: int, losses: dict[str, float]) -> None:
        mean = sum(losses.values()) / max(len(losses), 1)
        progress.report("train masks", step, steps, f"mean loss {mean:.4f}")

    held = [task for task in tasks if task.y_holdout is not None and len(task.y_holdout)]
    holdout = {task.name: (task.X_holdout, task.y_holdout) for task in held} if held else None
    return train_masks(
        net, {task.name: (task.X, task.y) for task in tasks}, method=cfg.masks.method,
        density=cfg.masks.density, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
        momentum=t.momentum, weight_decay=t.weight_decay, seed=t.seed, bank=bank,
        device=device, progress=on_step, task_meta={task.name: {**task.meta, "device": label} for task in tasks},
        form_options=cfg.masks.form_options(), store_probabilities=cfg.masks.store_probabilities,
        holdout=holdout, checkpoints=t.checkpoints, patience=t.patience, compute_dtype=t.compute_dtype,
    )


def train_tasks(
    tasks: list[Task], cfg: Config, bank: MaskBank | None = None, previous: MaskBank | None = None,
    previous_name: str = "champion",
) -> tuple[FrozenNet, MaskBank]:
    """Train every task's mask on the config's frozen network, group by group.

    Masks that ``previous`` (the champion's bank) holds for an unchanged task are carried over
    bit-identically (see :func:`reusable_masks`); the rest are trained in the groups of
    :func:`training_groups`. Returns the network and a bank holding ``bank``'s masks
    (untouched), the carried ones, then the new ones.
    """
    if not tasks:
        raise ValueError("no tasks to train: every market was skipped")
    net = build_network(cfg, tasks[0].X.shape[1])
    carried = reusable_masks(tasks, previous, net, previous_name)
    out = merge_banks(net, [b for b in (bank, carried) if b is not None])
    for group in training_groups([t for t in tasks if t.name not in carried], cfg.runtime):
        out = train_group(group, cfg, out)
    return net.to("cpu"), out


def build_forecaster(
    features: dict[str, FeatureSet], regimes: dict[str, RegimeFit], net: FrozenNet, bank: MaskBank,
    cfg: Config,
) -> RegimeGatedForecaster:
    """Assemble the gated forecaster; regimes without a mask of their own use the ALL mask.

    Each market gets its classes' forward-return means and variances on its training rows (for
    the decision layer). With a selection slice (``training.holdout_fraction > 0``) every mask is
    then calibrated and every market's gate mode chosen on held-out rows
    (:func:`~supsup_fin.forecaster.choose.fit_selection`).
    """
    markets = {}
    for name in sorted(features):
        fs, rf = features[name], regimes[name]
        all_mask = task_name(name, ALL)
        masks = {r: task_name(name, r) if task_name(name, r) in bank else all_mask for r in rf.names}
        markets[name] = MarketModel(name, fs.scaler, fs.class_edges, fs.prior, rf.model, masks, all_mask,
                                    fs.class_returns())
    fc = RegimeGatedForecaster(
        markets, net, bank, feature_names=cfg.features.names, lookback=cfg.features.lookback,
        horizon=cfg.features.horizon, regime_window=cfg.regimes.regime_window, mode=cfg.gating.mode,
        infer_window=cfg.gating.infer_window, stochastic_samples=stochastic_samples(cfg),
        decision=decision_rule(cfg),
    )
    if cfg.training.holdout_fraction > 0:
        fit_selection(fc, features, regimes, cfg.training.holdout_fraction, cfg.features.horizon + cfg.features.lookback)
    elif cfg.gating.mode == "auto":
        raise ValueError("gating.mode 'auto' chooses on held-out rows: set training.holdout_fraction > 0")
    return fc


def stochastic_samples(cfg: Config) -> int:
    """Masks averaged per forecast: ``masks.stochastic_samples`` under stochastic inference, else 0."""
    return cfg.masks.stochastic_samples if cfg.masks.inference == "stochastic" else 0


def decision_rule(cfg: Config) -> DecisionRule:
    """The config's position rule (``backtest.positions``) as the forecaster keeps it."""
    p = cfg.backtest.positions
    return DecisionRule(rule=p.rule, fraction=p.kelly_fraction, cap=p.cap, target_vol=p.target_vol,
                        allow_short=p.allow_short, threshold=p.threshold, scale=p.scale)
