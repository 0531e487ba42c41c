"""Batched mask training: exact density, zero forgetting, determinism, group independence, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supsup_fin.masks import FrozenNet, MaskBank, train_masks
from conftest import SEED, same_bits
from conftest import blobs as conftest_blobs

SIZES = (16, 64, 64, 3)
FAST = {"steps": 60, "batch_size": 32}


def blobs(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian classes in 16 dimensions (300 rows by default)."""
    return conftest_blobs(seed, n)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> FrozenNet:
    return FrozenNet(SIZES, seed=0)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "sp500/calm": blobs(SEED + 1),
        "sp500/ALL": blobs(SEED + 2, n=450),
        "x/calm@2015-01-02": blobs(SEED + 3),
    }


@pytest.fixture(scope="module")
def trained(net: FrozenNet, data) -> MaskBank:
    """The three tasks trained together with edge-popup at density 0.3."""
    return train_masks(net, data, density=0.3, steps=150, batch_size=64, seed=SEED)


def test_edge_popup_density_is_exact_per_layer(trained: MaskBank) -> None:
    for name in trained.names:
        mask = trained[name]
        assert mask.is_binary
        for layer in mask.layers:
            assert int(layer.sum()) == round(0.3 * layer.numel())
        assert trained.meta(name)["density"] == [round(0.3 * m.numel()) / m.numel() for m in mask.layers]


def test_masks_learn_separable_data(trained: MaskBank, net: FrozenNet, data) -> None:
    for name, (x, y) in data.items():
        acc = (net(x, mask=trained[name]).argmax(dim=1).numpy() == y).mean()
        assert acc > 0.8, f"{name}: accuracy {acc:.3f} (chance 1/3)"


def test_threshold_form_learns_and_reports_counted_density(net: FrozenNet, data) -> None:
    x, y = data["sp500/calm"]
    bank = train_masks(net, {"t": (x, y)}, method="threshold", density=0.5, steps=100, batch_size=64, seed=SEED)
    mask = bank["t"]
    assert bank.meta("t")["density"] == [int(m.sum()) / m.numel() for m in mask.layers]
    assert bank.meta("t")["method"] == "threshold"
    assert (net(x, mask=mask).argmax(dim=1).numpy() == y).mean() > 0.8


def test_training_leaves_base_weights_bit_identical(net: FrozenNet, data) -> None:
    before = [w.clone() for w in net.weights]
    hash_before = net.weights_hash()
    train_masks(net, {"a": data["sp500/calm"]}, seed=SEED, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(before, net.weights))
    assert net.weights_hash() == hash_before


def test_appending_tasks_leaves_old_masks_and_outputs_identical(
    trained: MaskBank, net: FrozenNet, data
) -> None:
    old = {n: [layer.clone() for layer in trained[n].layers] for n in trained.names}
    x = torch.from_numpy(data["sp500/calm"][0])
    outputs = {n: net(x, mask=trained[n]) for n in trained.names}
    metas = {n: trained.meta(n) for n in trained.names}
    grown = train_masks(net, {"nasdaq/calm": blobs(SEED + 9)}, bank=trained, seed=SEED, **FAST)
    assert grown.names == [*trained.names, "nasdaq/calm"]
    for name in trained.names:
        assert all(torch.equal(a, b) for a, b in zip(old[name], grown[name].layers))
        assert all(torch.equal(a, b) for a, b in zip(old[name], trained[name].layers))
        assert torch.equal(net(x, mask=grown[name]), outputs[name])
        assert grown.meta(name) == metas[name]
    with pytest.raises(ValueError, match="already in the bank"):
        train_masks(net, {"sp500/calm": data["sp500/calm"]}, bank=trained, **FAST)


