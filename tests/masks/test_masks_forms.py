"""Mask forms: exact and Erdős–Rényi densities, straight-through gradients, the fused trainer's
gradients, hard-concrete's expected L0 and its stochastic inference with p stored as uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supsup_fin.masks import (
    MASK_FORMS,
    FrozenNet,
    HardConcrete,
    MaskBank,
    erdos_renyi_densities,
    get_form,
    layer_densities,
    predict_proba,
    sample_masks,
    train_masks,
)
from supsup_fin.masks.bank import dequantize_probs, quantize_probs
from supsup_fin.masks import _topk
from supsup_fin.masks.forms import kept_count
from supsup_fin.masks.fused import StepBuffers, batched_logits, supermask_logits
from conftest import SEED, blobs

SIZES = (16, 48, 40, 3)
FAST = {"steps": 40, "batch_size": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_every_form_and_rejects_unknown_names_and_options():
    assert set(MASK_FORMS) == {"edge_popup", "threshold", "hard_concrete"}
    with pytest.raises(ValueError, match="edge_popup, hard_concrete, threshold"):
        get_form("bogus")
    with pytest.raises(ValueError, match=r"no option\(s\) \['tau'\]; valid: \['erdos_renyi', 'init_scale'\]"):
        get_form("edge_popup", tau=1.0)
    assert get_form("hard_concrete", tau=1.0, tau_final=0.1).temperature(1.0) == pytest.approx(0.1)


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_edge_popup_density_is_exact_per_layer(density):
    net = FrozenNet(SIZES, seed=SEED)
    bank = train_masks(net, {"a": blobs(SEED)}, density=density, steps=3, batch_size=16)
    for (o, i), m in zip(net.shapes, bank["a"].layers):
        assert int(m.sum()) == kept_count(o * i, density)
    assert bank.meta("a")["density"] == layer_densities(bank["a"])


def test_erdos_renyi_budget_is_exact_overall_and_per_layer():
    shapes = ((48, 16), (40, 48), (3, 40))
    d = erdos_renyi_densities(shapes, 0.4)
    n = [o * i for o, i in shapes]
    assert sum(di * ni for di, ni in zip(d, n)) == pytest.approx(0.4 * sum(n), rel=1e-9)
    assert d[2] > d[1]  # the small output layer is kept denser
    net = FrozenNet(SIZES, seed=SEED)
    bank = train_masks(net, {"a": blobs(SEED)}, density=0.4, steps=3, batch_size=16,
                       form_options={"erdos_renyi": True})
    for (o, i), m, di in zip(net.shapes, bank["a"].layers, d):
        assert int(m.sum()) == kept_count(o * i, di)
    assert bank.meta("a")["form_options"] == {"erdos_renyi": True, "init_scale": 0.01}


@pytest.mark.parametrize("method", ["edge_popup", "threshold"])
def test_straight_through_gradients_reach_scores_and_fused_path_matches_autograd(method):
    form = get_form(method)
    net = FrozenNet(SIZES, seed=SEED)
    g = torch.Generator().manual_seed(SEED)
    scores = [torch.randn(2, o, i, generator=g) for o, i in net.shapes]
    x = torch.randn(2, 8, SIZES[0], generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    dens = [0.5] * 3

    def grads(fused: bool) -> list[torch.Tensor]:
        s = [t.clone().requires_grad_(True) for t in scores]
        if fused:
            out = supermask_logits(net.weights, s, x, form, dens)
        else:
            out = batched_logits(net.weights, [form.make_mask(t, 0.5, training=True) for t in s], x)
        torch.nn.functional.cross_entropy(out.reshape(16, -1), y).backward()
        return [t.grad for t in s]

    auto, fused = grads(False), grads(True)
    assert all(a is not None and bool(a.abs().sum() > 0) for a in auto)  # gradients reach the scores
    for a, f in zip(auto, fused):
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-7)
    # bf16 products (8-bit mantissa), fp32 score gradients: the same direction (a pre-activation
    # near zero may change its ReLU side in bf16, so entries differ by more than bf16's rounding)
    s = [t.clone().requires_grad_(True) for t in scores]
    out = supermask_logits(net.weights, s, x, form, dens, dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    torch.nn.functional.cross_entropy(out.reshape(16, -1), y).backward()
    for a, t in zip(auto, s):
        assert t.grad.dtype == torch.float32
        assert float(torch.nn.functional.cosine_similarity(t.grad.flatten(), a.flatten(), dim=0)) > 0.99
    if method == "edge_popup":  # through |score|: a weight's gradient carries the score's sign
        w, m = net.weights[0], form.hard(scores[0], 0.5)
        assert bool((auto[0] * torch.sign(scores[0]) * w != 0).any())
        assert m.shape == scores[0].shape


def test_threshold_keeps_nonnegative_scores():
    form = get_form("threshold")
    s = torch.tensor([[[-0.5, 0.0, 0.2]]])
    assert form.make_mask(s, 0.5, training=False).tolist() == [[[0.0, 1.0, 1.0]]]


def test_hard_concrete_expected_l0_is_sum_of_p_and_relaxation_samples_bernoulli():
    form = HardConcrete(tau=0.5, l0_lambda=1e-3)
    g = torch.Generator().manual_seed(SEED)
    logits = torch.randn(2, 30, 20, generator=g)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(form.expected_l0(logits), p.flatten(1).sum(1))
    torch.testing.assert_close(form.penalty(logits), 1e-3 * p.flatten(1).sum(1))
    # P(σ((logit + g) / τ) > 0.5) = P(logit + g > 0) = p, so the mean kept count tends to Σp.
    gens = [torch.Generator().manual_seed(SEED + k) for k in range(2)]
    kept = torch.stack([(form.make_mask(logits, 0.5, training=True, generators=gens) > 0.5).flatten(1).sum(1)
                        for _ in range(200)]).double().mean(0)
    torch.testing.assert_close(kept, p.flatten(1).sum(1).double(), rtol=0.02, atol=0)
    # Gradients of the relaxation reach the logits.
    s = logits.clone().requires_grad_(True)
    form.make_mask(s, 0.5, training=True, generators=gens).sum().backward()
    assert bool(s.grad.abs().sum() > 0)
    assert form.final_mask(logits, 0.5).equal(logits > 0)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_hard_concrete_rejects_nonpositive_temperature(bad):
    with pytest.raises(ValueError, match="tau must be a number > 0"):
        HardConcrete(tau=bad)
    with pytest.raises(ValueError, match="tau_final must be a number > 0"):
        train_masks(FrozenNet(SIZES), {"a": blobs(SEED)}, method="hard_concrete", form_options={"tau_final": bad})


def test_hard_concrete_trains_stores_uint8_p_and_infers_both_ways(tmp_path):
    net = FrozenNet(SIZES, seed=SEED)
    x, y = blobs(SEED, 300)
    bank = train_masks(net, {"a": (x, y)}, method="hard_concrete", steps=80, batch_size=64, lr=5.0,
                       form_options={"tau": 1.0, "tau_final": 0.3, "l0_lambda": 1e-5}, store_probabilities=True)
    assert bank.has_probabilities("a") and bank.nbytes_probs() == sum(o * i for o, i in net.shapes)
    probs = bank.probabilities("a")
    bits = bank["a"].layers
    for p, b in zip(probs, bits):  # deterministic bits are p > 0.5 (uint8: 128/255 > 0.5 > 127/255)
        assert torch.equal(p > 0.5, b)
    det = predict_proba(net, bank, "a", x)
    assert float((det.argmax(1).numpy() == y).mean()) > 0.9
    sto = predict_proba(net, bank, "a", x, mode="stochastic", samples=5, seed=SEED)
    # The stochastic output is the mean of the S sampled masks' softmax outputs.
    masks = sample_masks(probs, 5, torch.Generator().manual_seed(SEED))
    manual = sum(torch.softmax(net(x, mask=m), dim=1) for m in masks) / 5
    torch.testing.assert_close(sto, manual)
    assert not all(torch.equal(masks[0].layers[i], masks[1].layers[i]) for i in range(3))
    # p roundtrips through the bank file as uint8.
    loaded = MaskBank.load(bank.save(tmp_path / "bank"), net)
    for a, b in zip(loaded.probabilities("a"), probs):
        assert torch.equal(a, b)
    assert (tmp_path / "bank" / "probs.safetensors").is_file()
    edge = train_masks(net, {"e": (x, y)}, steps=2, batch_size=8)
    with pytest.raises(ValueError, match="stores no keep probabilities"):
        predict_proba(net, edge, "e", x, mode="stochastic")
    with pytest.raises(ValueError, match="needs a form with keep probabilities"):
        train_masks(net, {"e": (x, y)}, steps=2, store_probabilities=True)


def test_uint8_quantisation_roundtrips_within_half_a_step():
    p = torch.rand(7, 9, generator=torch.Generator().manual_seed(SEED))
    q = quantize_probs(p)
    assert q.dtype == np.uint8 and q.shape == (63,)
    back = dequantize_probs(q, (7, 9))
    assert float((back - p).abs().max()) <= 0.5 / 255 + 1e-7
    assert np.array_equal(quantize_probs(back), q)


def test_corrupted_probabilities_are_refused(tmp_path):
    from supsup_fin.errors import MaskFileError

    net = FrozenNet(SIZES, seed=SEED)
    bank = train_masks(net, {"a": blobs(SEED)}, method="hard_concrete", steps=2, batch_size=8,
                       store_probabilities=True)
    path = bank.save(tmp_path / "bank")
    (path / "probs.safetensors").unlink()
    with pytest.raises(MaskFileError, match="probs.safetensors: missing"):
        MaskBank.load(path, net)


def test_masks_config_keys_default_and_reach_the_form():
    from supsup_fin.config import MasksConfig

    cfg = MasksConfig()
    assert cfg.method == "edge_popup" and cfg.superfluous == 0 and not cfg.store_probabilities
    # the pipeline keeps the reference's scale unless asked; the library's default is 0.01
    assert get_form(cfg.method, **cfg.form_options()).options() == {"erdos_renyi": False, "init_scale": 1.0}
    assert MasksConfig(init_scale=0.01).form_options()["init_scale"] == 0.01
    assert get_form("edge_popup").options()["init_scale"] == 0.01
    hc = MasksConfig(method="hard_concrete", tau=1.0, tau_final=0.2, l0_lambda=1e-6)
    form = get_form(hc.method, **hc.form_options())
    assert isinstance(form, HardConcrete) and form.temperature(1.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="tau"):
        MasksConfig(tau=0.0)


def test_worker_transport_packs_bits_and_restores_every_mask_bit_for_bit():
    """to_bits sends eight bits a byte; merge_banks restores the same masks, names and metadata."""
    import pickle

    from supsup_fin.forecaster.training import merge_banks, to_bits

    net = FrozenNet(SIZES, seed=SEED)
    bank = train_masks(net, {f"t{k}": blobs(SEED + k, 200) for k in range(3)}, steps=5, batch_size=32)
    wire = pickle.dumps(to_bits(bank), protocol=5)
    unpacked = pickle.dumps({n: ([m.numpy() for m in bank[n].layers], bank.meta(n)) for n in bank.names}, protocol=5)
    assert len(wire) < len(unpacked) / 4
    back = merge_banks(net, pickle.loads(wire))
    assert back.names == bank.names
    for n in bank.names:
        assert back.meta(n) == bank.meta(n)
        assert all(torch.equal(a, b) for a, b in zip(back[n].layers, bank[n].layers))


def test_keep_probabilities_survive_merges_carry_over_and_worker_transport():
    """Stored p travels with its mask: bank merges, the picklable worker form, champion carry-over."""
    import pickle

    from supsup_fin.forecaster.training import merge_banks, to_bits

    net = FrozenNet(SIZES, seed=SEED)
    hc = train_masks(net, {"p": blobs(SEED, 200)}, method="hard_concrete", steps=5, batch_size=32,
                     store_probabilities=True)
    ep = train_masks(net, {"e": blobs(SEED + 1, 200)}, steps=5, batch_size=32)
    merged = ep.merged(hc)
    assert merged.names == ["e", "p"] and merged.has_probabilities("p") and not merged.has_probabilities("e")
    assert merged.meta("p")["probs_sha256"] == hc.meta("p")["probs_sha256"]
    moved = merge_banks(net, [ep, pickle.loads(pickle.dumps(to_bits(hc)))])
    assert moved.has_probabilities("p") and moved.meta("p")["probs_sha256"] == hc.meta("p")["probs_sha256"]
    for a, b in zip(moved.probabilities("p"), hc.probabilities("p")):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="both banks hold a mask named 'p'"):
        merged.merged(hc)
    with pytest.raises(ValueError, match="cannot merge a bank built on"):
        merged.merged(MaskBank(FrozenNet(SIZES, seed=SEED + 1)))


def _is_top_k(a: torch.Tensor, keep: torch.Tensor, k: int) -> bool:
    """Every row keeps k entries and none dropped is larger than one kept."""
    kept_min = torch.where(keep, a, torch.inf).min(dim=1).values
    dropped_max = torch.where(keep, -torch.inf, a).max(dim=1).values
    return bool((keep.sum(dim=1) == k).all() and (kept_min >= dropped_max).all())


@pytest.mark.parametrize("k", [1, 37, 2500, 4998])
def test_band_top_k_is_exact_while_scores_drift_and_jump(k):
    """The warm-started selection equals a full top-k at every step: small drifts (band), large
    jumps (widened band, then a full top-k for the rows it still misses), no move at all."""
    g = torch.Generator().manual_seed(SEED)
    a = torch.rand(6, 4999, generator=g)  # not a multiple of 8: the plain nonzero path
    state: dict[str, torch.Tensor] = {}
    for size in [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.3, 1e-4, 0.0, 2.0, 1e-5]:
        a = (a + size * torch.randn(a.shape, generator=g)).abs()
        keep = _topk.top_k_rows(a, k, state)
        exact = torch.zeros_like(keep).scatter_(1, a.topk(k, dim=1).indices, True)
        assert torch.equal(keep, exact), size


def test_band_top_k_handles_rows_on_their_own_and_ties():
    g = torch.Generator().manual_seed(SEED)
    a = torch.rand(5, 6000, generator=g)
    together: dict[str, torch.Tensor] = {}
    alone: list[dict[str, torch.Tensor]] = [{} for _ in range(5)]
    for size in [0.0, 1e-4, 0.5, 1e-3]:
        a = (a + size * torch.randn(a.shape, generator=g)).abs()
        batch = _topk.top_k_rows(a, 2000, together)
        for r in range(5):  # a row's mask and state do not depend on the other rows
            row = _topk.top_k_rows(a[r:r + 1], 2000, alone[r])
            assert torch.equal(row[0], batch[r])
            assert alone[r]["thr"].item() == together["thr"][r].item()
    ties = torch.randint(0, 7, (3, 6000), generator=g).float()  # thousands of equal values
    state: dict[str, torch.Tensor] = {}
    for shift in [0.0, 0.0, 1.0]:
        assert _is_top_k(ties + shift, _topk.top_k_rows(ties + shift, 3001, state), 3001)


def test_trainer_buffers_and_band_selection_change_no_bit():
    """Training with reused buffers and band top-k equals training with a full top-k every step,
    and the fused network gives the same gradients with buffers as without, call after call."""
    sizes = (32, 128, 64, 3)  # 4,096 and 8,192 weights: both hidden layers take the band path
    net = FrozenNet(sizes, seed=SEED)
    rng = np.random.default_rng(SEED)
    tasks = {f"t{i}": (rng.normal(size=(200, 32)).astype(np.float32), rng.integers(0, 3, 200)) for i in range(3)}
    band = train_masks(net, tasks, steps=40, batch_size=32, seed=SEED)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_topk, "BAND_MIN_ROW", 10**9)
        full = train_masks(net, tasks, steps=40, batch_size=32, seed=SEED)
    for name in tasks:
        assert all(torch.equal(p, q) for p, q in zip(band[name].layers, full[name].layers))

    form, dens = get_form("edge_popup"), [0.5] * 3
    buffers = StepBuffers(3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(3):
        scores = [torch.randn(2, o, i, generator=g) for o, i in net.shapes]
        x = torch.randn(2, 8, sizes[0], generator=g)
        grads = []
        for buf in (None, buffers):
            s = [t.clone().requires_grad_(True) for t in scores]
            supermask_logits(net.weights, s, x, form, dens, buf).square().sum().backward()
            grads.append([t.grad for t in s])
        for a, b in zip(*grads):
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(3, 4096), (3, 4100), (1, 8), (4, 16)])
def test_sparse_nonzero_equals_nonzero(shape):
    g = torch.Generator().manual_seed(SEED)
    for density in (0.0, 0.01, 0.5, 1.0):
        mask = torch.rand(shape, generator=g) < density
        for m in (mask, mask.t().contiguous().t()):  # contiguous and not
            rows, cols = _topk._sparse_nonzero(m)
            want = m.nonzero(as_tuple=True)
            assert torch.equal(rows, want[0]) and torch.equal(cols, want[1])
