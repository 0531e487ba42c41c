"""Calibration maps and per-task early stopping, against known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from supsup_fin.forecaster.calibration import Calibrator, log_loss, prior_log_loss
from supsup_fin.masks import FrozenNet, train_masks
from supsup_fin.masks.early_stop import check_grid, temperature_nll

from conftest import SEED


def _sample(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = np.exp(log_softmax(z, axis=1))
    return (rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1)


def test_temperature_recovers_a_known_over_confidence(rng: np.random.Generator) -> None:
    """Labels drawn from softmax(z); the model reports 3·z: the fitted T is 3 (within sampling error)."""
    z = rng.normal(size=(20_000, 3)) * 1.5
    y = _sample(z, rng)
    t, nll = temperature_nll(3.0 * z, y)
    assert t == pytest.approx(3.0, rel=0.05)
    assert nll == pytest.approx(log_loss(np.exp(log_softmax(z, axis=1)), y), abs=1e-3)
    cal = Calibrator.fit(3.0 * z, y, np.bincount(y) / len(y))
    assert cal.temperature == pytest.approx(3.0, rel=0.05)
    assert cal.weight < 0.05 and cal.log_loss < cal.raw_log_loss < 1.5 * cal.prior_log_loss
    # The argmax (and so accuracy) is unchanged by the map.
    assert (cal(3.0 * z).argmax(axis=1) == z.argmax(axis=1)).mean() > 0.99


def test_a_map_without_held_out_skill_outputs_the_prior(rng: np.random.Generator) -> None:
    prior = np.array([0.3, 0.3, 0.4])
    y = rng.choice(3, size=600, p=prior)
    z = rng.normal(size=(600, 3)) * 4.0  # confident and unrelated to y
    cal = Calibrator.fit(z, y, prior)
    assert cal.weight == 1.0
    np.testing.assert_allclose(cal(z), np.broadcast_to(prior, (600, 3)), atol=0.0)
    assert cal.log_loss == pytest.approx(prior_log_loss(prior, y))
    assert cal.skill == 0.0


def test_too_few_rows_give_the_prior_and_the_map_round_trips(rng: np.random.Generator) -> None:
    prior = np.array([0.5, 0.5])
    cal = Calibrator.fit(rng.normal(size=(5, 2)), np.array([0, 1, 0, 1, 1]), prior)
    assert cal.weight == 1.0 and cal.n == 5
    z = rng.normal(size=(400, 2))
    fitted = Calibrator.fit(z, _sample(2 * z, rng), prior)
    again = Calibrator.from_dict(fitted.to_dict())
    assert again == fitted
    np.testing.assert_array_equal(again(z), fitted(z))
    with pytest.raises(ValueError, match=r"expected z \[n, 2\]"):
        Calibrator.fit(z[:, :1], _sample(z, rng), prior)


def test_check_grid() -> None:
    assert check_grid([50, 10, 400, 10], 300) == [10, 50, 300]
    with pytest.raises(ValueError, match="ints >= 1"):
        check_grid([0, 5], 10)


def _noise_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.normal(size=(n, 12)).astype(np.float32), g.integers(0, 3, n)


def test_calibrated_no_skill_mask_outputs_the_prior_within_0_01() -> None:
    """A mask trained on labels independent of its inputs, calibrated on held-out rows, says the prior."""
    torch.manual_seed(SEED)
    net = FrozenNet((12, 64, 64, 3), seed=SEED)
    train, held, test = _noise_task(300, SEED), _noise_task(400, SEED + 1), _noise_task(400, SEED + 2)
    bank = train_masks(net, {"noise": train}, steps=120, batch_size=64, holdout={"noise": held},
                       checkpoints=[20, 40, 80, 120], seed=SEED)
    prior = np.bincount(train[1], minlength=3) / len(train[1])
    with torch.no_grad():
        z_held = torch.log_softmax(net(torch.as_tensor(held[0]), mask=bank["noise"]).double(), 1).numpy()
        z_test = torch.log_softmax(net(torch.as_tensor(test[0]), mask=bank["noise"]).double(), 1).numpy()
    raw = np.exp(z_test)
    assert np.abs(raw - prior).max() > 0.05  # uncalibrated, the mask is confidently wrong somewhere
    cal = Calibrator.fit(z_held, held[1], prior)
    assert np.abs(cal(z_test) - prior).max() <= 0.01


def test_early_stopping_keeps_the_best_checkpoint_per_task() -> None:
    """Each task's kept mask is the one scored best on its held-out rows; no-skill tasks stop early."""
    g = np.random.default_rng(SEED)
    X = g.normal(size=(900, 12)).astype(np.float32)
    y = (X[:, 0] > 0.4).astype(np.int64) + (X[:, 0] > -0.4)
    net = FrozenNet((12, 64, 64, 3), seed=SEED)
    tasks = {"signal": (X[:500], y[:500]), "noise": _noise_task(200, SEED)}
    holdout = {"signal": (X[500:], y[500:]), "noise": _noise_task(300, SEED + 1)}
    grid = [10, 20, 40, 80, 120]
    bank = train_masks(net, tasks, steps=120, batch_size=64, holdout=holdout, checkpoints=grid, patience=2,
                       seed=SEED)
    for name in tasks:
        meta = bank.meta(name)
        assert meta["selected_step"] in grid
        with torch.no_grad():
            z = torch.log_softmax(net(torch.as_tensor(holdout[name][0]), mask=bank[name]).double(), 1).numpy()
        t, nll = temperature_nll(z, holdout[name][1])
        assert nll == pytest.approx(meta["holdout_log_loss"], abs=1e-9)
        assert t == pytest.approx(meta["holdout_temperature"], rel=1e-6)
    assert bank.meta("signal")["holdout_log_loss"] < 0.8 < 1.05 < bank.meta("noise")["holdout_log_loss"]
    # A task's choice does not depend on its group.
    alone = train_masks(net, {"signal": tasks["signal"]}, steps=120, batch_size=64,
                        holdout={"signal": holdout["signal"]}, checkpoints=grid, patience=2, seed=SEED)
    assert all(torch.equal(a, b) for a, b in zip(alone["signal"].layers, bank["signal"].layers))
    with pytest.raises(ValueError, match=r"holdout has no rows for tasks \['noise'\]"):
        train_masks(net, tasks, steps=5, holdout={"signal": holdout["signal"]})
