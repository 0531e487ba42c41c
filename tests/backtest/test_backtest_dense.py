"""Dense baselines: they learn, batching changes nothing, fine-tuning starts where told and forgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SEED

from supsup_fin.backtest.dense import DenseBank, train_dense
from supsup_fin.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = (6, 24, 24, 3)


def separable(n: int, seed: int, dim: int = SIZES[0], classes: int = SIZES[-1]) -> tuple[np.ndarray, np.ndarray]:
    """``X ~ N(0, 1)``, ``y = argmax(X A)`` for a random ``A``: linearly separable classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    a = rng.normal(size=(dim, classes))
    return x, np.argmax(x @ a, axis=1).astype(np.int64)


def accuracy(bank: DenseBank, name: str, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(bank.predict_proba(name, x).argmax(axis=1) == y))


def test_learns_a_separable_task() -> None:
    x, y = separable(600, SEED)
    bank = train_dense({"a": (x, y)}, SIZES, steps=300, batch_size=64, lr=1e-2, seed=SEED)
    proba = bank.predict_proba("a", x)
    assert proba.shape == (600, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert accuracy(bank, "a", x, y) > 0.95
    assert bank.names == ["a"] and "a" in bank and "b" not in bank
    assert all(w.dtype == torch.float32 and w.device.type == "cpu" and not w.requires_grad for w in bank.weights["a"])


def test_untrained_starting_point_is_near_chance() -> None:
    """The learning test above can fail: a barely trained net is far from 95 %."""
    x, y = separable(600, SEED)
    bank = train_dense({"a": (x, y)}, SIZES, steps=1, batch_size=64, lr=1e-6, seed=SEED)
    assert accuracy(bank, "a", x, y) < 0.8


def test_a_task_trained_alone_equals_it_trained_among_others() -> None:
    tasks = {f"m{i}": separable(300 + 17 * i, SEED + i) for i in range(4)}
    kw = {"steps": 40, "batch_size": 32, "lr": 1e-2, "seed": SEED}
    together = train_dense(tasks, SIZES, **kw)
    reordered = train_dense(dict(reversed(list(tasks.items()))), SIZES, **kw)
    for name, data in tasks.items():
        alone = train_dense({name: data}, SIZES, **kw)
        for a, b, c in zip(alone.weights[name], together.weights[name], reordered.weights[name]):
            assert torch.equal(a, b) and torch.equal(a, c)
    # different nets really differ (the comparison above is not vacuous)
    assert not torch.equal(together.weights["m0"][0], together.weights["m1"][0])


def test_nets_leave_the_batch_when_their_held_out_choice_is_final_and_the_rest_are_unchanged(caplog) -> None:
    rng = np.random.default_rng(SEED)
    rows = {"a": separable(400, SEED), "noise": (rng.normal(size=(400, SIZES[0])).astype(np.float32),
                                                 rng.integers(0, 3, 400)), "b": separable(400, SEED + 1)}
    tasks, held = {n: (x[:300], y[:300]) for n, (x, y) in rows.items()}, {n: (x[300:], y[300:]) for n, (x, y) in rows.items()}
    kw = {"steps": 80, "batch_size": 32, "lr": 1e-2, "seed": SEED, "checkpoints": [5, 10, 20, 40, 60], "patience": 1}
    with caplog.at_level("DEBUG", logger="supsup_fin.backtest.dense"):
        together = train_dense(tasks, SIZES, holdout=held, **kw)
    assert any("nets final, training the other" in r.getMessage() for r in caplog.records)
    for name in tasks:
        alone = train_dense({name: tasks[name]}, SIZES, holdout={name: held[name]}, **kw)
        assert all(torch.equal(a, b) for a, b in zip(alone.weights[name], together.weights[name])), name


def test_tasks_smaller_than_the_batch_sample_with_replacement_and_stay_independent() -> None:
    small, large = separable(20, SEED), separable(400, SEED + 1)
    kw = {"steps": 30, "batch_size": 64, "lr": 1e-2, "seed": SEED}
    together = train_dense({"small": small, "large": large}, SIZES, **kw)
    for name, data in (("small", small), ("large", large)):
        alone = train_dense({name: data}, SIZES, **kw)
        assert all(torch.equal(a, b) for a, b in zip(alone.weights[name], together.weights[name]))


def test_streams_give_a_net_another_calls_seed_and_name() -> None:
    """What the walk-forward relies on to train every window's nets in one call: a net keyed
    ``a@w3`` with ``streams=(seed + 3, "a")`` is the net ``a`` of a call with ``seed + 3``."""
    a, b = separable(200, SEED), separable(150, SEED + 1)
    kw = {"steps": 20, "batch_size": 32, "lr": 1e-2}
    one = train_dense({"a": a}, SIZES, seed=SEED + 3, **kw)
    mixed = train_dense({"a@w3": a, "b@w0": b}, SIZES, seed=SEED, streams={"a@w3": (SEED + 3, "a")}, **kw)
    assert all(torch.equal(x, y) for x, y in zip(one.weights["a"], mixed.weights["a@w3"]))
    plain = train_dense({"b@w0": b}, SIZES, seed=SEED, **kw)  # without a stream: (seed, its own key)
    assert all(torch.equal(x, y) for x, y in zip(plain.weights["b@w0"], mixed.weights["b@w0"]))
    with pytest.raises(DataError, match="streams names tasks that are not being trained"):
        train_dense({"a": a}, SIZES, seed=SEED, streams={"z": (0, "a")}, **kw)
    with pytest.raises(DataError, match=r"streams\['a'\] must be \(non-negative seed, name\)"):
        train_dense({"a": a}, SIZES, seed=SEED, streams={"a": (-1, "a")}, **kw)


def test_deterministic_and_seeded() -> None:
    tasks = {"a": separable(200, SEED), "b": separable(150, SEED + 1)}
    kw = {"steps": 20, "batch_size": 32, "lr": 1e-2}
    one, two = train_dense(tasks, SIZES, seed=SEED, **kw), train_dense(tasks, SIZES, seed=SEED, **kw)
    other = train_dense(tasks, SIZES, seed=SEED + 1, **kw)
    for name in tasks:
        assert all(torch.equal(a, b) for a, b in zip(one.weights[name], two.weights[name]))
        assert not torch.equal(one.weights[name][0], other.weights[name][0])
    assert one.final_loss == two.final_loss


def test_fine_tuning_starts_from_init_and_leaves_it_untouched() -> None:
    x, y = separable(200, SEED)
    start = train_dense({"a": (x, y)}, SIZES, steps=20, batch_size=32, lr=1e-2, seed=SEED)
    init = start.copy_of("a")
    before = [w.clone() for w in init]
    tuned = train_dense({"a": (x, y)}, SIZES, steps=5, batch_size=32, lr=1e-9, seed=SEED, init={"a": init})
    fresh = train_dense({"a": (x, y)}, SIZES, steps=5, batch_size=32, lr=1e-9, seed=SEED)
    for w0, w_init, w_tuned, w_fresh in zip(before, init, tuned.weights["a"], fresh.weights["a"]):
        assert torch.equal(w0, w_init)  # the given tensors are not modified
        torch.testing.assert_close(w_tuned, w0, rtol=0, atol=1e-7)
        assert (w_fresh - w0).abs().max() > 1e-2  # a fresh net starts elsewhere
    assert all(torch.equal(a, b) for a, b in zip(before, start.weights["a"]))  # the bank is untouched too


def test_fine_tuning_on_a_conflicting_task_forgets_the_old_one() -> None:
    x, y = separable(400, SEED)
    y_new = (y + 1) % 3  # same inputs, permuted labels
    kw = {"steps": 200, "batch_size": 64, "lr": 1e-2, "seed": SEED}
    old = train_dense({"mkt": (x, y)}, SIZES, **kw)
    acc_before = accuracy(old, "mkt", x, y)
    new = train_dense({"mkt": (x, y_new)}, SIZES, init={"mkt": old.copy_of("mkt")}, **kw)
    assert acc_before > 0.9
    assert accuracy(new, "mkt", x, y_new) > 0.9
    assert accuracy(new, "mkt", x, y) < acc_before - 0.5


def test_nbytes_counts_fp32_weights() -> None:
    sizes = (64, 256, 256, 3)
    tasks = {name: (np.zeros((4, 64), np.float32), np.zeros(4, np.int64)) for name in ("a", "b", "c")}
    bank = train_dense(tasks, sizes, steps=1, batch_size=4)
    per_net = 4 * (64 * 256 + 256 * 256 + 256 * 3)
    assert bank.nbytes() == 3 * per_net
    assert bank.nbytes(["a"]) == per_net and bank.nbytes(["a", "c"]) == 2 * per_net
    assert bank.nbytes([]) == 0
    with pytest.raises(KeyError, match="'zz'"):
        bank.nbytes(["zz"])


def test_progress_is_reported_about_every_tenth() -> None:
    calls: list[tuple[int, int]] = []
    train_dense({"a": separable(50, SEED)}, SIZES, steps=25, batch_size=8, progress=lambda s, n: calls.append((s, n)))
    assert calls == [(2 * k, 25) for k in range(1, 13)] + [(25, 25)]


def _bad_inputs() -> dict[str, tuple[dict, dict, str]]:
    x, y = separable(30, SEED)
    nan_x = x.copy()
    nan_x[7, 2] = np.nan
    inf_x = x.copy()
    inf_x[3, 0] = np.inf
    good_init = [torch.zeros(24, 6), torch.zeros(24, 24), torch.zeros(3, 24)]
    return {
        "X 1-D": ({"bad": (x[:, 0], y)}, {}, r"\[n, 6\]"),
        "X wrong width": ({"bad": (x[:, :5], y)}, {}, r"\[n, 6\].*\(30, 5\)"),
        "y too short": ({"bad": (x, y[:-1])}, {}, r"\[30\].*\(29,\)"),
        "y float": ({"bad": (x, y.astype(float))}, {}, "integer"),
        "label too high": ({"bad": (x, np.where(y == 0, 3, y))}, {}, r"\[0, 3\).*3\]"),
        "label negative": ({"bad": (x, np.where(y == 0, -1, y))}, {}, r"\[0, 3\).*\[-1"),
        "NaN in X": ({"bad": (nan_x, y)}, {}, "row 7"),
        "inf in X": ({"bad": (inf_x, y)}, {}, "row 3"),
        "empty task": ({"bad": (x[:0], y[:0])}, {}, "at least 1 row"),
        "X not an array": ({"bad": (x.tolist(), y)}, {}, "list"),
        "init wrong shape": ({"bad": (x, y)}, {"bad": [torch.zeros(24, 5), *good_init[1:]]}, r"\(24, 5\)"),
        "init too few layers": ({"bad": (x, y)}, {"bad": good_init[:2]}, "weight shapes"),
        "init a bare tensor": ({"bad": (x, y)}, {"bad": good_init[0]}, "list of 3"),
        "init NaN": ({"bad": (x, y)}, {"bad": [torch.full((24, 6), float("nan")), *good_init[1:]]}, "finite"),
        "init for an untrained task": ({"good": (x, y)}, {"bad": good_init}, "not being trained"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_raises_data_error_naming_the_task(case: str) -> None:
    tasks, init, expected = _bad_inputs()[case]
    tasks = {"good": separable(30, SEED + 1), **tasks}
    with pytest.raises(DataError, match="'bad'") as err:
        train_dense(tasks, SIZES, steps=1, batch_size=8, init=init)
    assert err.match(expected)


@pytest.mark.parametrize(
    "kwargs", [{"steps": 0}, {"batch_size": 0}, {"steps": 2.5}, {"lr": 0.0}, {"weight_decay": -1.0}, {"seed": -1}]
)
def test_bad_hyperparameters_raise_value_error(kwargs: dict) -> None:
    args = {"steps": 1, "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        train_dense({"a": separable(30, SEED)}, SIZES, **args)


def test_bank_lookups_and_predict_validation() -> None:
    x, y = separable(30, SEED)
    bank = train_dense({"a": (x, y)}, SIZES, steps=1, batch_size=8)
    with pytest.raises(KeyError, match=r"\['a'\]"):
        bank.predict_proba("b", x)
    with pytest.raises(DataError, match=r"'a'.*\[N, 6\]"):
        bank.predict_proba("a", x[:, :4])
    copy = bank.copy_of("a")
    copy[0].add_(1.0)
    assert not torch.equal(copy[0], bank.weights["a"][0])
    np.testing.assert_array_equal(bank.predict_proba("a", torch.from_numpy(x)), bank.predict_proba("a", x))
    assert train_dense({}, SIZES, steps=1, batch_size=8).names == []
