"""The selection slice: the last part of a market's training rows, held out to choose a model.

Of a market's usable ``train`` rows, the last ``holdout_fraction`` are held out. The rows
whose targets would overlap them (``horizon + lookback`` rows before the first held-out row,
the purge of López de Prado, ch. 7) are dropped; masks train on the rest. The held-out rows
decide each mask's step budget (:mod:`supsup_fin.masks.early_stop`), each mask's calibration
map (:mod:`~supsup_fin.forecaster.calibration`) and each market's gate mode
(:mod:`~supsup_fin.forecaster.choose`). ``valid`` and ``test`` rows are never used for a choice.

A regime task's held-out rows are those the causal posterior P(z_{t+1} | x_1..t) routes to it
(its argmax, as the ``hard`` gate and evaluation do); a regime with fewer than
:data:`MIN_REGIME_ROWS` such rows is judged on all of the market's held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supsup_fin.errors import DataError

MIN_REGIME_ROWS = 30
MIN_HOLDOUT_ROWS = 50


@dataclass(frozen=True)
class SelectionSplit:
    """Row indices ``[n]`` into a :class:`~supsup_fin.forecaster.prepare.FeatureSet`: ``fit`` (trained on)
    and ``holdout`` (the selection slice; empty when there is none)."""

    fit: np.ndarray
    holdout: np.ndarray


def selection_split(train_rows: np.ndarray, fraction: float, purge: int, market: str = "") -> SelectionSplit:
    """Split ascending training row indices into fit rows, a purge gap and the held-out tail.

    ``fraction`` 0 gives no held-out rows. Raises ``DataError`` naming the market when the slice
    would hold fewer than :data:`MIN_HOLDOUT_ROWS` rows or leave nothing to train on.
    """
    rows = np.asarray(train_rows, np.int64)
    if fraction <= 0:
        return SelectionSplit(rows, rows[:0])
    n_hold = int(round(len(rows) * fraction))
    if n_hold < MIN_HOLDOUT_ROWS:
        raise DataError(
            f"market {market!r}: a selection slice of {fraction:.0%} of {len(rows)} training rows holds {n_hold} "
            f"rows, need at least {MIN_HOLDOUT_ROWS} (lengthen the train segment or raise training.holdout_fraction)")
    holdout = rows[-n_hold:]
    fit = rows[rows < holdout[0] - purge]
    if len(fit) < MIN_HOLDOUT_ROWS:
        raise DataError(f"market {market!r}: {len(fit)} training rows left before the selection slice and its "
                        f"purge of {purge} rows")
    return SelectionSplit(fit, holdout)


def regime_rows(holdout: np.ndarray, next_proba: np.ndarray, k: int | None) -> np.ndarray:
    """The held-out rows routed to regime ``k`` by ``argmax next_proba`` (``None``: every row), or every
    held-out row when fewer than :data:`MIN_REGIME_ROWS` are. Rows without a posterior count for no regime."""
    if k is None or not len(holdout):
        return holdout
    post = next_proba[holdout]
    ok = np.isfinite(post).all(axis=1)
    routed = holdout[ok & (np.nan_to_num(post, nan=-1.0).argmax(axis=1) == k)]
    return routed if len(routed) >= MIN_REGIME_ROWS else holdout
