"""Prefix invariance at 1,000 random cut points, the returns-only observations, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from supsup_fin.errors import DataError, SupsupError
from supsup_fin.features import Scaler, make_features
from supsup_fin.regimes import RegimeModel
from conftest import SEED



def regime_prices(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = np.array([[0.98, 0.02], [0.04, 0.96]])
    z = np.zeros(n, dtype=int)
    for t in range(1, n):
        z[t] = rng.choice(2, p=a[z[t - 1]])
    r = rng.normal(0.0, np.array([0.006, 0.025])[z])
    index = pd.bdate_range("2003-01-02", periods=n, name="date")
    return pd.DataFrame({"close": 100.0 * np.exp(np.cumsum(r))}, index=index)


def test_prefix_invariance_at_1000_random_cuts():
    """Every feature, scaler output and filtered probability before a cut is bitwise identical
    whether or not later rows exist (1,000 cut points drawn with SUPSUP_TEST_SEED)."""
    prices = regime_prices(200, SEED)
    model = RegimeModel(2, n_restarts=1, random_state=SEED).fit(prices.iloc[:150])
    names = ["ret_1", "vol_20", "ma_gap_20", "drawdown_60"]
    full_feats = make_features(prices, names).to_numpy()
    scaler = Scaler.fit(full_feats[:150])
    full_scaled = scaler.transform(full_feats)
    full_obs = model.features(prices).to_numpy()
    full_filt = model.filter_proba(prices).to_numpy()
    full_next = model.predict_next_proba(prices).to_numpy()
    cuts = np.random.default_rng(SEED).integers(model.vol_window + 1, len(prices), 1000)
    for cut in cuts:
        part = prices.iloc[:cut]
        m = cut - model.vol_window
        feats = make_features(part, names).to_numpy()
        assert np.array_equal(feats, full_feats[:cut], equal_nan=True), cut
        assert np.array_equal(scaler.transform(feats), full_scaled[:cut], equal_nan=True), cut
        assert np.array_equal(model.features(part).to_numpy(), full_obs[:m]), cut
        assert np.array_equal(model.filter_proba(part).to_numpy(), full_filt[:m]), cut
        assert np.array_equal(model.predict_next_proba(part).to_numpy(), full_next[:m]), cut


def test_returns_only_observations_fit_align_and_round_trip():
    prices = regime_prices(1500, SEED + 3)
    model = RegimeModel(2, observations="return", random_state=SEED).fit(prices.iloc[:1200])
    assert model.means_.shape == (2, 1) and model.covars_.shape == (2, 1, 1)
    assert list(model.features(prices).columns) == ["log_return"]
    assert model.names_ == ["calm", "turbulent"] and model.covars_[0, 0, 0] < model.covars_[1, 0, 0]
    d = json.loads(json.dumps(model.to_dict()))
    assert d["feature_names"] == ["log_return"]
    again = RegimeModel.from_dict(d)
    assert np.array_equal(again.filter_proba(prices).to_numpy(), model.filter_proba(prices).to_numpy())
    refit = RegimeModel(2, observations="return", random_state=SEED + 1).fit(prices, previous=model)
    assert refit.permutation_ == [0, 1] and refit.names_ == model.names_
    same = (refit.filter_proba(prices.iloc[:1200]).to_numpy().argmax(1)
            == model.filter_proba(prices.iloc[:1200]).to_numpy().argmax(1)).mean()
    assert same > 0.95
    with pytest.raises(SupsupError, match="lineage keeps its observations"):
        RegimeModel(2, random_state=SEED).fit(prices, previous=model)
    with pytest.raises(SupsupError, match="observations expected"):
        RegimeModel(2, observations="ohlc").fit(prices)
    with pytest.raises(SupsupError, match="selection expected"):
        RegimeModel((2, 3), selection="aic").fit(prices)


def test_bad_input_names_what_and_where():
    prices = regime_prices(300, SEED)
    with pytest.raises(DataError, match=r"n_states range \(2, 8\): 8 states: expected at least 170 price rows, got 150"):
        RegimeModel((2, 8)).fit(prices.iloc[:150])
    flat = prices.copy()
    flat["close"] = 50.0
    with pytest.raises(DataError, match=r"constant .*zero volatility.* over 2003-01-16\.\."):
        RegimeModel(2).fit(flat)


def test_consecutive_refits_on_expanding_windows_keep_labels():
    """Refit with previous= on windows growing by 250 rows: >= 95 % of shared days keep their label."""
    from supsup_fin.data import generate_synthetic

    prices = next(iter(generate_synthetic("easy", 1, seed=SEED, end="2008-12-31").prices.values()))
    previous = None
    for end in (1250, 1500, 1750):
        model = RegimeModel(3, n_restarts=2, random_state=SEED).fit(prices.iloc[:end], previous=previous)
        if previous is not None:
            shared = prices.iloc[: end - 250]
            same = (model.filter_proba(shared).to_numpy().argmax(1)
                    == previous.filter_proba(shared).to_numpy().argmax(1)).mean()
            assert same >= 0.95, (end, same, model.permutation_)
            assert model.names_ == previous.names_ and model.permutation_ is not None
        previous = model


def test_peer_statsmodels_agrees_on_the_same_model():
    """Returns-only observations are statsmodels' MarkovRegression model: filters must agree."""
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    prices = regime_prices(1000, SEED + 11)
    ours = RegimeModel(2, observations="return", random_state=SEED).fit(prices).filter_proba(prices)["turbulent"]
    returns = np.log(prices["close"]).diff().iloc[1:] * 100.0
    res = MarkovRegression(returns.to_numpy(), k_regimes=2, switching_variance=True).fit()
    turbulent = int(np.argmax(np.asarray(res.params)[-2:]))
    peer = pd.Series(np.asarray(res.filtered_marginal_probabilities)[:, turbulent], index=returns.index)
    peer = peer.loc[ours.index]
    assert ((ours > 0.5) == (peer > 0.5)).mean() > 0.99
    assert np.abs(ours - peer).mean() < 0.01
