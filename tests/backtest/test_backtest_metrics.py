"""Backtest metrics against hand-computed answers and known statistical properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import SEED
from scipy.stats import kurtosis, norm, skew

from supsup_fin.backtest.metrics import (
    PERIODS,
    calibration_table,
    daily_sharpe,
    deflated_sharpe,
    expected_calibration_error,
    expected_max_sharpe,
    forecast_metrics,
    metrics_by_group,
    probabilistic_sharpe,
    return_metrics,
    rolling_sharpe,
    sharpe_ci,
    sharpe_ratio,
)
from supsup_fin.backtest.continual import continual_scores
from supsup_fin.errors import DataError

KEYS = {"ann_return", "ann_vol", "sharpe", "sortino", "max_drawdown", "calmar", "hit_rate", "turnover", "days"}


def _series(values, name: str | None = None) -> pd.Series:
    return pd.Series(values, index=pd.bdate_range("2020-01-01", periods=len(values), name="date"),
                     dtype=np.float64, name=name)


def _noise(n: int, mean: float = 0.0005, vol: float = 0.01, seed: int = SEED) -> pd.Series:
    return _series(np.random.default_rng(seed).normal(mean, vol, n))


def _skilled(n: int, mean: float = 0.001) -> pd.Series:
    """Seeded noise shifted to a sample mean of exactly ``mean`` (a positive Sharpe for any seed)."""
    x = _noise(n)
    return x - x.mean() + mean


# --- return_metrics -------------------------------------------------------------------------------

def test_constant_return_compounds_exactly_and_has_no_drawdown() -> None:
    r = 0.001
    m = return_metrics(_series([r] * (2 * PERIODS)))
    assert set(m) == KEYS
    assert m["ann_return"] == pytest.approx((1 + r) ** PERIODS - 1, rel=1e-10)
    assert m["max_drawdown"] == 0.0
    assert m["ann_vol"] == 0.0
    assert math.isnan(m["sharpe"]) and math.isnan(m["sortino"]) and math.isnan(m["calmar"])
    assert m["hit_rate"] == 1.0 and math.isnan(m["turnover"]) and m["days"] == 2 * PERIODS


def test_known_peak_to_trough_is_the_drawdown() -> None:
    # wealth 1.1, 0.88, 1.1, 0.55, 0.605: worst fall is 1.1 -> 0.55, not the earlier 1.1 -> 0.88
    m = return_metrics(_series([0.1, -0.2, 0.25, -0.5, 0.1]))
    assert m["max_drawdown"] == pytest.approx(-0.5, abs=1e-12)
    years = 5 / PERIODS
    assert m["ann_return"] == pytest.approx(0.605 ** (1 / years) - 1, rel=1e-10)
    assert m["calmar"] == pytest.approx(m["ann_return"] / 0.5, rel=1e-10)


def test_sharpe_is_mean_over_sample_std_annualised() -> None:
    r = _noise(500)
    x = r.to_numpy()
    expected = x.mean() / x.std(ddof=1) * math.sqrt(PERIODS)
    assert return_metrics(r)["sharpe"] == pytest.approx(expected, rel=1e-10)
    assert sharpe_ratio(r) == pytest.approx(expected, rel=1e-10)
    assert daily_sharpe(r) == pytest.approx(x.mean() / x.std(ddof=1), rel=1e-10)
    assert return_metrics(r)["ann_vol"] == pytest.approx(x.std(ddof=1) * math.sqrt(PERIODS), rel=1e-10)


def test_rolling_sharpe_is_the_sharpe_of_each_trailing_window() -> None:
    r = _noise(100)
    r.iloc[40] = np.nan  # dropped first, as every metric drops it
    r.iloc[70:80] = 0.0003  # ten equal returns: a 5-day window inside them has no dispersion
    rs = rolling_sharpe(r.rename("s"), window=5)
    kept = r.dropna()
    assert rs.name == "s" and rs.index.equals(kept.index)
    assert rs.iloc[:4].isna().all()
    for end in (4, 39, 40, 60, 98):
        assert rs.iloc[end] == pytest.approx(sharpe_ratio(kept.iloc[end - 4: end + 1]), rel=1e-9)
    flat = kept.index.get_indexer(r.index[74:80])  # windows wholly inside the equal returns
    assert rs.iloc[flat].isna().all() and np.isfinite(rs.iloc[flat[0] - 1])
    with pytest.raises(DataError, match="at least 2"):
        rolling_sharpe(r, window=1)


def test_turnover_of_a_known_position_path() -> None:
    pos = _series([0.0, 1.0, 1.0, -1.0, 0.0, 0.5])
    ret = _series([0.0, 0.01, -0.01, 0.02, 0.0, 0.01])
    # |Δ| from flat: 0 + 1 + 0 + 2 + 1 + 0.5 = 4.5 over 6 days
    assert return_metrics(ret, pos)["turnover"] == pytest.approx(4.5 / (6 / PERIODS))
    # a position already held on day one counts as a trade
    assert return_metrics(_series([0.01] * 4), _series([1.0] * 4))["turnover"] == pytest.approx(PERIODS / 4)


def test_hit_rate_counts_active_days_only() -> None:
    ret = _series([0.01, -0.02, 0.0, 0.03, 0.005])
    pos = _series([1.0, 1.0, 0.0, -1.0, 0.0])
    assert return_metrics(ret, pos)["hit_rate"] == pytest.approx(2 / 3)  # days 0, 1, 3
    assert return_metrics(ret)["hit_rate"] == pytest.approx(3 / 4)  # non-zero returns: days 0, 1, 3, 4


def test_nan_returns_are_dropped_with_their_position() -> None:
    ret = _series([0.01, -0.02, 0.03, np.nan])
    pos = _series([1.0, 1.0, -1.0, np.nan])
    m, ref = return_metrics(ret, pos), return_metrics(ret.iloc[:3], pos.iloc[:3])
    assert m["days"] == 3
    assert m == pytest.approx(ref, nan_ok=True)


def test_all_zero_and_empty_returns_are_finite_or_nan_without_warnings() -> None:
    m = return_metrics(_series([0.0] * 20), _series([0.0] * 20))
    assert m["ann_return"] == 0.0 and m["ann_vol"] == 0.0 and m["max_drawdown"] == 0.0 and m["turnover"] == 0.0
    assert math.isnan(m["sharpe"]) and math.isnan(m["sortino"]) and math.isnan(m["hit_rate"])
    empty = return_metrics(_series([]))
    assert empty["days"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "days")


def test_wiped_out_wealth_gives_minus_one_return() -> None:
    m = return_metrics(_series([0.1, -1.5, 0.2]))  # a leveraged short can lose more than everything
    assert m["ann_return"] == -1.0
    assert all(math.isfinite(m[k]) or math.isnan(m[k]) for k in KEYS)


def test_bad_return_inputs_raise_data_errors() -> None:
    with pytest.raises(DataError, match=r"1-D.*shape \(5, 2\)"):
        return_metrics(np.zeros((5, 2)))
    with pytest.raises(DataError, match=r"1-D.*DataFrame"):
        return_metrics(pd.DataFrame({"a": [0.0], "b": [0.0]}))
    with pytest.raises(DataError, match=r"'trend'.*expected 5 positions.*got 4"):
        return_metrics(_series([0.0] * 5, name="trend"), _series([0.0] * 4))
    shifted = _series([0.0] * 5).shift(1, freq="B")
    with pytest.raises(DataError, match="same index"):
        return_metrics(_series([0.0] * 5), shifted)
    with pytest.raises(DataError, match="finite positions"):
        return_metrics(_series([0.0] * 3), _series([0.0, np.nan, 1.0]))
    with pytest.raises(DataError, match="finite returns"):
        return_metrics(_series([0.0, np.inf]))


# --- forecast metrics and calibration -------------------------------------------------------------

def test_forecast_metrics_ignore_unknown_targets() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    y = np.array([0, 0, -1, 1])
    m = forecast_metrics(probs, y)
    assert m["n"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.2) + math.log(0.5)) / 3)
    assert m["brier"] == pytest.approx((2 * 0.3**2 + 2 * 0.8**2 + 2 * 0.5**2) / 3)
    empty = forecast_metrics(probs[:1], np.array([-1]))
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and math.isnan(empty["log_loss"])


def test_forecast_metrics_reject_bad_shapes() -> None:
    with pytest.raises(DataError, match=r"shape \[n, classes\].*\(4,\)"):
        forecast_metrics(np.zeros(4), np.zeros(4, dtype=int))
    with pytest.raises(DataError, match=r"y of shape \(2,\).*\(3,\)"):
        forecast_metrics(np.full((2, 2), 0.5), np.zeros(3, dtype=int))
    with pytest.raises(DataError, match="labels below 2.*got 2"):
        forecast_metrics(np.full((2, 2), 0.5), np.array([0, 2]))


def _calibrated(n: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    probs = rng.dirichlet(np.ones(classes), size=n)
    y = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1)  # y ~ Categorical(probs)
    return probs, y


def test_calibrated_probabilities_match_observed_frequencies() -> None:
    probs, y = _calibrated(60_000)
    table = calibration_table(probs, y, bins=10, classes=["down", "flat", "up"])
    assert list(table.columns) == ["class", "bin", "p_lo", "p_hi", "mean_predicted", "observed", "count"]
    assert set(table["class"]) == {"down", "flat", "up"}
    assert (table.groupby("class")["count"].sum() == len(y)).all()
    assert (table["count"] > 0).all()
    assert ((table.mean_predicted >= table.p_lo) & (table.mean_predicted <= table.p_hi)).all()
    big = table[table["count"] >= 500]
    assert len(big) >= 25
    tol = 5 * np.sqrt(0.25 / big["count"])
    assert ((big.observed - big.mean_predicted).abs() < tol).all()
    assert expected_calibration_error(probs, y) < 0.01
    # overconfident forecasts of the same outcomes are visibly miscalibrated
    sharp = probs**3 / (probs**3).sum(axis=1, keepdims=True)
    assert expected_calibration_error(sharp, y) > 0.05


def test_calibration_table_keeps_only_populated_bins() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65]])
    table = calibration_table(probs, np.array([0, 1, 1]), bins=10)
    assert table[table["class"] == 0]["bin"].tolist() == [3, 9]
    assert table[table["class"] == 1]["bin"].tolist() == [0, 6]
    row = table[(table["class"] == 0) & (table["bin"] == 9)].iloc[0]
    assert row["count"] == 2 and row["observed"] == 0.5 and row["mean_predicted"] == pytest.approx(0.95)
    with pytest.raises(DataError, match="expected 2 class names.*got 3"):
        calibration_table(probs, np.array([0, 1, 1]), classes=["a", "b", "c"])


def test_expected_calibration_error_known_answers() -> None:
    onehot = np.eye(3)[[0, 2, 1, 1]]
    assert expected_calibration_error(onehot, np.array([0, 2, 1, 1])) == 0.0
    probs = np.tile([0.8, 0.2], (4, 1))
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.3)


# --- Sharpe inference -----------------------------------------------------------------------------

def test_sharpe_ci_contains_estimate_is_seeded_and_narrows_with_data() -> None:
    short, long = _noise(250), _noise(2000)
    lo, hi = sharpe_ci(short, n_boot=400, seed=SEED)
    assert lo < sharpe_ratio(short) < hi
    assert sharpe_ci(short, n_boot=400, seed=SEED) == (lo, hi)
    assert sharpe_ci(short, n_boot=400, seed=SEED + 1) != (lo, hi)
    lo2, hi2 = sharpe_ci(long, n_boot=400, seed=SEED)
    assert lo2 < sharpe_ratio(long) < hi2
    assert hi2 - lo2 < 0.6 * (hi - lo)
    assert all(math.isnan(v) for v in sharpe_ci(_series([0.001] * 50)))


def test_sharpe_ci_of_unbroken_blocks_is_the_sample_sharpe_exactly() -> None:
    """Degenerate case with a known interval: with an expected block far longer than the series
    the stationary bootstrap never starts a new block, so every resample is a circular shift of
    the returns (same mean, same std) and both ends are the sample Sharpe."""
    r = _noise(200)
    x = r.to_numpy()
    sr = x.mean() / x.std(ddof=1) * math.sqrt(PERIODS)
    lo, hi = sharpe_ci(r, n_boot=200, block=10**15, seed=SEED)
    assert lo == pytest.approx(sr, rel=1e-12) and hi == pytest.approx(sr, rel=1e-12)


def test_sharpe_ci_of_iid_normal_returns_has_the_known_centre_and_width() -> None:
    """Returns whose sample mean and std are exactly 0.001 and 0.01 have annualised Sharpe
    0.1 * sqrt(252) = 1.587; for i.i.d. normal returns its standard error is
    sqrt(252 (1 + SR_d^2 / 2) / n) (Lo, 2002), so the 95% interval is about ±1.96 of it around 1.587."""
    n = 3000
    z = np.random.default_rng(SEED).standard_normal(n)
    x = 0.001 + 0.01 * (z - z.mean()) / z.std(ddof=1)
    sr_d = 0.1
    known = sr_d * math.sqrt(PERIODS)
    assert sharpe_ratio(_series(x)) == pytest.approx(known, rel=1e-12)
    se = math.sqrt(PERIODS * (1 + sr_d**2 / 2) / n)
    lo, hi = sharpe_ci(_series(x), n_boot=2000, block=1, seed=SEED)
    assert lo < known < hi
    assert (hi - lo) == pytest.approx(2 * 1.959964 * se, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(known, abs=0.2 * se)


def test_probabilistic_sharpe_matches_formula_and_is_half_at_the_observed_sharpe() -> None:
    r = _noise(500, mean=0.001)
    x = r.to_numpy()
    sr = daily_sharpe(r)
    assert probabilistic_sharpe(r, benchmark=sr) == pytest.approx(0.5)
    g3, g4 = skew(x), kurtosis(x, fisher=False)
    z = sr * math.sqrt(len(x) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    assert probabilistic_sharpe(r) == pytest.approx(norm.cdf(z), rel=1e-10)


def test_probabilistic_sharpe_grows_with_track_record() -> None:
    base = _skilled(100).to_numpy()
    psr = [probabilistic_sharpe(_series(np.tile(base, k))) for k in (1, 2, 4, 8)]
    assert 0.5 < psr[0] < psr[1] < psr[2] < psr[3] < 1.0
    assert math.isnan(probabilistic_sharpe(_series([0.01] * 10)))


def test_expected_max_sharpe() -> None:
    assert expected_max_sharpe([0.05]) == 0.0
    s = 0.03
    gamma = 0.5772156649015329
    assert expected_max_sharpe([-s, s]) == pytest.approx(s * math.sqrt(2) * gamma * norm.ppf(1 - 1 / (2 * math.e)))
    assert expected_max_sharpe([np.nan, -s, s]) == expected_max_sharpe([-s, s])  # a never-traded trial
    assert expected_max_sharpe([np.nan, s]) == 0.0
    with pytest.raises(DataError, match="non-empty"):
        expected_max_sharpe([])


def test_deflated_sharpe_penalises_more_and_larger_trials() -> None:
    r = _skilled(750)
    trials = np.random.default_rng(SEED).normal(0.0, 0.02, 1000)
    psr0 = probabilistic_sharpe(r)
    few, many = deflated_sharpe(r, trials[:10]), deflated_sharpe(r, trials)
    wide = deflated_sharpe(r, 2 * trials[:10])
    assert deflated_sharpe(r, [daily_sharpe(r)]) == pytest.approx(psr0)
    assert psr0 >= few > many
    assert few > wide


# --- by group and continual scores ----------------------------------------------------------------

def test_metrics_by_group_scores_each_subset() -> None:
    rng = np.random.default_rng(SEED)
    n = 60
    probs = rng.dirichlet([1.0, 1.0], size=n)
    frame = pd.DataFrame({
        "regime": rng.choice(["calm", "bear", "bull"], n), "ret": rng.normal(0.0, 0.01, n),
        "position": rng.choice([-1.0, 0.0, 1.0], n), "p0": probs[:, 0], "p1": probs[:, 1],
        "target": rng.choice([-1, 0, 1], n),
    }, index=pd.bdate_range("2021-01-01", periods=n))
    frame.loc[frame.index[:3], "regime"] = None
    frame.loc[frame.index[3:9], ["p0", "p1"]] = np.nan  # days without a forecast
    out = metrics_by_group(frame, "regime", probs=["p0", "p1"], target="target")
    assert list(out.index) == ["bear", "bull", "calm"] and out.index.name == "regime"
    for key in out.index:
        sub = frame[frame.regime == key]
        scored = sub.dropna(subset=["p0", "p1"])
        expected = {**return_metrics(sub.ret, sub.position),
                    **forecast_metrics(scored[["p0", "p1"]].to_numpy(), scored.target.to_numpy())}
        assert out.loc[key].to_dict() == pytest.approx(expected, nan_ok=True)
    assert out["days"].sum() == n - 3
    assert out["n"].sum() == ((frame.index >= frame.index[9]) & (frame.target >= 0)).sum()
    plain = metrics_by_group(frame, "regime", positions=None)
    assert "accuracy" not in plain and plain["turnover"].isna().all()
    with pytest.raises(DataError, match=r"expected columns \['strategy_ret'\]"):
        metrics_by_group(frame, "regime", returns="strategy_ret")
    with pytest.raises(DataError, match="both probs and target"):
        metrics_by_group(frame, "regime", probs=["p0", "p1"])


def test_continual_scores_on_a_hand_written_matrix() -> None:
    nan = float("nan")
    acc = np.array([[0.90, nan, nan],
                    [0.95, 0.80, nan],
                    [0.60, 0.85, 0.95]])
    s = continual_scores(acc)
    assert s["avg_accuracy"] == pytest.approx(0.8)
    assert s["bwt"] == pytest.approx(((0.60 - 0.90) + (0.85 - 0.80)) / 2)
    assert s["forgetting"] == pytest.approx(((0.95 - 0.60) + (0.80 - 0.85)) / 2)
    assert continual_scores(np.array([[0.7]])) == {"avg_accuracy": 0.7, "bwt": 0.0, "forgetting": 0.0}


def test_continual_scores_validate_the_matrix() -> None:
    with pytest.raises(DataError, match=r"square \[T, T\].*\(2, 3\)"):
        continual_scores(np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"finite accuracies.*\[1, 0\]"):
        continual_scores(np.array([[0.5, np.nan], [np.nan, 0.5]]))
