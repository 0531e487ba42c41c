"""The fused per-weight kernels (supsup_fin/masks/_kernels.c) against the torch ops they replace.

Every comparison is bitwise: the kernels must give the trainer the same masks, thresholds and
score gradients as the torch path, for float32 and bfloat16, any thread count and any grouping.
"""

from __future__ import annotations

import shutil
import sysconfig

import numpy as np
import pytest
import torch

from conftest import SEED, same_bits
from supsup_fin.masks import FrozenNet, _native, _topk, train_masks

needs_kernels = pytest.mark.skipif(not _native.built(), reason="the C extension was not built (no compiler)")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (equal bits, signed zeros and all)."""
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def test_the_kernels_are_built_where_a_c_compiler_is() -> None:
    """The package's install builds the extension whenever the interpreter's C compiler exists;
    a silent fallback to torch would keep every other test here green while the kernels rot."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler {compiler!r} on this machine")
    assert _native.built(), "supsup_fin.masks._kernels did not build; reinstall with `pip install -e .`"


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_band_pass_equals_the_torch_compares(dtype: torch.dtype, threads: int) -> None:
    """``W * (|S| > hi)``, the counts and the band (row-major, by column) as the torch ops give them,
    one task row split into chunks or many rows, narrow and wide bands, ties on the edges."""
    g = torch.Generator().manual_seed(SEED)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows, n in [(1, 2**19), (5, 6000), (3, 4099)]:
            s = torch.randn(rows, n, generator=g)
            s[:, :7] = 0.25  # exact ties on a band edge
            s[:, 7:9] = -0.0
            w = torch.randn(n, generator=g).to(dtype)
            lo = torch.tensor([0.25, 0.5, 0.0, 1.0, 0.1])[:rows]
            hi = torch.tensor([0.26, 0.5001, 0.0, 3.0, 0.9])[:rows]
            out = torch.empty(rows, n, dtype=dtype)
            scratch = (torch.empty(rows * n, dtype=torch.int64), torch.empty(rows * n, dtype=torch.int64),
                       torch.empty(rows * n))
            above, inside, r, c, v = _native.band_pass(s, w, out, lo, hi, scratch)
            m = s.abs()
            keep = m > hi[:, None]
            band = (m >= lo[:, None]) & ~keep
            ref_r, ref_c = band.nonzero(as_tuple=True)
            assert torch.equal(_bits(out), _bits(keep.to(dtype) * w))
            assert torch.equal(above, keep.sum(dim=1)) and torch.equal(inside, band.sum(dim=1))
            assert torch.equal(r, ref_r) and torch.equal(c, ref_c) and torch.equal(v, m[ref_r, ref_c])
    finally:
        torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ste_grad_equals_the_torch_products(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(SEED)
    s = torch.randn(4, 64, 300, generator=g)
    s[0, 0, :5] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.0])  # zeros and denormals: sign 0, ±1
    w = torch.randn(64, 300, generator=g)
    gw = torch.randn(4, 64, 300, generator=g).to(dtype)
    gw[1, 0, :3] = torch.tensor([0.0, -0.0, 1.0]).to(dtype)
    ref = gw.to(torch.float32, copy=True).mul_(w).mul_(torch.sign(s))
    got = _native.ste_grad(gw.clone(), w, s)
    assert got.dtype == torch.float32 and torch.equal(_bits(got), _bits(ref))


