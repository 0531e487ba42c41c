"""The fused per-weight kernels of the edge-popup trainer (``_kernels.c``), with the torch fallback.

The C extension is built when the package is installed (``pip install``, a C compiler needed,
no downloads); where it could not be built, or for tensors it does not serve (not CPU, not
contiguous, other dtypes), callers take the torch ops they replace, which give the same bits.
``SUPSUP_FIN_NATIVE=0`` in the environment, or :func:`disabled`, turns the kernels off (the
tests and ``benchmarks/masks_speed.py`` compare both paths). They do the per-weight work of an
edge-popup step in two passes where the torch ops take some twenty (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.profiler import record_function

try:  # the compiled module itself, not the package (whose __init__ is still running when this is)
    import supsup_fin.masks._kernels as _kernels
except ImportError:  # not built (no compiler at install time): the torch path serves
    _kernels = None

_enabled = _kernels is not None and os.environ.get("SUPSUP_FIN_NATIVE", "1") != "0"


def built() -> bool:
    """Whether the C extension was built and imports."""
    return _kernels is not None


def active() -> bool:
    """Whether the kernels are built and switched on."""
    return _enabled


@contextmanager
def disabled() -> Iterator[None]:
    """Run the block on the torch path (the reference the kernels must match bit for bit)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def serves(*tensors: torch.Tensor) -> bool:
    """Whether the kernels serve these tensors: switched on, all on CPU and contiguous."""
    return _enabled and _raw(*tensors)


def serves_band(scores: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether :func:`band_pass` serves these: switched on, raw CPU tensors, float32 scores and a
    float32 or bfloat16 weight and ``out`` of the same dtype."""
    return (serves(scores, weight, out) and scores.dtype == torch.float32 and weight.dtype in _FLOATS
            and out.dtype == weight.dtype)


def serves_grad(scores: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`ste_grad` serves these scores and weight: switched on, raw CPU, float32."""
    return serves(scores, weight) and scores.dtype == weight.dtype == torch.float32


def _raw(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def _check_raw(kernel: str, **tensors: torch.Tensor) -> None:
    """The kernels read and write through raw addresses: contiguous CPU tensors only."""
    bad = [name for name, t in tensors.items() if not _raw(t)]
    if bad:
        raise ValueError(f"{kernel} needs contiguous CPU tensors; not so: {', '.join(bad)}")


_FLOATS = (torch.float32, torch.bfloat16)
PROFILE_PREFIX = "supsup_fin::"
"""Each kernel call shows in a torch profile as ``supsup_fin::<kernel>(bytes=N)``, N the bytes it
reads and writes per weight of the call's rows (the shared weight row, read from cache, aside)."""


def band_pass(scores: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
              scratch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over ``scores [R, n]``: ``out = W * (|S| > hi)`` and the band ``lo <= |S| <= hi``.

    ``weight [n]`` and ``out [R, n]`` are float32 or bfloat16 (the same); ``lo`` and ``hi`` are
    float32 ``[R]``. Returns the per-row counts of entries kept outright and inside the band
    (int64 ``[R]``) and the band's ``rows``, ``cols`` (int64) and ``|S|`` values (float32),
    row-major and by column, as ``nonzero`` of the band would order them: views of ``scratch``,
    buffers of ``R * n`` int64, int64 and float32 entries (the band's worst case), overwritten by
    the next call.
    """
    rows, n = scores.shape
    if scores.dtype != torch.float32 or weight.dtype not in _FLOATS or out.dtype != weight.dtype:
        raise ValueError(f"band_pass needs float32 scores and a float32 or bfloat16 weight and out, got "
                         f"{scores.dtype}, {weight.dtype}, {out.dtype}")
    if weight.shape != (n,) or out.shape != (rows, n) or lo.shape != (rows,) or hi.shape != (rows,):
        raise ValueError(f"band_pass shapes: scores {tuple(scores.shape)}, weight {tuple(weight.shape)}, "
                         f"out {tuple(out.shape)}, lo {tuple(lo.shape)}, hi {tuple(hi.shape)}")
    _check_raw("band_pass", scores=scores, weight=weight, out=out)
    lo, hi = lo.to(torch.float32).contiguous(), hi.to(torch.float32).contiguous()
    band_rows, band_cols, band_vals = scratch
    if any(b.numel() < rows * n or not b.is_contiguous() for b in scratch):
        raise ValueError(f"band_pass needs contiguous scratch buffers of {rows * n} entries")
    above = torch.empty(rows, dtype=torch.int64)
    inside = torch.empty(rows, dtype=torch.int64)
    with record_function(f"{PROFILE_PREFIX}band_pass(bytes={rows * n * (4 + out.element_size())})"):
        m = _kernels.band_pass(
            scores.data_ptr(), weight.data_ptr(), weight.dtype == torch.bfloat16, out.data_ptr(), lo.data_ptr(),
            hi.data_ptr(), rows, n, band_rows.data_ptr(), band_cols.data_ptr(), band_vals.data_ptr(),
            above.data_ptr(), inside.data_ptr(), torch.get_num_threads(),
        )
    return above, inside, band_rows[:m], band_cols[:m], band_vals[:m]


def ste_grad(grad_w: torch.Tensor, weight: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``(∂(W⊙M) * W) * sign(S)``: edge-popup's score gradient from the masked weight's, one pass.

    ``grad_w [T, out, in]`` is float32 (overwritten with the result) or bfloat16 (a new float32
    tensor); ``weight [out, in]`` and ``scores [T, out, in]`` are float32.
    """
    if grad_w.dtype not in _FLOATS or weight.dtype != torch.float32 or scores.dtype != torch.float32:
        raise ValueError(f"ste_grad needs a float32 or bfloat16 gradient and float32 weight and scores, got "
                         f"{grad_w.dtype}, {weight.dtype}, {scores.dtype}")
    if grad_w.shape != scores.shape or weight.shape != scores.shape[1:]:
        raise ValueError(f"ste_grad shapes: gradient {tuple(grad_w.shape)}, weight {tuple(weight.shape)}, "
                         f"scores {tuple(scores.shape)}")
    _check_raw("ste_grad", gradient=grad_w, weight=weight, scores=scores)
    out = grad_w if grad_w.dtype == torch.float32 else torch.empty(scores.shape, dtype=torch.float32)
    rows, n = scores.shape[0], weight.numel()
    with record_function(f"{PROFILE_PREFIX}ste_grad(bytes={rows * n * (grad_w.element_size() + 8)})"):
        _kernels.ste_grad(grad_w.data_ptr(), grad_w.dtype == torch.bfloat16, weight.data_ptr(), scores.data_ptr(),
                          out.data_ptr(), rows, n, torch.get_num_threads())
    return out
