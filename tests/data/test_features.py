from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import random_walk
from supsup_fin.errors import DataError
from supsup_fin.features import (
    FEATURES,
    Scaler,
    classify,
    feature_warmup,
    fit_class_edges,
    forward_returns,
    input_windows,
    make_features,
)


def _ohlcv(n: int) -> pd.DataFrame:
    p = random_walk(n)
    p["high"] = p["close"] * 1.01
    p["low"] = p["close"] * 0.99
    p["volume"] = np.arange(n, dtype=float) + 1e6
    return p


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_every_feature_is_causal_and_window_exact(name: str) -> None:
    prices = _ohlcv(400)
    full = make_features(prices, [name])[name].to_numpy()
    # appending future rows never changes the past
    for cut in (150, 273, 399):
        prefix = make_features(prices.iloc[:cut], [name])[name].to_numpy()
        np.testing.assert_array_equal(prefix, full[:cut])
    # a suffix that still covers the warm-up gives bitwise the same values
    w = FEATURES[name].warmup
    start = 200
    suffix = make_features(prices.iloc[start - w:], [name])[name].to_numpy()
    np.testing.assert_array_equal(suffix[w:], full[start:])
    assert np.isnan(full[: w]).all() and np.isfinite(full[w:]).all()


def test_feature_values_match_their_definitions() -> None:
    prices = random_walk(100)
    f = make_features(prices, ["ret_5", "vol_20", "ma_gap_20"])
    c = prices["close"]
    np.testing.assert_allclose(f["ret_5"].iloc[50], np.log(c.iloc[50] / c.iloc[45]), rtol=1e-12)
    r = np.log(c).diff()
    np.testing.assert_allclose(f["vol_20"].iloc[60], r.iloc[41:61].std(), rtol=1e-10)
    np.testing.assert_allclose(f["ma_gap_20"].iloc[60], np.log(c.iloc[60] / c.iloc[41:61].mean()), rtol=1e-12)


def test_missing_column_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"market 'wti': feature 'range_1' needs columns \['high', 'low'\]"):
        make_features(random_walk(50), ["range_1"], market="wti")


def test_forward_returns_and_tertile_classes() -> None:
    prices = random_walk(600)
    fwd = forward_returns(prices, 5).to_numpy()
    assert np.isnan(fwd[-5:]).all() and np.isfinite(fwd[:-5]).all()
    edges = fit_class_edges(fwd[:400], 3)
    y = classify(fwd, edges)
    assert (y[-5:] == -1).all()
    counts = np.bincount(y[:400], minlength=3)
    assert counts.min() >= 132 and counts.max() <= 135  # tertiles of the training targets
    assert (fwd[y == 0] < fwd[y == 2].min()).all()


def test_scaler_and_windows_layout(rng: np.random.Generator) -> None:
    raw = rng.normal(3.0, 2.0, size=(50, 2))
    s = Scaler.fit(raw)
    z = s.transform(raw)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Scaler.from_dict(s.to_dict()).transform(raw), z)
    X = input_windows(z, 4)
    assert X.shape == (50, 8) and X.dtype == np.float32
    assert np.isnan(X[:3]).all()
    np.testing.assert_array_equal(X[10], z[7:11].astype(np.float32).reshape(-1))  # oldest row first


def test_warmup_is_the_longest_feature() -> None:
    assert feature_warmup(["ret_1", "drawdown_60"]) == 59