@needs_kernels
def test_the_kernels_refuse_what_they_cannot_serve() -> None:
    s, w = torch.randn(2, 8), torch.randn(8)
    scratch = (torch.empty(16, dtype=torch.int64), torch.empty(16, dtype=torch.int64), torch.empty(16))
    with pytest.raises(ValueError, match=r"float32 scores and a float32 or bfloat16 weight and out, got "
                                         r"torch.float64, torch.float32, torch.float32"):
        _native.band_pass(s.double(), w, torch.empty(2, 8), torch.zeros(2), torch.ones(2), scratch)
    with pytest.raises(ValueError, match=r"band_pass shapes: scores \(2, 8\), weight \(7,\)"):
        _native.band_pass(s, w[:7], torch.empty(2, 8), torch.zeros(2), torch.ones(2), scratch)
    with pytest.raises(ValueError, match="contiguous scratch buffers of 16 entries"):
        _native.band_pass(s, w, torch.empty(2, 8), torch.zeros(2), torch.ones(2), tuple(b[:8] for b in scratch))
    with pytest.raises(ValueError, match=r"ste_grad shapes: gradient \(2, 8\), weight \(4,\)"):
        _native.ste_grad(torch.randn(2, 8), w[:4], s)
    with pytest.raises(ValueError, match="band_pass needs contiguous CPU tensors; not so: out"):
        _native.band_pass(s, w, torch.empty(8, 2).t(), torch.zeros(2), torch.ones(2), scratch)
    with pytest.raises(ValueError, match="ste_grad needs contiguous CPU tensors; not so: scores"):
        _native.ste_grad(torch.randn(2, 8), w, torch.randn(8, 2).t())
    assert not _native.serves(s.t())  # not contiguous: the torch path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_top_k_keeps_exactly_k_per_task_on_both_paths(dtype: torch.dtype) -> None:
    """The band selection writes exactly k weights per task whatever the W ⊙ M dtype (a bf16
    buffer once served the torch path's counts, and 32,767 is not a bf16 number), and the
    kernel's W ⊙ M and band state equal the torch path's step after step."""
    g = torch.Generator().manual_seed(SEED)
    s = torch.randn(3, 128, 512, generator=g)
    w = (torch.rand(128, 512, generator=g) + 0.5).to(dtype)  # no zero weight: kept = nonzero
    k = 32_767
    states: dict[str, dict[str, torch.Tensor]] = {"native": {}, "torch": {}}
    for size in [0.0, 1e-4, 1e-3, 0.5, 1e-4, 0.0]:
        s = s + size * torch.randn(s.shape, generator=g)
        outs = {}
        for path, state in states.items():
            out = torch.empty(s.shape, dtype=dtype)
            if path == "torch" or not _native.built():
                with _native.disabled():
                    outs[path] = _topk.masked_top_k(s, k, w, out, state)
            else:
                outs[path] = _topk.masked_top_k(s, k, w, out, state)
            assert torch.equal((outs[path] != 0).flatten(1).sum(dim=1), torch.full((3,), k)), (path, size)
        assert torch.equal(_bits(outs["native"]), _bits(outs["torch"])), size
        assert all(torch.equal(states["native"][key], states["torch"][key]) for key in ("thr", "delta", "drift"))


def _tasks(n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    return {f"t{i}": (rng.normal(size=(300, 16)).astype(np.float32), rng.integers(0, 3, 300)) for i in range(n)}


@needs_kernels
@pytest.mark.parametrize(("batch_size", "compute_dtype"), [(32, "float32"), (None, "float32"), (32, "bfloat16")])
def test_training_with_the_kernels_trains_the_torch_paths_bits(batch_size, compute_dtype: str) -> None:
    """The whole trainer: the same masks and losses with the kernels on and off (layers of 16,384
    and 4,096 weights take the band path; the last takes a full top-k)."""
    net = FrozenNet((16, 1024, 4, 3), seed=SEED)
    tasks = _tasks(3)
    kw = {"seed": SEED, "steps": 30, "batch_size": batch_size, "compute_dtype": compute_dtype}
    fused = train_masks(net, tasks, **kw)
    with _native.disabled():
        reference = train_masks(net, tasks, **kw)
    for name in tasks:
        assert same_bits(fused[name], reference[name])
        assert fused.meta(name)["final_loss"] == reference.meta(name)["final_loss"]


@needs_kernels
def test_a_task_trains_the_same_with_the_kernels_on_any_thread_count_alone_or_grouped() -> None:
    net = FrozenNet((16, 1024, 4, 3), seed=SEED)
    tasks = _tasks(3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        grouped = train_masks(net, tasks, seed=SEED, steps=20, batch_size=32)
        torch.set_num_threads(1)
        alone = train_masks(net, {"t1": tasks["t1"]}, seed=SEED, steps=20, batch_size=32)
    finally:
        torch.set_num_threads(before)
    assert same_bits(grouped["t1"], alone["t1"])


@needs_kernels
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_training_on_cpu_runs_both_kernels(compute_dtype: str) -> None:
    """The parity tests above would pass if the trainer silently took the torch path: it must not."""
    from torch.profiler import ProfilerActivity, profile

    net = FrozenNet((16, 1024, 4, 3), seed=SEED)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_masks(net, _tasks(2), seed=SEED, steps=3, batch_size=32, compute_dtype=compute_dtype)
    ran = {e.name.split("(")[0] for e in prof.events() if e.name.startswith(_native.PROFILE_PREFIX)}
    assert ran == {"supsup_fin::band_pass", "supsup_fin::ste_grad"}
    with _native.disabled(), profile(activities=[ProfilerActivity.CPU]) as prof:
        train_masks(net, _tasks(2), seed=SEED, steps=3, batch_size=32, compute_dtype=compute_dtype)
    assert not any(e.name.startswith(_native.PROFILE_PREFIX) for e in prof.events())
