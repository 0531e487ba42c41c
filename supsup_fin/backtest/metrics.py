"""Backtest scores: risk and return, forecast quality, calibration, Sharpe inference.

Standard risk metrics come from ``empyrical``; the Sharpe interval uses ``arch``'s stationary
bootstrap. Hand-written here: hit rate, turnover, calibration, and the probabilistic and deflated
Sharpe ratios (Bailey & López de Prado, 2012 and 2014). The continual-learning scores are in
:mod:`supsup_fin.backtest.continual`.

Undefined values are NaN, never ``inf``: a Sharpe or Sortino ratio without dispersion or
downside, a Calmar ratio without drawdown, any metric of an empty series.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import empyrical
import numpy as np
import pandas as pd
from arch.bootstrap import StationaryBootstrap
from scipy.stats import norm

from supsup_fin.errors import DataError
from supsup_fin.forecaster.calibration import log_loss
from supsup_fin.forecaster.evaluate import accuracy, brier

log = logging.getLogger(__name__)

PERIODS = 252
_EULER_GAMMA = 0.5772156649015329
_RETURN_KEYS = ("ann_return", "ann_vol", "sharpe", "sortino", "max_drawdown", "calmar",
                "hit_rate", "turnover", "days")
_FORECAST_KEYS = ("accuracy", "log_loss", "brier", "n")
_NO_DISPERSION = 1e-12
"""A standard deviation at or below this is no dispersion (rounding residue of equal values)."""


def _where(returns: object) -> str:
    name = getattr(returns, "name", None)
    return f" for {name!r}" if name is not None else ""


def _finite(x: float) -> float:
    x = float(x)
    return x if np.isfinite(x) else float("nan")


def _series(x: object, what: str, where: str = "") -> pd.Series:
    """``x`` as a 1-D Series; DataError for a frame or an array of another shape."""
    if isinstance(x, pd.Series):
        return x
    if isinstance(x, pd.DataFrame):
        raise DataError(f"{what}{where}: expected a 1-D series, got a DataFrame with columns {list(x.columns)}")
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"{what}{where}: expected a 1-D series, got an array of shape {arr.shape}")
    return pd.Series(arr)


def _returns(returns: pd.Series | np.ndarray | Sequence[float], what: str = "returns") -> pd.Series:
    """``returns`` as a float Series with NaN rows dropped; DataError if not 1-D or infinite."""
    s = _series(returns, what)
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what}{_where(returns)}: expected numeric returns, got dtype {s.dtype}") from e
    if np.isinf(s.to_numpy()).any():
        raise DataError(f"{what}{_where(returns)}: expected finite returns, got inf on {s.index[np.isinf(s)][0]}")
    return s.dropna()


def daily_sharpe(returns: pd.Series | np.ndarray) -> float:
    """Per-period (not annualised) Sharpe ``mean / std`` (ddof 1, as empyrical); NaN if undefined."""
    return _finite(empyrical.sharpe_ratio(_returns(returns, "daily_sharpe").to_numpy(), annualization=1))


def sharpe_ratio(returns: pd.Series | np.ndarray, periods: int = PERIODS) -> float:
    """Annualised Sharpe ratio (risk-free 0), ``daily_sharpe * sqrt(periods)``; NaN if undefined."""
    return _finite(empyrical.sharpe_ratio(_returns(returns, "sharpe_ratio").to_numpy(), annualization=periods))


def rolling_sharpe(returns: pd.Series, window: int = 63, periods: int = PERIODS) -> pd.Series:
    """Annualised Sharpe ratio of each trailing ``window`` days, as :func:`sharpe_ratio` of those days.

    Parameters
    ----------
    returns : pd.Series ``[n]``
        Simple return of each day; NaN rows are dropped first.
    window : int
        Days per window (at least 2).

    Returns
    -------
    pd.Series ``[n - n_nan]``
        On the returns' index; NaN for the first ``window - 1`` days and for windows without
        dispersion.
    """
    if window < 2:
        raise DataError(f"rolling_sharpe{_where(returns)}: expected a window of at least 2 days, got {window}")
    r = _returns(returns, "rolling_sharpe")
    roll = r.rolling(window, min_periods=window)
    std = roll.std(ddof=1)
    return (roll.mean() / std.where(std > _NO_DISPERSION) * np.sqrt(periods)).rename(r.name)


def return_metrics(
    returns: pd.Series, positions: pd.Series | None = None, periods: int = PERIODS
) -> dict[str, float]:
    """Risk and return of a strategy's daily simple returns (after costs).

    Parameters
    ----------
    returns : pd.Series ``[n]``
        Simple return of each day. NaN rows (e.g. a last day whose return is not known yet)
        are dropped, with their position, before anything is computed.
    positions : pd.Series ``[n]``, optional
        Position that earned each day's return, on ``returns``' index. Turnover counts the
        first day's change from flat.
    periods : int
        Periods per year.

    Returns
    -------
    dict
        ``ann_return`` (CAGR; -1.0 once wealth reaches 0), ``ann_vol``, ``sharpe``, ``sortino``,
        ``max_drawdown`` (<= 0), ``calmar``, ``hit_rate`` (share of active days with a positive
        return; active: non-zero position, or non-zero return without positions),
        ``turnover`` (``sum |Δposition|`` per year; NaN without positions), ``days``.
    """
    raw = _series(returns, "return_metrics")
    r = _returns(raw, "return_metrics")
    pos = None
    if positions is not None:
        p = _series(positions, "return_metrics positions", _where(returns))
        if len(p) != len(raw):
            raise DataError(f"return_metrics{_where(returns)}: expected {len(raw)} positions (one per return), "
                            f"got {len(p)}")
        if isinstance(positions, pd.Series) and isinstance(returns, pd.Series) and not p.index.equals(raw.index):
            raise DataError(f"return_metrics{_where(returns)}: positions and returns need the same index; "
                            f"they differ first at position {int(np.argmax(p.index != raw.index))}")
        pos = p.set_axis(raw.index).astype(np.float64).loc[r.index]
        if not np.isfinite(pos.to_numpy()).all():
            raise DataError(f"return_metrics{_where(returns)}: expected finite positions on days with a return, "
                            f"got {pos[~np.isfinite(pos)].iloc[0]} on {pos.index[~np.isfinite(pos)][0]}")
    x, n = r.to_numpy(), len(r)
    out = dict.fromkeys(_RETURN_KEYS, float("nan"))
    out["days"] = n
    if n == 0:
        return out
    wealth = float(np.prod(1.0 + x))
    out["ann_return"] = float(empyrical.annual_return(x, annualization=periods)) if wealth > 0 else -1.0
    constant = bool(x.max() == x.min())  # empyrical leaves a ~1e-18 residue as the std of equal values
    out["ann_vol"] = 0.0 if constant and n > 1 else _finite(empyrical.annual_volatility(x, annualization=periods))
    out["sharpe"] = _finite(empyrical.sharpe_ratio(x, annualization=periods))
    out["sortino"] = _finite(empyrical.sortino_ratio(x, annualization=periods))
    out["max_drawdown"] = float(empyrical.max_drawdown(x))
    out["calmar"] = _finite(empyrical.calmar_ratio(x, annualization=periods))
    active = pos.to_numpy() != 0 if pos is not None else x != 0
    out["hit_rate"] = float((x[active] > 0).mean()) if active.any() else float("nan")
    if pos is not None:
        out["turnover"] = float(np.abs(np.diff(pos.to_numpy(), prepend=0.0)).sum() / (n / periods))
    return out


def _probs_y(probs: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``probs [n, C]`` and int ``y [n]`` restricted to rows with a known target."""
    p, t = np.asarray(probs, dtype=np.float64), np.asarray(y)
    if p.ndim != 2:
        raise DataError(f"{where}: expected probs of shape [n, classes], got shape {p.shape}")
    if t.ndim != 1 or len(t) != len(p):
        raise DataError(f"{where}: expected y of shape ({len(p)},) to match probs, got shape {t.shape}")
    if t.dtype.kind == "f":
        known = np.isfinite(t) & (t >= 0)
        odd = t[known][t[known] != np.round(t[known])]
        if len(odd):
            raise DataError(f"{where}: expected integer class labels in y, got {odd[0]}")
    elif t.dtype.kind in "iu":
        known = t >= 0
    else:
        raise DataError(f"{where}: expected integer class labels in y, got dtype {t.dtype}")
    p, t = p[known], t[known].astype(np.int64)
    if (t >= p.shape[1]).any():
        raise DataError(f"{where}: expected labels below {p.shape[1]} (one per probs column), got {t.max()}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError(f"{where}: expected probabilities in [0, 1], got values in [{p.min()}, {p.max()}]")
    return p, t


def forecast_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``log_loss``, ``brier`` and ``n`` of ``probs [n, C]`` against ``y [n]``.

    Rows with ``y < 0`` (unknown target) are ignored; with none left the scores are NaN, ``n`` 0.
    """
    p, t = _probs_y(probs, y, "forecast_metrics")
    return {"accuracy": accuracy(p, t), "log_loss": log_loss(p, t), "brier": brier(p, t), "n": len(t)}


def _bin_of(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin on [0, 1]: ``[k/bins, (k+1)/bins)``, the last bin closed."""
    if bins < 1:
        raise DataError(f"calibration: expected bins >= 1, got {bins}")
    return np.minimum((p * bins).astype(np.int64), bins - 1)


def calibration_table(
    probs: np.ndarray, y: np.ndarray, bins: int = 10, classes: list[str] | None = None
) -> pd.DataFrame:
    """One-vs-rest reliability table of ``probs [n, C]`` against ``y [n]`` (``y < 0`` ignored).

    One row per class and non-empty bin: ``class`` (name from ``classes``, else the column
    number), ``bin``, ``p_lo``, ``p_hi``, ``mean_predicted`` (mean of that class's probability),
    ``observed`` (share of rows whose label is that class) and ``count``.
    """
    p, t = _probs_y(probs, y, "calibration_table")
    names = list(range(p.shape[1])) if classes is None else list(classes)
    if len(names) != p.shape[1]:
        raise DataError(f"calibration_table: expected {p.shape[1]} class names (one per probs column), "
                        f"got {len(names)}: {names}")
    rows = []
    for c, name in enumerate(names):
        b = _bin_of(p[:, c], bins)
        hit = (t == c).astype(np.float64)
        for k in np.unique(b):
            m = b == k
            rows.append({"class": name, "bin": int(k), "p_lo": k / bins, "p_hi": (k + 1) / bins,
                         "mean_predicted": float(p[m, c].mean()), "observed": float(hit[m].mean()),
                         "count": int(m.sum())})
    cols = ["class", "bin", "p_lo", "p_hi", "mean_predicted", "observed", "count"]
    return pd.DataFrame(rows, columns=cols)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: ``sum_b (n_b / n) |accuracy_b - confidence_b|`` over equal-width bins; NaN if empty."""
    p, t = _probs_y(probs, y, "expected_calibration_error")
    if not len(t):
        return float("nan")
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == t).astype(np.float64)
    b = _bin_of(conf, bins)
    gap = sum(abs(correct[b == k].sum() - conf[b == k].sum()) for k in np.unique(b))
    return float(gap / len(t))


def sharpe_ci(
    returns: pd.Series, level: float = 0.95, n_boot: int = 1000, block: int | None = None,
    seed: int = 0, periods: int = PERIODS,
) -> tuple[float, float]:
    """Percentile interval of the annualised Sharpe from ``arch``'s stationary bootstrap.

    ``block`` is the expected block length, by default ``max(1, round(n ** (1/3)))``. The
    same ``seed`` gives the same interval. ``(nan, nan)`` with fewer than 3 returns, without
    dispersion, or if a resample has an undefined Sharpe (only likely for tiny series).
    """
    if not 0 < level < 1:
        raise DataError(f"sharpe_ci: expected 0 < level < 1, got {level}")
    x = _returns(returns, "sharpe_ci").to_numpy()
    if len(x) < 3 or x.max() == x.min():
        return float("nan"), float("nan")
    size = block if block is not None else max(1, round(len(x) ** (1 / 3)))
    if size < 1:
        raise DataError(f"sharpe_ci: expected a block length >= 1, got {size}")

    def stat(a: np.ndarray) -> np.ndarray:
        return np.array([_finite(empyrical.sharpe_ratio(a, annualization=periods))])

    bs = StationaryBootstrap(size, x, seed=np.random.default_rng(seed))
    lo, hi = bs.conf_int(stat, reps=n_boot, method="percentile", size=level)[:, 0]
    return float(lo), float(hi)


def probabilistic_sharpe(returns: pd.Series, benchmark: float = 0.0) -> float:
    """Probability that the true per-period Sharpe exceeds ``benchmark`` (per-period too).

    ``Φ((SR - SR*) sqrt(n - 1) / sqrt(1 - γ3 SR + (γ4 - 1) / 4 SR²))`` with ``SR`` the
    per-period Sharpe (ddof 1), γ3 the skewness and γ4 the (non-excess) kurtosis of the
    returns. NaN with fewer than 3 returns or without dispersion.
    """
    x = _returns(returns, "probabilistic_sharpe").to_numpy()
    if len(x) < 3 or x.max() == x.min():
        return float("nan")
    sr = daily_sharpe(x)
    z = x - x.mean()
    m2 = (z**2).mean()
    g3, g4 = (z**3).mean() / m2**1.5, (z**4).mean() / m2**2
    var = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2
    if not np.isfinite(sr) or var <= 0:
        return float("nan")
    return float(norm.cdf((sr - benchmark) * np.sqrt(len(x) - 1) / np.sqrt(var)))


def expected_max_sharpe(trial_sharpes: Sequence[float]) -> float:
    """Expected maximum of N trials' per-period Sharpes under the null of no skill.

    ``sqrt(Var[SR_n]) ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))``, γ Euler–Mascheroni,
    variance across trials with ddof 1. NaN trials (undefined Sharpe, e.g. a strategy that
    never traded) are left out; one trial left gives 0.
    """
    s = np.asarray(trial_sharpes, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or np.isinf(s).any():
        raise DataError(f"expected_max_sharpe: expected a non-empty 1-D list of finite per-period Sharpes, "
                        f"got {s.size} values of shape {s.shape}" + (" with inf" if np.isinf(s).any() else ""))
    if np.isnan(s).any():
        log.debug("expected_max_sharpe: leaving out %d NaN trial Sharpes", int(np.isnan(s).sum()))
        s = s[~np.isnan(s)]
    n = len(s)
    if n <= 1:
        return 0.0
    quantiles = (1 - _EULER_GAMMA) * norm.ppf(1 - 1 / n) + _EULER_GAMMA * norm.ppf(1 - 1 / (n * np.e))
    return float(np.sqrt(s.var(ddof=1)) * quantiles)


def deflated_sharpe(returns: pd.Series, trial_sharpes: Sequence[float]) -> float:
    """PSR against the expected maximum Sharpe of the trials tried (per-period Sharpes, see
    :func:`daily_sharpe`); the selected strategy's own Sharpe should be among them."""
    return probabilistic_sharpe(returns, benchmark=expected_max_sharpe(trial_sharpes))


