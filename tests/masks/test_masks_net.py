"""FrozenNet, Mask, forward/superposition, mask-form registry and analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supsup_fin.masks import MASK_FORMS, FrozenNet, Mask, jaccard_matrix, layer_densities
from supsup_fin.masks.forms import get_form
from conftest import SEED

# sha256 of FrozenNet((8, 16, 4), seed=0): sizes as <i8, then each weight's <f4 bytes.
REFERENCE_HASH = "03cc9bbf76375aacc373f44ea812cd5486dc9cb2f6723417e8197080abcd701e"
SIZES = (16, 64, 64, 3)


def random_mask(net: FrozenNet, density: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask([torch.rand(shape, generator=g) < density for shape in net.shapes])


@pytest.fixture(scope="module")
def net() -> FrozenNet:
    return FrozenNet(SIZES, seed=0)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(SEED).normal(size=(40, SIZES[0])).astype(np.float32))


def test_reference_network_hash_is_pinned() -> None:
    assert FrozenNet((8, 16, 4), seed=0).weights_hash() == REFERENCE_HASH


def test_same_seed_same_net_other_seed_differs() -> None:
    a, b, c = FrozenNet(SIZES, seed=3), FrozenNet(SIZES, seed=3), FrozenNet(SIZES, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.weights, b.weights))
    assert a.weights_hash() == b.weights_hash() != c.weights_hash()
    assert not torch.equal(a.weights[1], c.weights[1])


def test_weights_are_signed_kaiming_constants(net: FrozenNet) -> None:
    for (out_f, in_f), w in zip(net.shapes, net.weights):
        assert w.shape == (out_f, in_f) and w.dtype == torch.float32 and not w.requires_grad
        scale = np.float32(math.sqrt(2.0 / in_f))
        assert set(w.abs().unique().tolist()) == {float(scale)}
        assert 0.3 < (w > 0).float().mean().item() < 0.7
    # layers draw from distinct streams, not one stream cut into pieces
    assert not torch.equal(net.weights[1][:, :16].sign(), net.weights[0][:64].sign())


def test_bad_sizes_and_seed_are_refused() -> None:
    for sizes in [(4,), (4, 0, 2), (4, 2.5, 2)]:
        with pytest.raises(ValueError, match="sizes"):
            FrozenNet(sizes, seed=0)
    with pytest.raises(ValueError, match="seed"):
        FrozenNet((4, 2), seed=-1)


def test_dense_and_masked_forward_match_manual(net: FrozenNet, x: torch.Tensor) -> None:
    w0, w1, w2 = net.weights
    manual = torch.relu(torch.relu(x @ w0.t()) @ w1.t()) @ w2.t()
    assert torch.equal(net(x), manual)
    assert torch.equal(net(x.numpy()), manual)
    frozen = x.numpy().astype(np.float64)[::-1]
    frozen.flags.writeable = False  # read-only, strided, float64: converted without a warning
    assert torch.allclose(net(frozen), manual.flip(0), rtol=0, atol=1e-6)
    ones = Mask([torch.ones(s, dtype=torch.bool) for s in net.shapes])
    assert torch.equal(net(x, mask=ones), manual)
    m = random_mask(net, 0.5, SEED)
    l0, l1, l2 = (w * k for w, k in zip(net.weights, m.layers))
    assert torch.equal(net(x, mask=m), torch.relu(torch.relu(x @ l0.t()) @ l1.t()) @ l2.t())


def test_forward_rejects_bad_input(net: FrozenNet, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        net(x[:, :5])
    with pytest.raises(ValueError, match="shapes"):
        net(x, mask=random_mask(FrozenNet((16, 8, 3)), 0.5, 0))
    with pytest.raises(ValueError, match="both"):
        net(x, masks={"a": random_mask(net, 0.5, 0)})
    with pytest.raises(ValueError, match="not among"):
        net(x, masks={"a": random_mask(net, 0.5, 0)}, alphas={"b": 1.0})


def test_superposition_of_one_mask_equals_that_mask(net: FrozenNet, x: torch.Tensor) -> None:
    masks = {"a": random_mask(net, 0.5, 1), "b": random_mask(net, 0.5, 2)}
    out = net(x, masks=masks, alphas={"a": 1.0})
    assert torch.allclose(out, net(x, mask=masks["a"]), rtol=0, atol=1e-6)


def test_scalar_superposition_is_w_times_weighted_mask_sum(net: FrozenNet, x: torch.Tensor) -> None:
    masks = {"a": random_mask(net, 0.5, 1), "b": random_mask(net, 0.3, 2)}
    mixed = Mask([0.3 * a.float() + 0.7 * b.float() for a, b in zip(masks["a"].layers, masks["b"].layers)])
    out = net(x, masks=masks, alphas={"a": 0.3, "b": 0.7})
    assert torch.allclose(out, net(x, mask=mixed), rtol=0, atol=1e-6)


def test_per_row_alphas_match_row_wise_outputs(net: FrozenNet, x: torch.Tensor) -> None:
    masks = {"a": random_mask(net, 0.5, 1), "b": random_mask(net, 0.5, 2), "c": random_mask(net, 0.7, 3)}
    n = x.shape[0]
    pick = torch.arange(n) % 3
    onehot = {name: (pick == i).float() for i, name in enumerate(masks)}
    out = net(x, masks=masks, alphas={k: v.numpy() for k, v in onehot.items()})
    for i in range(n):
        single = net(x[i : i + 1], mask=masks["abc"[int(pick[i])]])
        assert torch.allclose(out[i : i + 1], single, rtol=0, atol=1e-6)
    alpha = torch.linspace(0, 1, n)
    out = net(x, masks=masks, alphas={"a": alpha, "b": 1 - alpha, "c": 0.25})
    for i in range(n):
        row = net(x[i : i + 1], masks=masks, alphas={"a": alpha[i], "b": 1 - alpha[i], "c": 0.25})
        assert torch.allclose(out[i : i + 1], row, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="scalar or shaped"):
        net(x, masks=masks, alphas={"a": alpha[:-1]})


def test_gradient_reaches_alphas(net: FrozenNet, x: torch.Tensor) -> None:
    masks = {"a": random_mask(net, 0.5, 1), "b": random_mask(net, 0.5, 2)}
    alphas = {k: torch.tensor(0.5, requires_grad=True) for k in masks}
    probs = net(x, masks=masks, alphas=alphas).softmax(dim=1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean()
    entropy.backward()
    assert all(a.grad is not None and torch.isfinite(a.grad) for a in alphas.values())


def test_mask_is_immutable_and_reports_density(net: FrozenNet) -> None:
    m = random_mask(net, 0.5, 0)
    with pytest.raises(AttributeError):
        m.foo = 1  # type: ignore[attr-defined]
    kept = sum(int(layer.sum()) for layer in m.layers)
    assert m.density() == kept / m.numel()
    assert layer_densities(m) == [int(layer.sum()) / layer.numel() for layer in m.layers]
    with pytest.raises(ValueError, match="bool or floating"):
        Mask([torch.ones(2, 2, dtype=torch.int64)])


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="edge_popup.*threshold"):
        get_form("popup")
    assert set(MASK_FORMS) >= {"edge_popup", "threshold"}


def test_jaccard_matrix_known_values() -> None:
    def mk(bits: list[int]) -> Mask:
        return Mask([torch.tensor(bits, dtype=torch.bool).view(1, 4)])

    bank = {"a": mk([1, 1, 0, 0]), "b": mk([1, 0, 1, 0]), "c": mk([0, 0, 0, 0]), "d": mk([0, 0, 0, 0])}
    names, j = jaccard_matrix(bank)
    assert names == ["a", "b", "c", "d"]
    assert j[0, 1] == j[1, 0] == pytest.approx(1 / 3)
    assert j[0, 2] == 0.0 and j[2, 3] == 1.0
    assert np.all(np.diag(j) == 1.0)
    names, j = jaccard_matrix(bank, names=["b", "a"])
    assert names == ["b", "a"] and j.shape == (2, 2)
    with pytest.raises(ValueError, match="no mask named"):
        jaccard_matrix(bank, names=["zz"])
