"""Band top-k: the exact per-row top-k of scores that drift a little per step, and its buffers.

The edge-popup form's fused forward (:meth:`~supsup_fin.masks.forms.EdgePopup.masked_weight`)
selects each step's kept weights with :func:`masked_top_k`, warm-started from the last step's
threshold (:func:`top_k_rows`); :func:`reusable` keeps the large buffers of that and of the
trainer from one step to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from supsup_fin.masks import _native

# Band top-k (top_k_rows): tries before a full topk, widening factor per try, the band's
# population (1 / this of a row) above which it narrows and the smallest factor it narrows by in
# one step. Below BAND_MIN_ROW weights per layer a full topk costs less than the band's extra
# operations (the form then takes its plain path).
_BAND_TRIES = 3
_BAND_WIDEN = 8.0
_BAND_SHRINK_ABOVE = 200
_BAND_SHRINK_MAX = 0.25
BAND_MIN_ROW = 4096
_FLOAT_EXACT = 2**24  # rows this long take a full topk: the band's float32 counts must be exact


def masked_top_k(
    scores: torch.Tensor, k: int, weight: torch.Tensor, out: torch.Tensor, state: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``W ⊙ top-k(|scores|)`` per task written into ``out``; the band path of edge-popup's forward.

    ``scores``, ``weight`` and ``out`` are ``[T, out, in]``; each task keeps the ``k`` largest
    ``|scores|`` of its layer, exactly (see :func:`top_k_rows`, whose band lives in ``state``).
    On CPU with the fused kernels built (:mod:`~supsup_fin.masks._native`), one pass over the
    scores writes ``out`` and finds the band; otherwise torch ops do, with the same bits.
    """
    n_rows, n = scores.shape[0], scores.shape[1] * scores.shape[2]
    flat = scores.detach().view(n_rows, n)
    if _native.serves_band(flat, weight, out):
        _band_top_k(_WrittenSelection(flat, weight.reshape(n), out.view(n_rows, n), state), k, state)
        return out
    magnitude = torch.abs(flat, out=reusable(state, "abs", flat.shape, flat.dtype, flat.device))
    keep = top_k_rows(magnitude, k, state, scratch=out)
    # bool -> float copies are 10x slower than uint8 -> float here; the bytes are the same.
    return out.copy_(keep.view(torch.uint8).view_as(scores)).mul_(weight)