def test_same_seed_and_data_give_identical_bits(net: FrozenNet, data) -> None:
    tasks = {"a": data["sp500/calm"], "b": data["sp500/ALL"]}
    read_only = {k: (x.copy(), y.copy()) for k, (x, y) in tasks.items()}
    for x, y in read_only.values():
        x.flags.writeable = y.flags.writeable = False
    one = train_masks(net, read_only, seed=SEED, **FAST)
    as_torch = {k: (torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in tasks.items()}
    two = train_masks(net, as_torch, seed=SEED, **FAST)
    assert all(same_bits(one[n], two[n]) for n in tasks)
    other = train_masks(net, {"a": data["sp500/calm"]}, seed=SEED + 1, **FAST)
    assert not same_bits(one["a"], other["a"])


@pytest.mark.parametrize(("method", "threads"), [("edge_popup", 1), ("threshold", 1), ("edge_popup", 2)])
def test_a_task_trains_the_same_alone_or_in_a_group(net: FrozenNet, data, method: str, threads: int) -> None:
    """Bitwise: batching tasks on a leading axis must not change any task's arithmetic."""
    a, b, c = data["sp500/calm"], data["sp500/ALL"], data["x/calm@2015-01-02"]
    steps = FAST["steps"] if threads == 1 else 15  # multi-threaded small ops crawl on a busy 2-core box
    torch.set_num_threads(threads)
    try:
        alone = train_masks(net, {"a": a}, method=method, seed=SEED, steps=steps, batch_size=32)
        group = train_masks(net, {"b": b, "a": a, "c": c}, method=method, seed=SEED, steps=steps, batch_size=32)
    finally:
        torch.set_num_threads(1)
    assert same_bits(alone["a"], group["a"])
    assert alone.meta("a")["final_loss"] == group.meta("a")["final_loss"]


@pytest.mark.parametrize(("method", "batch_size"), [("edge_popup", 32), ("edge_popup", None), ("hard_concrete", 32)])
def test_tasks_leave_the_batch_when_final_without_changing_any_bits(net: FrozenNet, method: str, batch_size,
                                                                     caplog) -> None:
    """Held-out selection: a task whose choice is final stops training; the others' bits are as alone."""
    rng = np.random.default_rng(SEED)

    def split(x, y):
        return (x[:240], y[:240]), (x[240:], y[240:])

    noise = {f"noise{k}": (rng.normal(size=(300, 16)).astype(np.float32), rng.integers(0, 3, 300)) for k in range(2)}
    rows = {"blobs": blobs(SEED + 7), **noise, "blobs2": blobs(SEED + 8)}
    tasks, held = {n: split(*xy)[0] for n, xy in rows.items()}, {n: split(*xy)[1] for n, xy in rows.items()}
    kw = {"method": method, "seed": SEED, "steps": 120, "batch_size": batch_size, "checkpoints": [5, 10, 20, 30, 45, 60, 90],
          "patience": 2, "store_probabilities": method == "hard_concrete"}
    with caplog.at_level("DEBUG", logger="supsup_fin.masks.train"):
        group = train_masks(net, tasks, holdout=held, **kw)
    assert any("tasks final, training the other" in r.getMessage() for r in caplog.records)
    for name in tasks:
        alone = train_masks(net, {name: tasks[name]}, holdout={name: held[name]}, **kw)
        assert same_bits(alone[name], group[name]), name
        for key in ("selected_step", "holdout_log_loss", "holdout_temperature", "final_loss"):
            assert alone.meta(name)[key] == group.meta(name)[key], (name, key)
        if kw["store_probabilities"]:
            assert all(torch.equal(a, b) for a, b in zip(alone.probabilities(name), group.probabilities(name)))


def test_progress_and_task_meta(net: FrozenNet, data) -> None:
    calls = []
    bank = train_masks(
        net, {"a": data["sp500/calm"]}, progress=lambda s, n, losses: calls.append((s, n, losses)),
        task_meta={"a": {"market": "sp500", "regime": "calm"}}, seed=SEED, steps=25, batch_size=16,
    )
    assert [c[0] for c in calls] == [10, 20, 25] and all(c[1] == 25 for c in calls)
    assert set(calls[-1][2]) == {"a"} and np.isfinite(calls[-1][2]["a"])
    meta = bank.meta("a")
    assert meta["market"] == "sp500" and meta["method"] == "edge_popup" and meta["n_train"] == 300
    with pytest.raises(ValueError, match="reserved"):
        train_masks(net, {"a": data["sp500/calm"]}, task_meta={"a": {"n_train": 1}}, **FAST)
    with pytest.raises(ValueError, match="JSON"):
        train_masks(net, {"a": data["sp500/calm"]}, task_meta={"a": {"when": object()}}, **FAST)
    with pytest.raises(ValueError, match="not being trained"):
        train_masks(net, {"a": data["sp500/calm"]}, task_meta={"b": {}}, **FAST)


def test_bad_arguments_are_refused_with_the_task_named(net: FrozenNet, data) -> None:
    x, y = data["sp500/calm"]
    with pytest.raises(ValueError, match="unknown mask method 'popup'.*edge_popup"):
        train_masks(net, {"a": (x, y)}, method="popup")
    with pytest.raises(ValueError, match="'a'.*labels"):
        train_masks(net, {"a": (x, y + 3)}, **FAST)
    with pytest.raises(ValueError, match="'a'.*X must be shaped"):
        train_masks(net, {"a": (x[:, :4], y)}, **FAST)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="'a'.*non-finite.*row 7"):
        train_masks(net, {"a": (bad, y)}, **FAST)
    with pytest.raises(ValueError, match="density"):
        train_masks(net, {"a": (x, y)}, density=0.0)
    with pytest.raises(ValueError, match="keeps no weight"):
        train_masks(net, {"a": (x, y)}, density=1e-4)
    with pytest.raises(ValueError, match="bank was built"):
        train_masks(FrozenNet(SIZES, seed=1), {"a": (x, y)}, bank=train_masks(net, {}), **FAST)


