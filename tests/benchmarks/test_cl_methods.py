"""The continual learners of ``benchmarks/cl_methods.py`` and the scoring of ``benchmarks/cl_digits.py``.

Known answers: fine-tuning forgets a task whose labels the next task contradicts; progressive
nets, adapters and supermasks leave earlier tasks' outputs bit-identical; the expert gate picks
the right expert on tasks living in disjoint input coordinates; parameter counts by hand; BWT
and forgetting of a scripted learner. Every method also runs a tiny benchmark (few steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SEED, blobs

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from cl_digits import run_method  # noqa: E402
from cl_methods import Budget, Learner, accuracy  # noqa: E402
from cl_methods import Adapters, ExpertGate, FineTuning, MultiHead, Progressive, Supermasks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM, CLASSES = 16, 3
SIZES = (DIM, 32, 32, CLASSES)
TINY = Budget(steps=40, batch=32, seed=SEED)

LEARNERS = {
    "edge_popup": lambda b: Supermasks(SIZES, b, "edge_popup", superfluous=4),
    "hard_concrete": lambda b: Supermasks(SIZES, b, "hard_concrete", superfluous=4, samples=4, lr=30.0,
                                          weight_decay=0.0),
    "fine_tuning": lambda b: FineTuning(SIZES, b),
    "multi_head": lambda b: MultiHead(SIZES, b),
    "progressive": lambda b: Progressive((DIM, 8, 8, CLASSES), b),
    "adapters": lambda b: Adapters(SIZES, b, bottleneck=4),
    "expert_gate": lambda b: ExpertGate(SIZES, b, code=4),
}


def permuted(n_tasks: int, n: int = 120) -> dict[str, tuple[np.ndarray, ...]]:
    """``n_tasks`` tasks on the same blobs, each with its own fixed permutation of the inputs."""
    x, y = blobs(SEED, n=n, classes=CLASSES, dim=DIM)
    rng = np.random.default_rng(SEED + 1)
    tasks = {}
    for t in range(n_tasks):
        p = rng.permutation(DIM)
        tasks[f"t{t}"] = (x[: n // 2, p], y[: n // 2], x[n // 2 :, p], y[n // 2 :])
    return tasks


def test_fine_tuning_forgets_a_task_the_next_one_contradicts() -> None:
    x, y = blobs(SEED, n=120, classes=CLASSES, dim=DIM)
    learner = FineTuning(SIZES, Budget(steps=100, batch=32, seed=SEED))
    learner.learn({"a": (x, y)})
    before = accuracy(learner.predict("a", x), y)
    learner.learn({"b": (x, (y + 1) % CLASSES)})  # same inputs, every label moved to another class
    assert before == 1.0
    assert accuracy(learner.predict("a", x), y) == 0.0
    assert accuracy(learner.predict("b", x), (y + 1) % CLASSES) == 1.0


@pytest.mark.parametrize("method", ["progressive", "adapters", "edge_popup", "hard_concrete", "expert_gate"])
def test_learning_more_tasks_leaves_earlier_outputs_bit_identical(method: str) -> None:
    tasks = permuted(3)
    learner = LEARNERS[method](TINY)
    learner.learn({"t0": tasks["t0"][:2]})
    before = {v: learner.predict("t0", tasks["t0"][2], v) for v in learner.variants}
    learner.learn({n: tasks[n][:2] for n in ("t1", "t2")})
    for v, out in before.items():
        assert torch.equal(learner.predict("t0", tasks["t0"][2], v), out), v


def test_the_shared_trunk_drifts_so_multi_head_outputs_change() -> None:
    tasks = permuted(2)
    learner = MultiHead(SIZES, TINY)
    learner.learn({"t0": tasks["t0"][:2]})
    before = learner.predict("t0", tasks["t0"][2])
    learner.learn({"t1": tasks["t1"][:2]})
    assert not torch.equal(learner.predict("t0", tasks["t0"][2]), before)


def test_expert_gate_picks_the_right_expert_on_disjoint_inputs() -> None:
    # Task t's inputs live on coordinates [4t, 4t + 4) only: its autoencoder alone reconstructs them.
    x, y = blobs(SEED, n=160, classes=CLASSES, dim=4)
    tasks = {}
    for t in range(3):
        xt = np.zeros((len(x), DIM), np.float32)
        xt[:, 4 * t : 4 * t + 4] = x
        tasks[f"t{t}"] = (xt[:80], y[:80], xt[80:], y[80:])
    gate = ExpertGate(SIZES, Budget(steps=300, batch=32, seed=SEED), code=8)
    gate.learn({n: d[:2] for n, d in tasks.items()})
    names = list(tasks)
    for n, (_, _, xte, _) in tasks.items():
        assert gate.infer_task(xte, names) == n
        assert [gate.infer_task(xte[i : i + 8], names) for i in range(0, 80, 8)] == [n] * 10
        errors = gate.reconstruction_errors(xte, names)
        assert errors[names.index(n)] * 2 < np.delete(errors, names.index(n)).min()


def test_parameters_added_per_task_match_the_architecture() -> None:
    tasks = permuted(3)
    data = {n: d[:2] for n, d in tasks.items()}
    one = Budget(steps=1, batch=8, seed=SEED)
    prog = Progressive((DIM, 8, 8, CLASSES), one)
    prog.learn(data)
    column = (16 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    laterals = 8 * 8 + 8 * 3  # into the second hidden layer and the output, per earlier column
    assert [prog.params_added(n) for n in data] == [column, column + laterals, column + 2 * laterals]
    adapters = Adapters(SIZES, one, bottleneck=4)
    adapters.learn(data)
    assert adapters.shared_params == (16 * 32 + 32) + (32 * 32 + 32)
    assert adapters.params_added("t2") == 2 * ((32 * 4 + 4) + (4 * 32 + 32)) + (32 * 3 + 3)
    heads = MultiHead(SIZES, one)
    heads.learn(data)
    assert (heads.shared_params, heads.params_added("t1"), heads.bytes_added("t1")) == (1600, 99, 396)
    gate = ExpertGate(SIZES, one, code=4)
    gate.learn(data)
    assert gate.params_added("t0") == (16 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3) + (16 * 4 + 4 + 4 * 16 + 16)
    masks = Supermasks(SIZES, one, "hard_concrete", superfluous=4)
    n_weights = 16 * 32 + 32 * 32 + 32 * 7
    assert (masks.params_added("t0"), masks.bytes_added("t0", "bits"), masks.bytes_added("t0", "stochastic")) == (
        n_weights, n_weights // 8, n_weights // 8 + n_weights)


class Scripted(Learner):
    """Predicts task ``name`` right on ``script[name][i]`` of its 4 test rows after ``i + 1`` tasks."""

    label = "scripted"

    def __init__(self, script: dict[str, list[int]]) -> None:
        super().__init__(Budget())
        self.script = script

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        pass

    def predict(self, name: str, X: np.ndarray, variant: str = "") -> torch.Tensor:
        right = self.script[name][len(self.names) - 1]
        return torch.tensor([[1.0, 0.0]] * right + [[0.0, 1.0]] * (len(X) - right))

    def params_added(self, name: str) -> int:
        return 10


def test_bwt_and_forgetting_of_a_scripted_learner() -> None:
    x, y = np.zeros((4, DIM), np.float32), np.zeros(4, np.int64)
    tasks = {n: (x, y, x, y) for n in ("a", "b", "c")}
    # Accuracy of a after 1, 2, 3 tasks: 0.5, 1, 0.75 (its best after learning b); of b after 2, 3:
    # 1, 0; of c: 0.5.
    script = {"a": [2, 4, 3], "b": [0, 4, 0], "c": [0, 0, 2]}
    (row,) = run_method(Scripted(script), tasks, group=1, report_at=[3], batches16=0)
    last = row["curve"][-1]
    assert [f["tasks"] for f in row["curve"]] == [1, 2, 3]
    assert last["avg_acc"] == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert last["bwt"] == pytest.approx(((0.75 - 0.5) + (0 - 1)) / 2)
    assert last["forgetting"] == pytest.approx(((1 - 0.75) + (1 - 0)) / 2)
    assert row["curve"][1]["forgetting"] == pytest.approx(0.5 - 1)  # a improved: negative forgetting
    assert (last["bytes_added"], last["bytes_total"]) == (40, 120)


@pytest.mark.parametrize("method", list(LEARNERS))
def test_tiny_benchmark_of_each_method(method: str) -> None:
    tasks = permuted(4)
    learner = LEARNERS[method](TINY)
    rows = run_method(learner, tasks, group=2, report_at=[2, 4], batches16=2)
    assert len(rows) == len(learner.variants)
    for row in rows:
        assert [f["tasks"] for f in row["curve"]] == [2, 4]
        last = row["curve"][-1]
        assert set(row["per_task_acc"]) == set(tasks)
        assert last["avg_acc"] > 0.5  # three well-separated classes: chance is 1/3
        if learner.infers_task:
            assert last["n_infer_b16"] == 4 * 2 and "acc_no_id" in last
        if method in ("progressive", "adapters", "edge_popup", "hard_concrete", "expert_gate"):
            assert last["bwt"] == 0.0 and last["forgetting"] == 0.0
