"""JSON-able dicts of fitted :class:`~supsup_fin.regimes.model.RegimeModel` parameters.

No pickle: every array is a nested list of Python floats, which ``json`` writes with
``repr`` and reads back exactly, so a rebuilt model computes bitwise-identical posteriors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from supsup_fin.errors import SupsupError
from supsup_fin.regimes.observations import FEATURE_SETS

if TYPE_CHECKING:
    from supsup_fin.regimes.model import RegimeModel

FORMAT = "supsup-fin/regime-model"
FORMAT_VERSION = 1


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def to_dict(model: RegimeModel) -> dict[str, Any]:
    """Fitted model -> dict.

    Keys: ``format``, ``format_version``, ``hyperparameters`` (``__init__`` arguments; a
    ``random_state`` Generator is written as ``None``), ``n_states``, ``vol_window``,
    ``names``, ``feature_names``, ``covariance_type`` (used), ``startprob`` [K],
    ``transmat`` [K][K], ``means`` [K][d], ``covars`` [K][d][d], ``stationary`` [K],
    ``feature_mean`` [d], ``feature_std`` [d], ``converged``, ``log_likelihood``, ``bic``
    (state count as a string -> float, ``None`` for a count with no usable fit),
    ``permutation``, ``n_iter``, ``fallback``, ``n_train_rows``.
    """
    params = model.get_params()
    if isinstance(params["n_states"], tuple):
        params["n_states"] = list(params["n_states"])
    if not (params["random_state"] is None or _is_int(params["random_state"])):
        params["random_state"] = None  # a Generator is not serialisable; fit is done
    elif params["random_state"] is not None:
        params["random_state"] = int(params["random_state"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hyperparameters": params,
        "n_states": model.n_states_,
        "vol_window": int(model.vol_window),
        "names": list(model.names_),
        "feature_names": list(FEATURE_SETS[model.observations]),
        "covariance_type": model.covariance_type_,
        "startprob": model.startprob_.tolist(),
        "transmat": model.transmat_.tolist(),
        "means": model.means_.tolist(),
        "covars": model.covars_.tolist(),
        "stationary": model.stationary_.tolist(),
        "feature_mean": model.feature_mean_.tolist(),
        "feature_std": model.feature_std_.tolist(),
        "converged": model.converged_,
        "log_likelihood": model.log_likelihood_,
        "bic": {str(k): (v if np.isfinite(v) else None) for k, v in model.bic_.items()},
        "permutation": model.permutation_,
        "n_iter": model.n_iter_,
        "fallback": model.fallback_,
        "n_train_rows": model.n_train_rows_,
    }


def from_dict(cls: type[RegimeModel], d: Mapping[str, Any]) -> RegimeModel:
    """dict -> model with every stored fitted attribute set (``expected_durations_`` is not)."""
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
        raise SupsupError(f"RegimeModel.from_dict: expected format {FORMAT!r}, got {got!r}")
    if d.get("format_version") != FORMAT_VERSION:
        raise SupsupError(f"RegimeModel.from_dict: expected format_version "
                          f"{FORMAT_VERSION}, got {d.get('format_version')!r}")
    try:
        hp = dict(d["hyperparameters"])
        if isinstance(hp.get("n_states"), list):
            hp["n_states"] = tuple(hp["n_states"])
        try:
            model = cls(**hp)
        except TypeError as exc:
            raise SupsupError(f"RegimeModel.from_dict: bad 'hyperparameters': {exc}") from None
        names_expected = list(FEATURE_SETS.get(hp.get("observations", "return_vol"), ()))
        n_features = len(names_expected)
        if list(d["feature_names"]) != names_expected or d["vol_window"] != hp.get(
                "vol_window"):
            raise SupsupError(f"RegimeModel.from_dict: expected features {names_expected} "
                              f"with vol_window {hp.get('vol_window')}, got "
                              f"{d['feature_names']} with vol_window {d['vol_window']}")
        k = int(d["n_states"])
        arrays = {
            "startprob_": ("startprob", (k,)),
            "transmat_": ("transmat", (k, k)),
            "means_": ("means", (k, n_features)),
            "covars_": ("covars", (k, n_features, n_features)),
            "feature_mean_": ("feature_mean", (n_features,)),
            "feature_std_": ("feature_std", (n_features,)),
            "stationary_": ("stationary", (k,)),
        }
        values = {}
        for attr, (key, shape) in arrays.items():
            values[attr] = np.array(d[key], dtype=np.float64)
            if values[attr].shape != shape:
                raise SupsupError(f"RegimeModel.from_dict: {key!r} expected shape {shape}, "
                                  f"got {values[attr].shape}")
        names = [str(n) for n in d["names"]]
        if len(names) != k:
            raise SupsupError(f"RegimeModel.from_dict: 'names' expected {k} entries, "
                              f"got {len(names)}")
        for attr, value in values.items():
            setattr(model, attr, value)
        model.n_states_ = k
        model.names_ = names
        model.covariance_type_ = str(d["covariance_type"])
        model.converged_ = bool(d["converged"])
        model.log_likelihood_ = float(d["log_likelihood"])
        model.bic_ = {int(kk): (float("inf") if v is None else float(v))
                      for kk, v in d["bic"].items()}
        perm = d["permutation"]
        model.permutation_ = None if perm is None else [int(p) for p in perm]
        model.n_iter_ = int(d["n_iter"])
        model.fallback_ = d["fallback"]
        model.n_train_rows_ = int(d["n_train_rows"])
    except KeyError as exc:
        raise SupsupError(f"RegimeModel.from_dict: missing field {exc.args[0]!r}") from None
    return model
