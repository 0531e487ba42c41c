"""The JSON-able dict format of a fitted regime model: encode it, validate and decode it.

No pickle: every array is a nested list of Python floats, which ``json`` writes with
``repr`` and reads back exactly, so a rebuilt model computes bitwise-identical posteriors.
Plain values in, plain values out: :class:`~supsup_fin.regimes.model.RegimeModel` sets its own
attributes from them, and this module does not import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from supsup_fin._validate import is_int
from supsup_fin.errors import SupsupError
from supsup_fin.regimes.observations import FEATURE_SETS

FORMAT = "supsup-fin/regime-model"
FORMAT_VERSION = 1

FITTED: tuple[str, ...] = (
    "n_states_", "names_", "covariance_type_", "startprob_", "transmat_", "means_", "covars_",
    "stationary_", "feature_mean_", "feature_std_", "converged_", "log_likelihood_", "bic_",
    "permutation_", "n_iter_", "fallback_", "n_train_rows_",
)
"""Fitted attributes stored in the dict (``expected_durations_`` is derived from ``transmat_``)."""


def encode(params: Mapping[str, Any], fitted: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters and fitted attributes (keyed as in :data:`FITTED`) -> dict.

    Keys: ``format``, ``format_version``, ``hyperparameters`` (``__init__`` arguments; a
    ``random_state`` Generator is written as ``None``), ``n_states``, ``vol_window``,
    ``names``, ``feature_names``, ``covariance_type`` (used), ``startprob`` [K],
    ``transmat`` [K][K], ``means`` [K][d], ``covars`` [K][d][d], ``stationary`` [K],
    ``feature_mean`` [d], ``feature_std`` [d], ``converged``, ``log_likelihood``, ``bic``
    (state count as a string -> float, ``None`` for a count with no usable fit),
    ``permutation``, ``n_iter``, ``fallback``, ``n_train_rows``.
    """
    params = dict(params)
    if isinstance(params["n_states"], tuple):
        params["n_states"] = list(params["n_states"])
    if not (params["random_state"] is None or is_int(params["random_state"])):
        params["random_state"] = None  # a Generator is not serialisable; fit is done
    elif params["random_state"] is not None:
        params["random_state"] = int(params["random_state"])
    f = fitted
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hyperparameters": params,
        "n_states": f["n_states_"],
        "vol_window": int(params["vol_window"]),
        "names": list(f["names_"]),
        "feature_names": list(FEATURE_SETS[params["observations"]]),
        "covariance_type": f["covariance_type_"],
        "startprob": f["startprob_"].tolist(),
        "transmat": f["transmat_"].tolist(),
        "means": f["means_"].tolist(),
        "covars": f["covars_"].tolist(),
        "stationary": f["stationary_"].tolist(),
        "feature_mean": f["feature_mean_"].tolist(),
        "feature_std": f["feature_std_"].tolist(),
        "converged": f["converged_"],
        "log_likelihood": f["log_likelihood_"],
        "bic": {str(k): (v if np.isfinite(v) else None) for k, v in f["bic_"].items()},
        "permutation": f["permutation_"],
        "n_iter": f["n_iter_"],
        "fallback": f["fallback_"],
        "n_train_rows": f["n_train_rows_"],
    }


def decode_hyperparameters(d: object) -> dict[str, Any]:
    """Check the format and version of ``d``; return its ``__init__`` arguments.

    Raises
    ------
    SupsupError
        If ``d`` is of another format or version, or has no ``hyperparameters``.
    """
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
        raise SupsupError(f"RegimeModel.from_dict: expected format {FORMAT!r}, got {got!r}")
    if d.get("format_version") != FORMAT_VERSION:
        raise SupsupError(f"RegimeModel.from_dict: expected format_version "
                          f"{FORMAT_VERSION}, got {d.get('format_version')!r}")
    try:
        hp = dict(d["hyperparameters"])
    except KeyError as exc:
        raise SupsupError(f"RegimeModel.from_dict: missing field {exc.args[0]!r}") from None
    if isinstance(hp.get("n_states"), list):
        hp["n_states"] = tuple(hp["n_states"])
    return hp


def decode_fitted(d: Mapping[str, Any], hp: Mapping[str, Any]) -> dict[str, Any]:
    """The fitted attributes stored in ``d`` (keyed as in :data:`FITTED`), checked against ``hp``.

    Raises
    ------
    SupsupError
        If a field is missing or mis-shaped, or the features disagree with ``hp``.
    """
    try:
        names_expected = list(FEATURE_SETS.get(hp.get("observations", "return_vol"), ()))
        n_features = len(names_expected)
        if list(d["feature_names"]) != names_expected or d["vol_window"] != hp.get("vol_window"):
            raise SupsupError(f"RegimeModel.from_dict: expected features {names_expected} "
                              f"with vol_window {hp.get('vol_window')}, got "
                              f"{d['feature_names']} with vol_window {d['vol_window']}")
        k = int(d["n_states"])
        shapes = {
            "startprob": (k,), "transmat": (k, k), "means": (k, n_features),
            "covars": (k, n_features, n_features), "feature_mean": (n_features,),
            "feature_std": (n_features,), "stationary": (k,),
        }
        fitted: dict[str, Any] = {}
        for key, shape in shapes.items():
            fitted[key + "_"] = np.array(d[key], dtype=np.float64)
            if fitted[key + "_"].shape != shape:
                raise SupsupError(f"RegimeModel.from_dict: {key!r} expected shape {shape}, "
                                  f"got {fitted[key + '_'].shape}")
        names = [str(n) for n in d["names"]]
        if len(names) != k:
            raise SupsupError(f"RegimeModel.from_dict: 'names' expected {k} entries, "
                              f"got {len(names)}")
        perm = d["permutation"]
        fitted.update(
            n_states_=k,
            names_=names,
            covariance_type_=str(d["covariance_type"]),
            converged_=bool(d["converged"]),
            log_likelihood_=float(d["log_likelihood"]),
            bic_={int(kk): (float("inf") if v is None else float(v)) for kk, v in d["bic"].items()},
            permutation_=None if perm is None else [int(p) for p in perm],
            n_iter_=int(d["n_iter"]),
            fallback_=d["fallback"],
            n_train_rows_=int(d["n_train_rows"]),
        )
    except KeyError as exc:
        raise SupsupError(f"RegimeModel.from_dict: missing field {exc.args[0]!r}") from None
    return fitted
