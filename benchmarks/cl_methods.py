"""Continual learners behind one protocol, compared by ``benchmarks/cl_digits.py``.

Every learner sees the tasks in order and answers the same questions::

    learner.learn({name: (X, y), ...})   # X float32 [N, in], y int64 [N]; tasks learned in order
    learner.predict(name, X)             # scores [N, classes] of task `name` (argmax = prediction)
    learner.infer_task(X, names)         # the task of batch X, without its id (infers_task only)
    learner.params_added(name)           # values stored for task `name` alone
    learner.bytes_added(name)            # their bytes as stored (float32: 4 a value; mask bits: 1/8)
    learner.shared_params, learner.shared_bytes   # what every task uses (a trunk, a net)

Budget: every method gets the same ``Budget`` per task (steps, mini-batch size drawn with
replacement from the task's training rows, seed). Dense methods train with Adam (lr 1e-3, as the
dense baseline of ``cl_digits.py`` always did); supermasks with ``train_masks``' SGD (defaults:
lr 0.1, momentum 0.9, weight decay 1e-4, cosine schedule; ``cl_digits.py`` gives hard-concrete
its own lr, weight decay and temperature). ``batched`` learners (supermasks)
may be handed several tasks at once: each mask's bits do not depend on which tasks share its
group. ``variants`` are read-outs of one training run (hard-concrete: its deterministic bits and
its stochastic keep probabilities), each scored as its own method.

Methods (``sizes = (in, hidden..., classes)``):

- ``Supermasks``: one mask per task on a frozen random net (``supsup_fin.masks``), edge-popup or
  hard-concrete; task inference by the package's one-shot ``infer_task``.
- ``FineTuning``: one dense net trained on every task in turn.
- ``MultiHead``: a dense trunk (the hidden layers) trained on every task in turn, a head per task.
- ``Progressive``: a new dense column per task (Rusu et al. 2016) with linear lateral connections
  from every frozen earlier column's previous hidden layer into each of its layers after the
  first; earlier columns never change.
- ``Adapters``: a dense trunk trained with task 0 and then frozen; per task a residual bottleneck
  adapter (down, ReLU, up; up starts at zero) after each hidden layer, and a head.
- ``ExpertGate``: per task a dense expert and an undercomplete autoencoder on the inputs
  (Aljundi et al. 2017); without an id the batch goes to the expert whose autoencoder
  reconstructs it best (lowest mean squared error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from supsup_fin.masks import FrozenNet, MaskBank, infer_task, predict_proba, train_masks

TaskData = tuple[np.ndarray, np.ndarray]
DENSE_LR = 1e-3


@dataclass(frozen=True)
class Budget:
    """Training budget of one task, the same for every method."""

    steps: int = 300
    batch: int = 128
    seed: int = 0


def _tensors(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _inputs(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


def fit(params: Iterable[nn.Parameter], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor, y: torch.Tensor, budget: Budget, stream: int) -> None:
    """``budget.steps`` Adam steps on ``loss(xb, yb)``, mini-batches drawn with replacement.

    ``stream`` (e.g. the task's index) and ``budget.seed`` seed the batch draws.
    """
    opt = torch.optim.Adam(list(params), lr=DENSE_LR)
    g = torch.Generator().manual_seed(budget.seed * 1_000_003 + stream)
    for _ in range(budget.steps):
        i = torch.randint(len(x), (budget.batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss(x[i], y[i]).backward()
        opt.step()


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with torch's default initialisers drawing from ``seed`` (global RNG restored)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def mlp(sizes: Sequence[int], out_relu: bool = False) -> nn.Sequential:
    """Linear layers with biases and ReLU between them (and after the last with ``out_relu``)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or out_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def accuracy(scores: torch.Tensor, y: np.ndarray) -> float:
    return float((scores.argmax(1).numpy() == y).mean())


class Learner:
    """The protocol with its defaults: a sequential learner implements ``_learn_one`` (task ``k``),
    ``_scores`` (task ``k``'s outputs) and ``params_added``."""

    label = ""
    batched = False
    infers_task = False
    uses_task_id = True
    variants: tuple[str, ...] = ("",)
    shared_params = 0

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.names: list[str] = []

    @property
    def shared_bytes(self) -> int:
        return 4 * self.shared_params

    def learn(self, tasks: Mapping[str, TaskData]) -> None:
        for name, (x, y) in tasks.items():
            self.names.append(name)
            self._learn_one(len(self.names) - 1, *_tensors(x, y))

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def predict(self, name: str, X: np.ndarray, variant: str = "") -> torch.Tensor:
        with torch.no_grad():
            return self._scores(self.names.index(name), _inputs(X))

    def _scores(self, k: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def infer_task(self, X: np.ndarray, names: Sequence[str]) -> str:
        raise NotImplementedError(f"{type(self).__name__} cannot infer a task without its id")

    def params_added(self, name: str) -> int:
        raise NotImplementedError

    def bytes_added(self, name: str, variant: str = "") -> int:
        return 4 * self.params_added(name)


class Supermasks(Learner):
    """One supermask per task on ``FrozenNet(sizes, superfluous=...)``, via ``train_masks``.

    ``form="hard_concrete"`` stores keep probabilities too and has two variants: ``"bits"``
    (deterministic, ``p > 0.5``) and ``"stochastic"`` (softmax averaged over ``samples`` masks
    drawn from the probabilities; its bytes count the uint8 probabilities beside the bits).
    """

    batched = True
    infers_task = True

    def __init__(self, sizes: Sequence[int], budget: Budget, form: str = "edge_popup", superfluous: int = 100,
                 density: float = 0.5, samples: int = 16, lr: float = 0.1, weight_decay: float = 1e-4,
                 form_options: Mapping[str, object] | None = None) -> None:
        super().__init__(budget)
        self.net = FrozenNet(sizes, seed=budget.seed, superfluous=superfluous)
        self.bank = MaskBank(self.net)
        self.form, self.density, self.samples = form, density, samples
        self.sgd = {"lr": lr, "weight_decay": weight_decay, "form_options": dict(form_options or {})}
        self.stochastic = form == "hard_concrete"
        self.variants = ("bits", "stochastic") if self.stochastic else ("",)
        self.label = {"edge_popup": "supermasks, edge-popup", "hard_concrete": "supermasks, hard-concrete"}[form]
        self.n_weights = sum(o * i for o, i in self.net.shapes)
        self.shared_params = self.n_weights  # frozen, rebuilt from the seed: nothing stored

    @property
    def shared_bytes(self) -> int:
        return 0

    def learn(self, tasks: Mapping[str, TaskData]) -> None:
        self.bank = train_masks(self.net, dict(tasks), method=self.form, density=self.density,
                                steps=self.budget.steps, batch_size=self.budget.batch, seed=self.budget.seed,
                                bank=self.bank, store_probabilities=self.stochastic, **self.sgd)
        self.names.extend(tasks)

    def predict(self, name: str, X: np.ndarray, variant: str = "") -> torch.Tensor:
        mode = "stochastic" if variant == "stochastic" else "deterministic"
        return predict_proba(self.net, self.bank, name, X, mode=mode, samples=self.samples, seed=self.budget.seed)

    def infer_task(self, X: np.ndarray, names: Sequence[str]) -> str:
        return infer_task(self.net, self.bank, X, names=list(names)).task

    def params_added(self, name: str) -> int:
        return self.n_weights  # one bit per weight (and one probability per weight when stochastic)

    def bytes_added(self, name: str, variant: str = "") -> int:
        bits = sum((o * i + 7) // 8 for o, i in self.net.shapes)
        return bits + (self.n_weights if variant == "stochastic" else 0)


class FineTuning(Learner):
    """One dense net ``sizes`` trained on each task in turn (nothing added per task)."""

    label = "fine-tuning (one dense net)"
    uses_task_id = False

    def __init__(self, sizes: Sequence[int], budget: Budget) -> None:
        super().__init__(budget)
        self.net = seeded(budget.seed, lambda: mlp(sizes))
        self.shared_params = n_params(self.net)

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        fit(self.net.parameters(), lambda xb, yb: F.cross_entropy(self.net(xb), yb), x, y, self.budget, k)

    def _scores(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def params_added(self, name: str) -> int:
        return 0


class MultiHead(Learner):
    """A dense trunk ``sizes[:-1]`` trained on each task in turn, with a new linear head per task."""

    label = "multi-head (shared trunk)"

    def __init__(self, sizes: Sequence[int], budget: Budget) -> None:
        super().__init__(budget)
        self.sizes = tuple(sizes)
        self.trunk = seeded(budget.seed, lambda: mlp(sizes[:-1], out_relu=True))
        self.heads = nn.ModuleList()
        self.shared_params = n_params(self.trunk)

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        head = seeded(self.budget.seed + 1 + k, lambda: nn.Linear(*self.sizes[-2:]))
        self.heads.append(head)
        params = [*self.trunk.parameters(), *head.parameters()]
        fit(params, lambda xb, yb: F.cross_entropy(head(self.trunk(xb)), yb), x, y, self.budget, k)

    def _scores(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self.heads[k](self.trunk(x))

    def params_added(self, name: str) -> int:
        return n_params(self.heads[self.names.index(name)])


class Progressive(Learner):
    """Progressive networks: column ``k`` is a dense net ``sizes``; each of its layers after the
    first also gets ``U (h^(0), ..., h^(k-1))``, a bias-free linear lateral from the frozen earlier
    columns' activations at the previous hidden layer, so column ``k`` adds ``k`` laterals' worth."""

    label = "progressive nets"

    def __init__(self, sizes: Sequence[int], budget: Budget) -> None:
        super().__init__(budget)
        self.sizes = tuple(sizes)
        self.columns = nn.ModuleList()

    def _new_column(self, k: int) -> nn.Module:
        s, col = self.sizes, nn.Module()
        col.layers = nn.ModuleList(nn.Linear(s[i], s[i + 1]) for i in range(len(s) - 1))
        col.laterals = nn.ModuleList(nn.Linear(k * s[i], s[i + 1], bias=False) for i in range(1, len(s) - 1) if k)
        return col

    def _column(self, j: int, x: torch.Tensor, earlier: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Column ``j`` on ``x`` given ``earlier[l]``, columns ``0..j-1``'s hidden layer ``l``
        side by side: (outputs, its hidden activations)."""
        col, h, hidden = self.columns[j], x, []
        last = len(col.layers) - 1
        for i, layer in enumerate(col.layers):
            z = layer(h)
            if i and j:
                z = z + col.laterals[i - 1](earlier[i - 1])
            h = torch.relu(z) if i < last else z
            hidden.append(h)
        return h, hidden[:-1]

    def _earlier(self, k: int, x: torch.Tensor) -> list[torch.Tensor]:
        """Hidden activations of columns ``0..k-1`` on ``x``, side by side per layer ``[N, k * width]``."""
        acts: list[list[torch.Tensor]] = [[] for _ in self.sizes[1:-1]]
        for j in range(k):
            _, hidden = self._column(j, x, [torch.cat(a, 1) for a in acts] if j else [])
            for a, h in zip(acts, hidden):
                a.append(h)
        return [torch.cat(a, 1) for a in acts] if k else []

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.columns.append(seeded(self.budget.seed + k, lambda: self._new_column(k)))
        with torch.no_grad():  # the earlier columns are frozen: their activations are fixed inputs
            xe = torch.cat([x, *self._earlier(k, x)], 1)
        cuts = list(np.cumsum([self.sizes[0], *(k * w for w in self.sizes[1:-1])])[:-1])

        def loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            xb, *earlier = torch.tensor_split(xb, cuts, dim=1)
            return F.cross_entropy(self._column(k, xb, earlier)[0], yb)

        fit(self.columns[k].parameters(), loss, xe, y, self.budget, k)

    def _scores(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self._column(k, x, self._earlier(k, x))[0]

    def params_added(self, name: str) -> int:
        return n_params(self.columns[self.names.index(name)])


class Adapters(Learner):
    """A dense trunk ``sizes[:-1]`` trained with task 0, then frozen; per task a residual
    bottleneck adapter ``h + up(relu(down(h)))`` after each hidden layer and a linear head."""

    label = "adapters (frozen trunk)"

    def __init__(self, sizes: Sequence[int], budget: Budget, bottleneck: int = 16) -> None:
        super().__init__(budget)
        self.sizes, self.bottleneck = tuple(sizes), bottleneck
        widths = list(pairwise(sizes[:-1]))
        self.trunk = seeded(budget.seed, lambda: nn.ModuleList(nn.Linear(a, b) for a, b in widths))
        self.shared_params = n_params(self.trunk)
        self.tasks = nn.ModuleList()

    def _new_task(self) -> nn.Module:
        task = nn.Module()
        task.down = nn.ModuleList(nn.Linear(w, self.bottleneck) for w in self.sizes[1:-1])
        task.up = nn.ModuleList(nn.Linear(self.bottleneck, w) for w in self.sizes[1:-1])
        for up in task.up:  # the adapter starts as the identity
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        task.head = nn.Linear(*self.sizes[-2:])
        return task

    def _forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        task, h = self.tasks[k], x
        for layer, down, up in zip(self.trunk, task.down, task.up):
            h = torch.relu(layer(h))
            h = h + up(torch.relu(down(h)))
        return task.head(h)

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.tasks.append(seeded(self.budget.seed + 1 + k, self._new_task))
        params = [*self.tasks[k].parameters(), *(self.trunk.parameters() if k == 0 else [])]
        self.trunk.requires_grad_(k == 0)
        fit(params, lambda xb, yb: F.cross_entropy(self._forward(k, xb), yb), x, y, self.budget, k)
        self.trunk.requires_grad_(False)

    _scores = _forward

    def params_added(self, name: str) -> int:
        return n_params(self.tasks[self.names.index(name)])


class ExpertGate(Learner):
    """Per task a dense expert ``sizes`` and an autoencoder ``in -> code (ReLU) -> in`` trained on
    the task's inputs (mean squared error); the gate picks the autoencoder with the lowest error."""

    label = "expert gate"
    infers_task = True

    def __init__(self, sizes: Sequence[int], budget: Budget, code: int = 16) -> None:
        super().__init__(budget)
        self.sizes, self.code = tuple(sizes), code
        self.experts, self.gates = nn.ModuleList(), nn.ModuleList()

    def _learn_one(self, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
        expert = seeded(self.budget.seed + k, lambda: mlp(self.sizes))
        gate = seeded(self.budget.seed + k, lambda: mlp((self.sizes[0], self.code, self.sizes[0])))
        self.experts.append(expert)
        self.gates.append(gate)
        fit(expert.parameters(), lambda xb, yb: F.cross_entropy(expert(xb), yb), x, y, self.budget, k)
        fit(gate.parameters(), lambda xb, _: F.mse_loss(gate(xb), xb), x, y, self.budget, k)

    def _scores(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[k](x)

    def reconstruction_errors(self, X: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Mean squared reconstruction error of the batch ``X`` under each named task's autoencoder."""
        x = _inputs(X)
        with torch.no_grad():
            return np.array([float(F.mse_loss(self.gates[self.names.index(n)](x), x)) for n in names])

    def infer_task(self, X: np.ndarray, names: Sequence[str]) -> str:
        return names[int(np.argmin(self.reconstruction_errors(X, names)))]

    def params_added(self, name: str) -> int:
        k = self.names.index(name)
        return n_params(self.experts[k], self.gates[k])
