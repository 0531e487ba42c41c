"""The time-to-accuracy benchmark's pieces (``benchmarks/masks_speed.py --time-to-accuracy``): the plain
per-task edge-popup loop, the held-out measure it is scored by, and the trainer's checkpoint log."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supsup_fin.masks import FrozenNet, Mask, train_masks
from supsup_fin.masks.early_stop import HeldOutSelector
from conftest import SEED, blobs

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from masks_speed import (
    digits_table,
    holdout_row_nll,
    paired_gap,
    per_weight_traffic,
    plain_edge_popup,
    scored_checkpoints,
    smallest_reaching,
    top_fraction,
)

SIZES = (16, 32, 32, 3)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_plain_loop_keeps_exact_density_at_each_checkpoint_and_learns() -> None:
    net = FrozenNet(SIZES, seed=SEED)
    x, y = blobs(SEED, n=240)
    snaps = plain_edge_popup(net.weights, x, y, steps=60, batch_size=64, seed=SEED, checkpoints=(10, 30))
    assert sorted(snaps) == [10, 30, 60]
    assert snaps[10][0] <= snaps[30][0] <= snaps[60][0]
    for _, masks in snaps.values():
        assert [int(m.sum()) for m in masks] == [round(0.5 * w.numel()) for w in net.weights]
    first, last = (float((net(x, mask=Mask(snaps[s][1])).argmax(1).numpy() == y).mean()) for s in (10, 60))
    assert last >= 0.95 and last >= first


def test_plain_loop_step_is_sgd_on_scores_through_a_straight_through_top_k_of_their_magnitude() -> None:
    # One step without momentum, computed by hand: the gradient reaches each mask entry as dL/dM, and
    # the scores through |.| as dL/dM * sign(s); the new masks are the top halves of |s - lr * that|.
    net = FrozenNet(SIZES, seed=SEED)
    x, y = blobs(SEED + 1, n=64)
    gen = torch.Generator().manual_seed(SEED)
    s0 = [(torch.rand(w.shape, generator=gen) * 2 - 1) * 0.01 / math.sqrt(w.shape[1]) for w in net.weights]
    masks = [top_fraction(s.abs(), 0.5).requires_grad_() for s in s0]
    h = torch.from_numpy(x)
    for layer, (w, m) in enumerate(zip(net.weights, masks)):
        h = h @ (w * m).T
        h = torch.relu(h) if layer < len(masks) - 1 else h
    F.cross_entropy(h, torch.from_numpy(y)).backward()
    expected = [top_fraction((s - 0.5 * m.grad * s.sign()).abs(), 0.5).bool() for s, m in zip(s0, masks)]
    (_, got), = plain_edge_popup(net.weights, x, y, steps=1, lr=0.5, momentum=0.0, seed=SEED).values()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert any(not torch.equal(a, top_fraction(s.abs(), 0.5).bool()) for a, s in zip(got, s0))


def test_checkpoint_log_matches_the_trainers_choice_and_the_loops_measure() -> None:
    net = FrozenNet(SIZES, seed=SEED)
    rows = {f"t{k}": blobs(SEED + 10 + k, n=200) for k in range(2)}
    tasks = {n: (x[:160], y[:160]) for n, (x, y) in rows.items()}
    held = {n: (x[160:], y[160:]) for n, (x, y) in rows.items()}
    observe = HeldOutSelector.observe
    with scored_checkpoints() as log:
        bank = train_masks(net, tasks, steps=20, batch_size=32, holdout=held, checkpoints=[5, 10], patience=5)
    assert HeldOutSelector.observe is observe
    assert [step for _, _, step, _ in log] == [5, 10, 20]
    for clock in ([t for t, _, _, _ in log], [c for _, c, _, _ in log]):
        assert clock == sorted(clock)
    for t, name in enumerate(tasks):
        best = [b[t] for *_, b in log]
        assert best == sorted(best, reverse=True)
        assert best[-1] == pytest.approx(bank.meta(name)["holdout_log_loss"], abs=1e-9)
        assert holdout_row_nll(net, bank[name], *held[name]).mean() == pytest.approx(best[-1], abs=1e-6)


def test_digits_table_takes_medians_over_the_seeds_that_ran_with_never_as_infinite() -> None:
    def seed(default, reference=None):
        def hit(ratio):
            return None if ratio is None else {"steps": 50, "ratio_to_loop": ratio, "cpu_ratio_to_loop": 2 * ratio}

        out = {"default": {"loop": hit(default)}}
        if reference is not None:
            out["init_scale=1"] = {"loop": hit(reference)}
        return {"time_to_loop_accuracy": out}

    table = digits_table([seed(0.3, 1.4), seed(None), seed(0.45)])
    assert table["default"]["loop"]["median_ratio_to_loop"] == 0.45
    assert table["default"]["loop"]["median_cpu_ratio_to_loop"] == 0.9
    assert table["default"]["loop"]["seeds_reaching_loop"] == 2 and table["default"]["loop"]["seeds"] == 3
    assert table["init_scale=1"]["loop"]["seeds"] == 1 and table["init_scale=1"]["loop"]["median_ratio_to_loop"] == 1.4
    assert table["target_met"] == {"loop": True}
    assert digits_table([seed(None), seed(None), seed(0.2)])["target_met"] == {"loop": False}
    assert digits_table([seed(0.6), seed(0.2), seed(0.7)])["default"]["loop"]["median_ratio_to_loop"] == 0.6
    assert digits_table([seed(0.6), seed(0.2), seed(0.7)])["target_met"] == {"loop": False}


def test_smallest_reaching_walks_from_its_start_and_tries_every_budget_without_one() -> None:
    grid = (10, 20, 30, 50, 100)
    for start, first, expected_tries in [(None, 30, [10, 20, 30, 50, 100]), (3, 30, [50, 30, 20]),
                                         (1, 30, [20, 30]), (4, 30, [100, 50, 30, 20]), (0, 10, [10])]:
        tried = []

        def reaches(b: int, first: int = first, tried: list = tried) -> bool:
            tried.append(b)
            return b >= first

        assert smallest_reaching(grid, reaches, start) == first
        assert tried == expected_tries
    assert smallest_reaching(grid, lambda b: False, 2) is None
    assert smallest_reaching(grid, lambda b: False) is None


def test_paired_gap_averages_tasks_and_adds_their_variances() -> None:
    a = {"x": np.zeros(4), "y": np.zeros(2)}
    b = {"x": np.ones(4), "y": np.array([0.0, 2.0])}
    gap = paired_gap(a, b)
    assert gap["mean"] == 1.0
    assert gap["se"] == pytest.approx(np.sqrt(0 / 4 + 2.0 / 2) / 2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_profiled_step_splits_into_gemms_and_per_weight_work_with_at_least_the_unavoidable_bytes(dtype) -> None:
    """``masks_speed``'s per-weight measurement: GEMM time found, and per-weight ops that move at least
    the 24 bytes per weight (scores and momentum read and written, the gradient) a step must move."""
    net = FrozenNet((16, 128, 128, 3), seed=SEED)  # 16,384 weights a layer: the band top-k path
    tasks = {f"t{k}": blobs(SEED + k, n=200) for k in range(3)}
    t = per_weight_traffic(net, tasks, 32, 16, dtype)
    assert t["steps_profiled"] == 6 and t["step_s_profiled"] > 0
    assert t["gemm_s_per_step"] > 0 and t["per_weight_s_per_step"] > 0 and t["other_s_per_step"] > 0
    assert 24 <= t["bytes_per_weight_per_step"] < 1000
    assert t["per_weight_gbs"] > 0
