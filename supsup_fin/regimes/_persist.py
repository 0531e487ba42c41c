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
from supsup_fin.errors import DataError
from supsup_fin.regimes.observations import FEATURE_SETS

FORMAT = "supsup-fin/regime-model"
FORMAT_VERSION = 1
DEFAULT_ORDER = "volatility"
"""The ``order_by`` of a stored model whose hyperparameters name none."""

FITTED: tuple[str, ...] = (
    "n_states_", "names_", "covariance_type_", "startprob_", "transmat_", "means_", "covars_",
    "stationary_", "feature_mean_", "feature_std_", "converged_", "log_likelihood_", "bic_",
    "permutation_", "n_iter_", "fallback_", "n_train_rows_", "fallback_reason_",
)
"""Fitted attributes stored in the dict (``expected_durations_`` is derived from ``transmat_``)."""

PROBABILITY_TOLERANCE = 1e-6
"""How far from 1 a stored probability vector (``startprob``, ``stationary``, a ``transmat`` row)
may sum: fitted ones sum to 1 within ~1e-15."""


def encode(params: Mapping[str, Any], fitted: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters and fitted attributes (keyed as in :data:`FITTED`) -> dict.

    Keys: ``format``, ``format_version``, ``hyperparameters`` (``__init__`` arguments; a
    ``random_state`` Generator is written as ``None``), ``n_states``, ``vol_window``,
    ``names``, ``feature_names``, ``covariance_type`` (used), ``startprob`` [K],
    ``transmat`` [K][K], ``means`` [K][d], ``covars`` [K][d][d], ``stationary`` [K],
    ``feature_mean`` [d], ``feature_std`` [d], ``converged``, ``log_likelihood``, ``bic``
    (state count as a string -> float, ``None`` for a count with no usable fit),
    ``permutation``, ``n_iter``, ``fallback``, ``n_train_rows``; and, written only when set,
    ``hyperparameters["market"]`` and ``fallback_reason`` (a dict without them is the format as it
    was before they existed, and loads with ``None``), and ``hyperparameters["order_by"]`` unless it
    is ``"volatility"`` (the only order before it existed, which a dict without it loads with).
    """
    params = dict(params)
    if params.get("market") is None:
        params.pop("market", None)
    if params.get("order_by") == DEFAULT_ORDER:
        params.pop("order_by")
    if isinstance(params["n_states"], tuple):
        params["n_states"] = list(params["n_states"])
    if not (params["random_state"] is None or is_int(params["random_state"])):
        params["random_state"] = None  # a Generator is not serialisable; fit is done
    elif params["random_state"] is not None:
        params["random_state"] = int(params["random_state"])
    f = fitted
    optional = {} if f["fallback_reason_"] is None else {"fallback_reason": f["fallback_reason_"]}
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
        **optional,
    }


def decode_hyperparameters(d: object, where: str) -> dict[str, Any]:
    """Check the format and version of ``d``; return its ``__init__`` arguments (``order_by``
    :data:`DEFAULT_ORDER` when not stored).

    ``where`` starts every error message (``"RegimeModel.from_dict"``, after the market if known).

    Raises
    ------
    DataError
        If ``d`` is of another format or version, or has no ``hyperparameters``.
    """
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
        raise DataError(f"{where}: expected format {FORMAT!r}, got {got!r}")
    if d.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{where}: expected format_version {FORMAT_VERSION}, got {d.get('format_version')!r}")
    if not isinstance(d.get("hyperparameters"), Mapping):
        raise DataError(f"{where}: missing field 'hyperparameters'")
    hp = {"order_by": DEFAULT_ORDER, **d["hyperparameters"]}
    if isinstance(hp.get("n_states"), list):
        hp["n_states"] = tuple(hp["n_states"])
    return hp


def _array(d: Mapping[str, Any], key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        value = np.array(d[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key!r} expected numbers in shape {shape}, got {d[key]!r}") from None
    if value.shape != shape:
        raise DataError(f"{where}: {key!r} expected shape {shape}, got {value.shape}")
    return value


def _is_distribution(p: np.ndarray) -> bool:
    return bool(np.isfinite(p).all() and (p >= 0).all() and abs(p.sum() - 1.0) <= PROBABILITY_TOLERANCE)


def _is_covariance(c: np.ndarray) -> bool:
    if not (np.isfinite(c).all() and np.abs(c - c.T).max() <= 1e-9 * np.abs(c).max()):
        return False
    try:
        np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        return False
    return True


def check_parameters(fitted: Mapping[str, Any], where: str) -> None:
    """Raise ``DataError`` unless the stored parameters describe an HMM.

    ``startprob``, ``stationary`` and every ``transmat`` row: non-negative, finite, summing to 1
    within :data:`PROBABILITY_TOLERANCE`; ``means`` and ``feature_mean`` finite; every
    ``covars`` matrix finite, symmetric and positive-definite; ``feature_std`` finite and > 0;
    ``permutation`` ``None`` or a permutation of the states. The message names the field and
    its row or state.
    """
    expected = "expected non-negative, finite probabilities summing to 1"
    for key in ("startprob", "stationary"):
        if not _is_distribution(fitted[key + "_"]):
            raise DataError(f"{where}: {key!r} {expected}, got {fitted[key + '_'].tolist()}")
    for r, row in enumerate(fitted["transmat_"]):
        if not _is_distribution(row):
            raise DataError(f"{where}: 'transmat' row {r} {expected}, got {row.tolist()}")
    for r, row in enumerate(fitted["means_"]):
        if not np.isfinite(row).all():
            raise DataError(f"{where}: 'means' row {r} expected finite numbers, got {row.tolist()}")
    for s, cov in enumerate(fitted["covars_"]):
        if not _is_covariance(cov):
            raise DataError(f"{where}: 'covars' state {s} expected a finite, symmetric, positive-definite "
                            f"matrix, got {cov.tolist()}")
    if not np.isfinite(fitted["feature_mean_"]).all():
        raise DataError(f"{where}: 'feature_mean' expected finite numbers, got {fitted['feature_mean_'].tolist()}")
    std = fitted["feature_std_"]
    if not (np.isfinite(std).all() and (std > 0).all()):
        raise DataError(f"{where}: 'feature_std' expected finite numbers > 0, got {std.tolist()}")
    perm, k = fitted["permutation_"], fitted["n_states_"]
    if perm is not None and sorted(perm) != list(range(k)):
        raise DataError(f"{where}: 'permutation' expected None or a permutation of 0..{k - 1}, got {perm}")


def decode_fitted(d: Mapping[str, Any], hp: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The fitted attributes stored in ``d`` (keyed as in :data:`FITTED`), checked against ``hp``
    and by :func:`check_parameters`.

    Raises
    ------
    DataError
        If a field is missing, mis-shaped or out of its domain, or the features disagree with
        ``hp``; the message starts with ``where`` and names the field.
    """
    try:
        names_expected = list(FEATURE_SETS.get(hp.get("observations", "return_vol"), ()))
        n_features = len(names_expected)
        if list(d["feature_names"]) != names_expected or d["vol_window"] != hp.get("vol_window"):
            raise DataError(f"{where}: expected features {names_expected} "
                            f"with vol_window {hp.get('vol_window')}, got "
                            f"{d['feature_names']} with vol_window {d['vol_window']}")
        k = d["n_states"]
        if not (is_int(k) and k >= 1):
            raise DataError(f"{where}: 'n_states' expected an int >= 1, got {k!r}")
        k = int(k)
        shapes = {
            "startprob": (k,), "transmat": (k, k), "means": (k, n_features),
            "covars": (k, n_features, n_features), "feature_mean": (n_features,),
            "feature_std": (n_features,), "stationary": (k,),
        }
        fitted: dict[str, Any] = {key + "_": _array(d, key, shape, where) for key, shape in shapes.items()}
        names = [str(n) for n in d["names"]]
        if len(names) != k:
            raise DataError(f"{where}: 'names' expected {k} entries, got {len(names)}")
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
            fallback_reason_=d.get("fallback_reason"),
        )
    except KeyError as exc:
        raise DataError(f"{where}: missing field {exc.args[0]!r}") from None
    except DataError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{where}: expected the fields RegimeModel.to_dict writes, got {exc}") from None
    check_parameters(fitted, where)
    return fitted
