"""Synthetic markets with a common driver, and the true-parameter oracle against known answers."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from supsup_fin.data import SYNTHETIC_PRESETS, generate_synthetic
from supsup_fin.data.oracle import oracle_filter, oracle_proba, oracle_smooth
from supsup_fin.errors import DataError
from conftest import SEED



@pytest.fixture(scope="module")
def easy():
    return generate_synthetic("easy", 1, seed=SEED, start="2000-01-03", end="2007-12-31")


def test_common_driver_shares_the_regime_path():
    indep = generate_synthetic("hard", 3, seed=SEED, end="2004-12-31")
    common = generate_synthetic("hard", 3, seed=SEED, end="2004-12-31", common_driver=True)
    paths = [s.to_numpy() for s in common.regimes.values()]
    assert all(np.array_equal(paths[0], p) for p in paths[1:])
    assert common.params["common_driver"] is True and indep.params["common_driver"] is False
    assert not np.array_equal(*[s.to_numpy() for s in list(indep.regimes.values())[:2]])
    # innovations stay per market: prices differ; the path does not depend on n_markets
    assert not np.allclose(common.prices["hard_0"]["close"], common.prices["hard_1"]["close"])
    one = generate_synthetic("hard", 1, seed=SEED, end="2004-12-31", common_driver=True)
    assert np.array_equal(one.regimes["hard_0"].to_numpy(), paths[0])


def test_oracle_filter_recovers_easy_regimes_and_is_causal(easy):
    (prices,) = easy.prices.values()
    truth = easy.regimes["easy_0"].to_numpy()
    filt = oracle_filter(prices, easy.params)
    smooth = oracle_smooth(prices, easy.params)
    assert list(filt.columns) == ["calm", "normal", "turbulent"] and filt.index.equals(prices.index)
    np.testing.assert_allclose(filt.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(filt.iloc[0].to_numpy(), SYNTHETIC_PRESETS["easy"].stationary(), atol=1e-9)
    acc_f = (filt.to_numpy().argmax(1) == truth).mean()
    acc_s = (smooth.to_numpy().argmax(1) == truth).mean()
    assert acc_f > 0.85 and acc_s > acc_f
    np.testing.assert_allclose(smooth.iloc[-1], filt.iloc[-1], atol=1e-10)
    for cut in np.random.default_rng(SEED).integers(3, len(prices), 20):
        assert np.array_equal(oracle_filter(prices.iloc[:cut], easy.params).to_numpy(), filt.to_numpy()[:cut])


def test_joint_filter_with_common_driver_beats_single_market():
    draw = generate_synthetic("hard", 4, seed=SEED, end="2007-12-31", common_driver=True)
    truth = draw.regimes["hard_0"].to_numpy()
    single = oracle_filter(draw.prices["hard_0"], draw.params).to_numpy().argmax(1)
    joint = oracle_filter(draw.prices, draw.params).to_numpy().argmax(1)
    assert (joint == truth).mean() > (single == truth).mean() + 0.05


def _simulate_classes(params: dict, z0: int, r0: float, horizon: int, edges: np.ndarray, n: int,
                      seed: int) -> np.ndarray:
    """Brute-force class frequencies of the h-day return from a known (z_t, r_t)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(params["transition"])
    mu, sig, phi = (np.asarray(params[k]) for k in ("drift", "vol", "ar"))
    z = np.full(n, z0)
    prev = np.full(n, r0)
    total = np.zeros(n)
    for _ in range(horizon):
        u = rng.random(n)
        nz = np.minimum((u[:, None] > np.cumsum(a, axis=1)[z]).sum(axis=1), len(mu) - 1)
        r = mu[nz] + phi[nz] * (prev - mu[z]) + sig[nz] * rng.standard_normal(n)
        total += r
        z, prev = nz, r
    return np.bincount(np.digitize(total, edges), minlength=len(edges) + 1) / n


@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_oracle_proba_matches_brute_force_simulation(preset):
    draw = generate_synthetic(preset, 1, seed=SEED, end="2000-03-31")
    (prices,) = draw.prices.values()
    edges = np.array([-0.01, 0.012])
    t = 30
    r_t = float(np.log(prices["close"].iloc[t] / prices["close"].iloc[t - 1]))
    for z0 in range(3):
        onehot = pd.DataFrame(np.eye(3)[[z0] * len(prices)], index=prices.index)
        got = oracle_proba(prices, draw.params, 5, edges, filtered=onehot).iloc[t - 1]
        assert got.name == prices.index[t]
        want = _simulate_classes(draw.params, z0, r_t, 5, edges, 200_000, SEED)
        np.testing.assert_allclose(got.to_numpy(), want, atol=0.006)


def test_oracle_proba_layout_monte_carlo_and_errors(easy):
    (prices,) = easy.prices.values()
    prices = prices.iloc[:300]
    edges = [-0.01, 0.01]
    exact = oracle_proba(prices, easy.params, 4, edges)
    assert list(exact.columns) == ["down", "flat", "up"] and exact.index.equals(prices.index[1:])
    np.testing.assert_allclose(exact.sum(axis=1), 1.0, atol=1e-12)
    mc = oracle_proba(prices, easy.params, 4, edges, max_paths=1, n_paths=5000, seed=3)
    assert np.array_equal(mc.to_numpy(), oracle_proba(prices, easy.params, 4, edges, max_paths=1,
                                                      n_paths=5000, seed=3).to_numpy())
    assert np.abs(mc.to_numpy() - exact.to_numpy()).max() < 0.01
    two = oracle_proba(prices, "easy", 1, [0.0])
    assert list(two.columns) == ["down", "up"]
    for kwargs, what in (({"horizon": 0}, "horizon"), ({"class_edges": [0.1, -0.1]}, "class_edges"),
                         ({"class_edges": []}, "class_edges")):
        args = {"horizon": 3, "class_edges": edges, **kwargs}
        with pytest.raises(DataError, match=what):
            oracle_proba(prices, easy.params, **args)
    with pytest.raises(DataError, match="unknown synthetic preset"):
        oracle_filter(prices, "medium")
    with pytest.raises(DataError, match="missing"):
        oracle_filter(prices, {"transition": [[1.0]]})
