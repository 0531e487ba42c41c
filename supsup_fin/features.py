"""Causal features, forward-return classes and the model's input windows.

Every feature at row t is a function of a fixed window of prices ending at t, computed
window-exactly (``supsup_fin._rolling``), so it is bitwise identical on any suffix of the
series that still covers its warm-up. Scalers and class edges are fitted on ``train`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from supsup_fin import _rolling as rl
from supsup_fin.data.frame import price_arrays
from supsup_fin.errors import ConfigError, DataError

_EPS = 1e-8

#: What a feature formula reads columns from: a prices frame, or its columns as float64 arrays.
Columns = pd.DataFrame | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class FeatureSpec:
    """A feature: the columns it needs, its warm-up (rows before its first value), its formula."""

    requires: tuple[str, ...]
    warmup: int
    fn: Callable[[Columns], np.ndarray]


def _column(p: Columns, name: str) -> np.ndarray:
    return np.asarray(p[name], dtype=np.float64)


def _close(p: Columns) -> np.ndarray:
    return _column(p, "close")


def _ret(k: int) -> Callable[[Columns], np.ndarray]:
    def fn(p: Columns) -> np.ndarray:
        logc = np.log(_close(p))
        out = np.full(len(logc), np.nan)
        out[k:] = logc[k:] - logc[:-k]
        return out

    return fn


def _vol(w: int) -> Callable[[Columns], np.ndarray]:
    return lambda p: rl.rolling_std(rl.log_returns(_close(p)), w)


def _ma_gap(w: int) -> Callable[[Columns], np.ndarray]:
    return lambda p: np.log(_close(p)) - np.log(rl.rolling_mean(_close(p), w))


def _drawdown(w: int) -> Callable[[Columns], np.ndarray]:
    return lambda p: np.log(_close(p)) - np.log(rl.rolling_max(_close(p), w))


def _vol_ratio(p: Columns) -> np.ndarray:
    r = rl.log_returns(_close(p))
    return np.log((rl.rolling_std(r, 5) + _EPS) / (rl.rolling_std(r, 20) + _EPS))


def _range(p: Columns) -> np.ndarray:
    return np.log(_column(p, "high") / _column(p, "low"))


def _volume_z(p: Columns) -> np.ndarray:
    lv = np.log(_column(p, "volume") + 1.0)
    return (lv - rl.rolling_mean(lv, 20)) / (rl.rolling_std(lv, 20) + _EPS)


#: Every feature by name. Close-only features work for every market; the rest are opt-in.
FEATURES: dict[str, FeatureSpec] = {
    "ret_1": FeatureSpec(("close",), 1, _ret(1)),
    "ret_5": FeatureSpec(("close",), 5, _ret(5)),
    "ret_20": FeatureSpec(("close",), 20, _ret(20)),
    "vol_5": FeatureSpec(("close",), 5, _vol(5)),
    "vol_20": FeatureSpec(("close",), 20, _vol(20)),
    "ma_gap_20": FeatureSpec(("close",), 19, _ma_gap(20)),
    "drawdown_60": FeatureSpec(("close",), 59, _drawdown(60)),
    "vol_ratio": FeatureSpec(("close",), 20, _vol_ratio),
    "range_1": FeatureSpec(("high", "low"), 0, _range),
    "volume_z20": FeatureSpec(("volume",), 19, _volume_z),
}

#: Columns each source is known to supply before any data is loaded.
_KNOWN_COLUMNS = {
    ("bundled", "wti"): {"close"},
    ("bundled", "sp500"): {"open", "high", "low", "close", "volume"},
    ("bundled", "nasdaq"): {"open", "high", "low", "close", "volume"},
    ("synthetic", None): {"close"},
}


def class_names(n_classes: int) -> list[str]:
    """``["down", "flat", "up"]`` for 3 classes, ``["down", "up"]`` for 2."""
    return ["down", "flat", "up"] if n_classes == 3 else ["down", "up"]


def feature_warmup(names: Sequence[str]) -> int:
    """Rows of prices consumed before every named feature has a value."""
    return max(FEATURES[n].warmup for n in names)


def check_feature_names(names: Sequence[str], markets: Iterable[tuple[str, str, str | None]]) -> None:
    """Refuse unknown features, and features a configured market is known not to supply.

    Parameters
    ----------
    names : the configured ``features.names``.
    markets : ``(name, source, dataset)`` of each configured market.
    """
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ConfigError(f"features.names: unknown {unknown}; known: {sorted(FEATURES)}")
    for market, source, dataset in markets:
        cols = _KNOWN_COLUMNS.get((source, dataset)) or _KNOWN_COLUMNS.get((source, None))
        if cols is None:
            continue
        for n in names:
            missing = set(FEATURES[n].requires) - cols
            if missing:
                raise ConfigError(
                    f"features.names: {n!r} needs columns {sorted(missing)} that market "
                    f"{market!r} ({source}:{dataset}) does not have (it has {sorted(cols)})"
                )


def make_features(prices: pd.DataFrame, names: Sequence[str], market: str = "?") -> pd.DataFrame:
    """Raw (unscaled) features, one column per name, NaN during warm-up.

    Parameters
    ----------
    prices : prices frame, ``[n]`` rows with at least the columns the features need; anything but
        the canonical form goes through :func:`~supsup_fin.data.frame.validate_frame` first.
    names : feature names from :data:`FEATURES`.

    Returns
    -------
    DataFrame ``[n, len(names)]`` indexed by the prices' dates.

    Raises
    ------
    DataError
        A structural fault of ``prices`` (naming market, column and first bad date), or a missing column.
    """
    columns, dates = price_arrays(prices, market)
    return pd.DataFrame(_feature_columns(columns, list(columns), names, market), index=dates)


def feature_array(columns: Mapping[str, np.ndarray], names: Sequence[str], market: str = "?") -> np.ndarray:
    """:func:`make_features` as a plain array, from the price columns as arrays (no frame built).

    The same formulas on the same values, so the result is bitwise
    ``make_features(prices, names).to_numpy()`` for ``columns = {c: prices[c].to_numpy()}``.

    Parameters
    ----------
    columns : price column name -> float64 array ``[n]`` (at least the columns the features need).
    names : feature names from :data:`FEATURES`.

    Returns
    -------
    ``[n, F]`` float64, one column per distinct name, in order; NaN during warm-up.
    """
    return np.column_stack(list(_feature_columns(columns, list(columns), names, market).values()))


def _feature_columns(
    p: Columns, available: Collection[str], names: Sequence[str], market: str
) -> dict[str, np.ndarray]:
    cols = {}
    for n in names:
        spec = FEATURES[n]
        missing = [c for c in spec.requires if c not in available]
        if missing:
            raise DataError(
                f"market {market!r}: feature {n!r} needs columns {missing}, "
                f"the prices have {list(available)}"
            )
        cols[n] = spec.fn(p)
    return cols


def forward_returns(prices: pd.DataFrame, horizon: int) -> pd.Series:
    """``log(c_{t+h} / c_t)``; NaN for the last ``horizon`` rows (the target reaches past the data)."""
    logc = np.log(_close(prices))
    out = np.full(len(logc), np.nan)
    out[:-horizon] = logc[horizon:] - logc[:-horizon]
    return pd.Series(out, index=prices.index, name=f"fwd_ret_{horizon}")


def fit_class_edges(train_fwd: np.ndarray, n_classes: int) -> np.ndarray:
    """Quantile edges of the training forward returns: tertiles for 3 classes, median for 2."""
    x = np.asarray(train_fwd, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 10 * n_classes:
        raise DataError(f"need at least {10 * n_classes} training targets to split classes, got {len(x)}")
    return np.quantile(x, np.arange(1, n_classes) / n_classes)


def classify(fwd: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Class index of each forward return (``-1`` where it is NaN). Shape ``[n]`` int64."""
    fwd = np.asarray(fwd, dtype=np.float64)
    out = np.digitize(fwd, edges).astype(np.int64)
    out[~np.isfinite(fwd)] = -1
    return out


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation fitted on the training window."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Scaler:
        f = np.asarray(features, dtype=np.float64)
        f = f[np.isfinite(f).all(axis=1)]
        if len(f) < 2:
            raise DataError(f"cannot fit a feature scaler on {len(f)} complete rows")
        std = f.std(axis=0)
        return cls(mean=f.mean(axis=0), std=np.where(std > 0, std, 1.0))

    def transform(self, features: np.ndarray, clip: float = 5.0) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return np.clip(z, -clip, clip)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Scaler:
        return cls(mean=np.asarray(d["mean"], np.float64), std=np.asarray(d["std"], np.float64))


def input_windows(scaled: np.ndarray, lookback: int) -> np.ndarray:
    """Flatten the last ``lookback`` feature rows ending at each row t.

    Parameters
    ----------
    scaled : ``[n, F]`` scaled features (NaN during warm-up).

    Returns
    -------
    ``[n, lookback * F]`` float32, row t = rows ``t-lookback+1 .. t`` oldest first; NaN where
    any of them is missing.
    """
    n, f = scaled.shape
    out = np.full((n, lookback * f), np.nan, dtype=np.float32)
    if n >= lookback:
        win = sliding_window_view(scaled, lookback, axis=0)  # [n-L+1, F, L]
        out[lookback - 1:] = win.transpose(0, 2, 1).reshape(len(win), lookback * f)
    return out