def top_k_rows(a: torch.Tensor, k: int, state: dict[str, torch.Tensor],
               scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries of each row of ``a`` (``[T, n]``), reusing ``state``.

    Scores move a little per optimiser step, so the k-th largest value of a row moves a little
    too, and smoothly. ``state`` holds each row's last k-th value ``thr``, its last move ``drift``
    and a half-width ``delta``: the band is centred on ``c = thr + drift``, entries above
    ``c + delta`` are kept outright, and only the few inside the band ``[c - delta, c + delta]``
    are sorted to fill the rest. The band is checked to contain the
    k-th value (counts above and inside it), widened for the rows where it does not, and rows
    still missing it after a few tries (and the first call) take a full ``topk``. The kept set is
    the exact top-k either way; inside the band, ties go to the lower index. Every row is handled
    on its own (its path depends on its own state only), so a task's mask does not depend on the
    other rows.

    The returned mask is a buffer of ``state``, overwritten by the next call. ``scratch`` (float32,
    ``a.numel()`` elements; otherwise a buffer of ``state``) serves the counts: summing a bool
    tensor casts it to int64 first, 10x slower than a uint8 -> float copy and a float sum here.
    """
    selection = _KeptSelection(a, state, scratch)
    _band_top_k(selection, k, state)
    return selection.keep


class _KeptSelection:
    """The band top-k's passes as torch ops over magnitudes ``a [T, n]``, into a bool ``keep``."""

    def __init__(self, a: torch.Tensor, state: dict[str, torch.Tensor], scratch: torch.Tensor | None) -> None:
        self.a, self.shape, self.device = a, a.shape, a.device
        self.keep = reusable(state, "keep", a.shape, torch.bool, a.device)
        self.band_mask = reusable(state, "band", a.shape, torch.bool, a.device)
        # float32 counts are exact below 2**24 (a bf16 scratch, e.g. a bf16 W ⊙ M buffer, is not)
        exact = scratch is not None and scratch.dtype == torch.float32 and scratch.numel() == a.numel()
        self.counts = scratch.view(a.shape) if exact else reusable(state, "counts", a.shape, torch.float32, a.device)

    def band(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Keep ``a > hi``; the counts kept and inside ``[lo, hi]`` per row, the band's rows, cols, values."""
        torch.gt(self.a, hi[:, None], out=self.keep)
        torch.ge(self.a, lo[:, None], out=self.band_mask).logical_xor_(self.keep)  # keep is inside: [lo, hi] remains
        rows, cols = _sparse_nonzero(self.band_mask)
        above = self.counts.copy_(self.keep.view(torch.uint8)).sum(dim=1).to(torch.int64)  # exact below 2**24
        inside = torch.bincount(rows, minlength=self.shape[0])
        return above, inside, rows, cols, self.a[rows, cols]

    def magnitudes(self, rows: torch.Tensor) -> torch.Tensor:
        return self.a[rows]

    def take(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.keep[rows, cols] = True

    def take_rows(self, rows: torch.Tensor, keep: torch.Tensor) -> None:
        self.keep[rows] = keep


class _WrittenSelection:
    """The band top-k's passes by the fused kernel over scores ``s [T, n]``, writing ``W ⊙ M`` into
    ``out [T, n]`` directly (``weight [n]``)."""

    def __init__(self, s: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                 state: dict[str, torch.Tensor]) -> None:
        self.s, self.weight, self.out, self.shape, self.device = s, weight, out, s.shape, s.device
        size = (s.numel(),)
        self.scratch = (reusable(state, "band_rows", size, torch.int64, s.device),
                        reusable(state, "band_cols", size, torch.int64, s.device),
                        reusable(state, "band_vals", size, torch.float32, s.device))

    def band(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _native.band_pass(self.s, self.weight, self.out, lo, hi, self.scratch)

    def magnitudes(self, rows: torch.Tensor) -> torch.Tensor:
        return self.s[rows].abs()

    def take(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.out[rows, cols] = self.weight[cols]  # = W * 1.0, as keep -> float then * W gives

    def take_rows(self, rows: torch.Tensor, keep: torch.Tensor) -> None:
        self.out[rows] = keep.view(torch.uint8).to(self.out.dtype).mul_(self.weight)


def _band_top_k(sel: _KeptSelection | _WrittenSelection, k: int, state: dict[str, torch.Tensor]) -> None:
    """The exact top-``k`` of every row of ``sel``, from the band of :func:`top_k_rows`."""
    n_rows, n = sel.shape
    device = sel.device
    thr, delta, drift = state.get("thr"), state.get("delta"), state.get("drift")
    if thr is None or delta is None or drift is None or thr.shape != (n_rows,) or n >= _FLOAT_EXACT:
        _exact_top_k(sel, k, torch.arange(n_rows, device=device), state)
        return
    centre = thr + drift
    for _ in range(_BAND_TRIES):
        hi = centre + delta
        above, inside, rows, cols, vals = sel.band(centre - delta, hi)
        need = k - above
        ok = (need >= 0) & (need <= inside)
        if bool(ok.all()):
            break
        delta = torch.where(ok, delta, delta * _BAND_WIDEN)
    else:
        take = ok[rows]
        rows, cols, vals = rows[take], cols[take], vals[take]
        inside = torch.where(ok, inside, 0)
    # Order the band by row, then value descending, then column: one stable sort of a float64 key
    # (rows apart by more than any value; the band comes row-major, so ties keep column order).
    span = 2.0 * float(vals.abs().max()) + 1.0 if len(vals) else 1.0
    order = torch.sort(rows.to(torch.float64) * span - vals.to(torch.float64), stable=True).indices
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = torch.cumsum(inside, 0) - inside
    pick = torch.arange(len(rows), device=device) - start[rows] < need[rows]
    sel.take(rows[pick], cols[pick])
    # The new k-th value: the last band entry taken, or (none taken) the band's upper edge.
    taken = vals[(start + need - 1).clamp(0, len(vals) - 1)] if len(vals) else hi
    new_thr = torch.where(need > 0, taken, hi)
    # Next band: centred on this step's move repeated (under momentum the k-th value drifts
    # smoothly: scores that start near zero grow for tens of steps, and a band around the last
    # value had to hold up to a fifth of the row to catch it), half-width room for four times
    # this step's miss of the centre, shrinking only while the band holds more than ~0.5 % of
    # the row (a retry costs more than a wider band).
    target = n / _BAND_SHRINK_ABOVE
    shrink = torch.where(inside > target, (target / inside.clamp(min=1)).clamp_(_BAND_SHRINK_MAX, 0.8) * delta, delta)
    state["delta"] = torch.maximum(4.0 * (new_thr - centre).abs(), shrink).clamp_(min=1e-12)
    state["drift"] = new_thr - thr
    state["thr"] = new_thr
    if not bool(ok.all()):
        _exact_top_k(sel, k, (~ok).nonzero(as_tuple=True)[0], state)


_ROW_STATE = ("thr", "delta", "drift")
"""The per-row entries of a :func:`top_k_rows` state (the others are buffers, resized on use)."""


def keep_state_rows(state: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
    """Keep only ``rows`` of a :func:`top_k_rows` state, in place: each kept row goes on exactly as
    before (its path depends on its own entries only)."""
    for key in _ROW_STATE:
        if key in state:
            state[key] = state[key][rows.to(state[key].device)]


def reusable(store: dict[Any, torch.Tensor], key: Any, shape: Sequence[int], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    """``store[key]``: an uninitialised tensor of ``shape``, ``dtype`` and ``device``, kept between
    calls (replaced when any of them changes)."""
    buf = store.get(key)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or buf.device != device:
        buf = store[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
    return buf


def _sparse_nonzero(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major ``(rows, cols)`` of a sparse contiguous bool ``[R, n]`` mask.

    ``nonzero`` scans 8-byte words first (5x faster on a 2 M-entry mask with ~1 % set), then only
    the words that hold a set entry are expanded to their 8 positions.
    """
    n = mask.shape[1]
    if n % 8 or not mask.is_contiguous():
        rows, cols = mask.nonzero(as_tuple=True)
        return rows, cols
    words = mask.view(torch.int64).nonzero()  # [m, 2]: row, word
    flat = (words[:, 0] * n + words[:, 1] * 8)[:, None] + torch.arange(8, device=mask.device)
    flat = flat[mask.view(-1)[flat]]
    return torch.div(flat, n, rounding_mode="floor"), flat % n


def _exact_top_k(sel: _KeptSelection | _WrittenSelection, k: int, rows: torch.Tensor,
                 state: dict[str, torch.Tensor]) -> None:
    """Full top-k of ``rows`` of ``sel``; resets those rows' band in ``state``."""
    sub = sel.magnitudes(rows)
    vals, idx = sub.topk(k, dim=1, sorted=False)
    sel.take_rows(rows, torch.zeros_like(sub, dtype=torch.bool).scatter_(1, idx, True))
    thr = vals.min(dim=1).values
    n_rows = sel.shape[0]
    if "thr" not in state or state["thr"].shape != (n_rows,):
        state["thr"] = torch.zeros(n_rows, dtype=sub.dtype, device=sub.device)
        state["delta"] = torch.zeros(n_rows, dtype=sub.dtype, device=sub.device)
        state["drift"] = torch.zeros(n_rows, dtype=sub.dtype, device=sub.device)
    state["thr"][rows] = thr
    state["delta"][rows] = (thr.abs() * 1e-3).clamp_(min=1e-12)
    state["drift"][rows] = 0.0