def test_bfloat16_compute_trains_exact_density_masks_that_learn_and_leave_the_base_untouched(net: FrozenNet, data) -> None:
    """bf16 GEMMs (fp32 scores and optimiser): the same contracts as float32 training, other bits."""
    before = [w.clone() for w in net.weights]
    tasks = {"a": data["sp500/calm"], "b": data["sp500/ALL"]}
    low = train_masks(net, tasks, density=0.3, steps=150, batch_size=64, seed=SEED, compute_dtype="bfloat16")
    full = train_masks(net, tasks, density=0.3, steps=150, batch_size=64, seed=SEED)
    assert all(torch.equal(w, b) for w, b in zip(net.weights, before))
    for name, (x, y) in tasks.items():
        for (o, i), m in zip(net.shapes, low[name].layers):
            assert int(m.sum()) == round(0.3 * o * i)
        assert low.meta(name)["compute_dtype"] == "bfloat16" and "compute_dtype" not in full.meta(name)
        acc = {k: float((net(torch.from_numpy(x), mask=b[name]).argmax(1).numpy() == y).mean())
               for k, b in (("low", low), ("full", full))}
        assert acc["low"] > 0.9 and abs(acc["low"] - acc["full"]) < 0.05, acc
    assert not all(same_bits(low[n], full[n]) for n in tasks)  # a different computation


def test_bfloat16_task_trains_the_same_alone_or_in_a_group_on_one_thread(net: FrozenNet, data) -> None:
    a, b = data["sp500/calm"], data["sp500/ALL"]
    kw = {"seed": SEED, "steps": 40, "batch_size": 32, "compute_dtype": "bfloat16"}
    alone = train_masks(net, {"a": a}, **kw)
    group = train_masks(net, {"b": b, "a": a}, **kw)
    assert same_bits(alone["a"], group["a"])


def test_a_compute_dtype_that_is_not_offered_is_refused(net: FrozenNet, data) -> None:
    with pytest.raises(ValueError, match=r"compute_dtype must be one of \['bfloat16', 'float32'\], got 'float16'"):
        train_masks(net, {"a": data["sp500/calm"]}, compute_dtype="float16", **FAST)
    with pytest.raises(ValueError, match="needs a straight-through form.*hard_concrete"):
        train_masks(net, {"a": data["sp500/calm"]}, method="hard_concrete", compute_dtype="bfloat16", **FAST)
