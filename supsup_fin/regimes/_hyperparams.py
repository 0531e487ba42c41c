"""Check ``RegimeModel``'s hyperparameters and turn its random state into restart seeds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from supsup_fin._validate import is_int
from supsup_fin.errors import SupsupError
from supsup_fin.regimes._fit import COVARIANCE_TYPES, SELECTIONS
from supsup_fin.regimes.observations import FEATURE_SETS

PARAM_NAMES: tuple[str, ...] = (
    "n_states", "n_restarts", "n_iter", "covariance_type", "vol_window", "min_covar", "random_state",
    "selection", "observations", "sticky", "market",
)
"""``RegimeModel.__init__``'s arguments, in order (the order ``get_params`` and ``to_dict`` use)."""


def state_range(params: Mapping[str, Any]) -> tuple[int, int]:
    """Validate the hyperparameters (all but ``random_state``); return the inclusive state-count range.

    Raises
    ------
    SupsupError
        Naming the first hyperparameter out of its domain, what was expected and what came.
    """
    n = params["n_states"]
    if is_int(n) and n >= 1:
        lo = hi = int(n)
    elif (isinstance(n, (tuple, list)) and len(n) == 2 and all(is_int(v) for v in n)
          and 1 <= n[0] <= n[1]):
        lo, hi = int(n[0]), int(n[1])
    else:
        raise SupsupError(f"RegimeModel: n_states expected an int >= 1 or a (lo, hi) tuple "
                          f"with 1 <= lo <= hi, got {n!r}")
    for name, low in (("n_restarts", 1), ("n_iter", 1), ("vol_window", 2)):
        value = params[name]
        if not is_int(value) or value < low:
            raise SupsupError(f"RegimeModel: {name} expected an int >= {low}, got {value!r}")
    for name, valid in (("covariance_type", COVARIANCE_TYPES), ("observations", FEATURE_SETS),
                        ("selection", SELECTIONS)):
        if params[name] not in valid:
            raise SupsupError(f"RegimeModel: {name} expected one of {list(valid)}, got {params[name]!r}")
    sticky, min_covar = params["sticky"], params["min_covar"]
    if isinstance(sticky, bool) or not (isinstance(sticky, (int, float)) and sticky >= 0):
        raise SupsupError(f"RegimeModel: sticky expected a number >= 0 (self-transition "
                          f"pseudo-counts), got {sticky!r}")
    if not (isinstance(min_covar, (int, float)) and min_covar > 0):
        raise SupsupError(f"RegimeModel: min_covar expected a number > 0, got {min_covar!r}")
    if not (params["market"] is None or isinstance(params["market"], str)):
        raise SupsupError(f"RegimeModel: market expected a name (str) or None, got {params['market']!r}")
    return lo, hi


def restart_seeds(random_state: object, n_restarts: int) -> tuple[int, ...]:
    """One k-means seed per EM restart, drawn from ``random_state`` (an int, a Generator or None)."""
    if not (random_state is None or is_int(random_state) or isinstance(random_state, np.random.Generator)):
        raise SupsupError(f"RegimeModel: random_state expected an int, a numpy Generator "
                          f"or None, got {random_state!r}")
    rng = np.random.default_rng(random_state)
    return tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=n_restarts))
