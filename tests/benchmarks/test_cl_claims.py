"""The measurements of ``benchmarks/cl_claims.py`` on known answers.

Jaccard of identical masks is 1 and of independent random masks at density d is d / (2 - d);
related permutations share exactly the asked fraction of pixels and a task's own second mask
overlaps it more than an unrelated task's does; a calibrated predictor has ECE near 0 and
temperature near 1, one whose logits are tripled gets T near 3; earlier tasks' predictions are
bit-identical after more masks join the base, and the check catches a mask changed in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SEED

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import cl_claims
from cl_claims import (
    compounding_run,
    correlation,
    gain,
    layer_jaccard,
    mean_se,
    related_perm,
    relatedness_pairs,
    scaled_scores,
)

from supsup_fin.masks import Mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_mask(rng: np.random.Generator, shapes, density: float) -> Mask:
    return Mask([torch.from_numpy(rng.random(s) < density) for s in shapes])


def test_jaccard_of_identical_masks_is_one_and_of_independent_ones_chance():
    rng = np.random.default_rng(SEED)
    shapes = [(300, 200), (200, 300)]
    a = random_mask(rng, shapes, 0.3)
    assert layer_jaccard({"a": a, "b": Mask(list(a.layers))}, "a", "b") == [1.0, 1.0, 1.0]
    for d in (0.1, 0.5, 0.9):
        bank = {"a": random_mask(rng, shapes, d), "b": random_mask(rng, shapes, d)}
        np.testing.assert_allclose(layer_jaccard(bank, "a", "b"), d / (2 - d), atol=0.01)


@pytest.mark.parametrize("shared", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_related_permutation_shares_exactly_the_fraction(shared):
    rng = np.random.default_rng(SEED)
    base = rng.permutation(64)
    p = related_perm(base, shared, rng)
    assert sorted(p) == list(range(64))
    assert int((p == base).sum()) == round(64 * shared)


def test_related_permutation_cannot_move_one_pixel():
    with pytest.raises(ValueError, match="one pixel"):
        related_perm(np.arange(4), 0.75, np.random.default_rng(SEED))


def test_same_task_masks_overlap_more_than_unrelated_ones():
    pairs = relatedness_pairs(SEED, n_refs=2, hidden=32, steps=60, shared=(0.0, 1.0))
    same = np.mean([p["jaccard"][0] for p in pairs if p["shared"] == 1.0])
    other = np.mean([p["jaccard"][0] for p in pairs if p["shared"] == 0.0])
    assert same > other + 0.05, (same, other)
    assert abs(other - 1 / 3) < 0.02  # unrelated pixels: the first layer's masks are independent at density 0.5


def test_calibrated_predictor_has_small_ece_and_unit_temperature():
    rng = np.random.default_rng(SEED)
    logits = rng.normal(size=(20_000, 3)) * 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random(len(p))[:, None] > p.cumsum(1)).sum(1)
    z = np.log(p)
    calibrated = scaled_scores(z[:10_000], y[:10_000], z[10_000:], y[10_000:])
    assert calibrated["ece_raw"] < 0.02
    assert abs(calibrated["temperature"] - 1) < 0.1
    sharp = scaled_scores(3 * z[:10_000], y[:10_000], 3 * z[10_000:], y[10_000:])
    assert abs(sharp["temperature"] - 3) < 0.3
    assert sharp["ece_raw"] > 0.1 and sharp["ece_scaled"] < 0.02
    assert sharp["log_loss_scaled"] == pytest.approx(calibrated["log_loss_raw"], abs=0.01)


def test_uniform_forecast_gains_nothing_over_a_uniform_prior():
    y_cal, y = np.array([0, 0, 0, 1, 2]), np.array([0, 1, 2, 2])
    g = gain(np.zeros((5, 3)), y_cal, np.zeros((4, 3)), y, np.full(3, 1 / 3))
    assert g["gain"] == pytest.approx(0.0, abs=1e-12)
    recent = np.array([4, 2, 2]) / 8
    assert g["gain_recent"] == pytest.approx(-np.mean(np.log(recent[y])) - np.log(3))


def test_mean_se_and_correlation_known_values():
    assert mean_se([1.0, 2.0, 3.0]) == pytest.approx({"mean": 2.0, "se": 1 / np.sqrt(3), "n": 3})
    x = np.repeat([0.0, 0.5, 1.0], 4)
    c = correlation(x, 2 * x + 1, n_boot=50)
    assert c["pearson"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0)
    assert c["pearson_ci"][0] > 0.99


def test_compounding_keeps_earlier_predictions_bit_identical():
    r = compounding_run(6, 2, hidden=16, superfluous=4, steps=10, seed=SEED, candidates=(2, 6, 10))
    assert r["bit_identical"]
    assert r["acc_right_after"] == r["acc_after_all"] and r["max_acc_change"] == 0.0
    assert sorted(r["inference"]) == ["entropy, k=2", "entropy, k=6", "superfluous, k=2", "superfluous, k=6"]


def test_compounding_check_catches_a_mask_changed_later(monkeypatch):
    train = cl_claims.train_masks

    def corrupting(net, tasks, *args, bank=None, **kwargs):
        if bank is not None and len(bank):
            first = bank[bank.names[0]].layers[-1]
            first.view(-1)[: first.numel() // 2] ^= True  # an earlier task's bits change in place
        return train(net, tasks, *args, bank=bank, **kwargs)

    monkeypatch.setattr(cl_claims, "train_masks", corrupting)
    with pytest.raises(AssertionError, match="predictions changed"):
        compounding_run(4, 2, hidden=16, superfluous=0, steps=5, seed=SEED, candidates=(2,))