def metrics_by_group(
    frame: pd.DataFrame, group: str, returns: str = "ret", positions: str | None = "position",
    probs: list[str] | None = None, target: str | None = None,
) -> pd.DataFrame:
    """:func:`return_metrics` (and :func:`forecast_metrics`) of each value of ``frame[group]``.

    Each group's rows are scored as one series, gaps included. Rows whose group is NaN are
    left out. Forecast scores need both ``probs`` (class probability columns) and ``target``
    (int class column, -1 unknown); rows without a forecast (a NaN probability) or with an
    unknown target are left out of them. Returns one row per group value, index sorted.
    """
    needed = [group, returns] + ([positions] if positions else []) + list(probs or []) + ([target] if target else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"metrics_by_group: expected columns {missing} in the frame, got {list(frame.columns)}")
    if (probs is None) != (target is None):
        raise DataError(f"metrics_by_group: forecast scores need both probs and target, got probs={probs}, "
                        f"target={target}")
    rows = {}
    for key, sub in frame.groupby(group, sort=True):
        row = return_metrics(sub[returns].rename(f"{group}={key}"), sub[positions] if positions else None)
        if probs is not None:
            p = sub[probs].to_numpy(dtype=np.float64)
            has = np.isfinite(p).all(axis=1)
            row.update(forecast_metrics(p[has], sub[target].to_numpy()[has]))
        rows[key] = row
    cols = list(_RETURN_KEYS) + (list(_FORECAST_KEYS) if probs is not None else [])
    out = pd.DataFrame.from_dict(rows, orient="index", columns=cols).rename_axis(group)
    return out.astype({k: np.int64 for k in ("days", "n") if k in out})
