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
    """
    n = scores.shape[1] * scores.shape[2]
    magnitude = torch.abs(scores.detach(), out=reusable(state, "abs", scores.shape, scores.dtype, scores.device))
    keep = top_k_rows(magnitude.view(scores.shape[0], n), k, state, scratch=out)
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

    The returned mask is a buffer of ``state``, overwritten by the next call. ``scratch`` (float,
    ``a.numel()`` elements) serves the counts: summing a bool tensor casts it to int64 first,
    10x slower than a uint8 -> float copy and a float sum here.
    """
    n_rows, n = a.shape
    keep = reusable(state, "keep", a.shape, torch.bool, a.device)
    thr, delta, drift = state.get("thr"), state.get("delta"), state.get("drift")
    if thr is None or delta is None or drift is None or thr.shape != (n_rows,) or n >= _FLOAT_EXACT:
        _exact_top_k(a, k, keep, torch.arange(n_rows, device=a.device), state)
        return keep
    centre = thr + drift
    band = reusable(state, "band", a.shape, torch.bool, a.device)
    counts = (torch.empty_like(a) if scratch is None else scratch).view(n_rows, n)
    for _ in range(_BAND_TRIES):
        hi = (centre + delta)[:, None]
        torch.gt(a, hi, out=keep)
        torch.ge(a, (centre - delta)[:, None], out=band).logical_xor_(keep)  # keep is inside: [lo, hi] remains
        rows, cols = _sparse_nonzero(band)
        above = counts.copy_(keep.view(torch.uint8)).sum(dim=1).to(torch.int64)  # exact below 2**24
        inside = torch.bincount(rows, minlength=n_rows)
        need = k - above
        ok = (need >= 0) & (need <= inside)
        if bool(ok.all()):
            break
        delta = torch.where(ok, delta, delta * _BAND_WIDEN)
    else:
        take = ok[rows]
        rows, cols = rows[take], cols[take]
        inside = torch.where(ok, inside, 0)
    vals = a[rows, cols]
    # Order the band by row, then value descending, then column: one stable sort of a float64 key
    # (rows apart by more than any value; the band comes row-major, so ties keep column order).
    span = 2.0 * float(vals.abs().max()) + 1.0 if len(vals) else 1.0
    order = torch.sort(rows.to(torch.float64) * span - vals.to(torch.float64), stable=True).indices
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = torch.cumsum(inside, 0) - inside
    pick = torch.arange(len(rows), device=a.device) - start[rows] < need[rows]
    keep[rows[pick], cols[pick]] = True
    # The new k-th value: the last band entry taken, or (none taken) the band's upper edge.
    taken = vals[(start + need - 1).clamp(0, len(vals) - 1)] if len(vals) else hi[:, 0]
    new_thr = torch.where(need > 0, taken, hi[:, 0])
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
        bad = (~ok).nonzero(as_tuple=True)[0]
        _exact_top_k(a, k, keep, bad, state)
    return keep


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


def _exact_top_k(a: torch.Tensor, k: int, keep: torch.Tensor, rows: torch.Tensor,
                 state: dict[str, torch.Tensor]) -> None:
    """Full top-k of ``a[rows]`` into ``keep[rows]``; resets those rows' band in ``state``."""
    sub = a[rows]
    vals, idx = sub.topk(k, dim=1, sorted=False)
    keep[rows] = torch.zeros_like(sub, dtype=torch.bool).scatter_(1, idx, True)
    thr = vals.min(dim=1).values
    if "thr" not in state or state["thr"].shape != (a.shape[0],):
        state["thr"] = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        state["delta"] = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        state["drift"] = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    state["thr"][rows] = thr
    state["delta"][rows] = (thr.abs() * 1e-3).clamp_(min=1e-12)
    state["drift"][rows] = 0.0

