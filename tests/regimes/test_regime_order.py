"""Regimes ordered by mean return (bear / sideways / bull) against a known answer: the synthetic
``easy`` preset with drifts that fall as volatility rises, so the mean order is the reverse of the
volatility order. Round trips, lineage for both orders, the plots' colours and a small retrain."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supsup_fin.config import config_from_dict
from supsup_fin.data.synthetic import SYNTHETIC_PRESETS, generate_synthetic
from supsup_fin.errors import SupsupError
from supsup_fin.forecaster.prepare import lineage_of
from supsup_fin.regimes import RegimeModel, regime_names
from supsup_fin.regimes._canonical import canonical_order
from supsup_fin.regimes.plots import _colours
from conftest import SEED, small_config_dict

DATA = Path(__file__).resolve().parent
DRIFT = (1.5e-3, 0.0, -6e-3)
"""Per true regime (ascending volatility 0.006, 0.012, 0.03): the calm regime rises, the turbulent
one falls by 6e-3 a day, four standard errors of its mean over ~400 days."""


@pytest.fixture(scope="module")
def drifting() -> tuple[pd.DataFrame, np.ndarray]:
    """Ten years of the ``easy`` preset with :data:`DRIFT`; and the true regime per row."""
    preset = dataclasses.replace(SYNTHETIC_PRESETS["easy"], name="drifting", drift=DRIFT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SYNTHETIC_PRESETS, "drifting", preset)
        draw = generate_synthetic("drifting", seed=SEED, end="2009-12-31")
    return draw.prices["drifting_0"], draw.regimes["drifting_0"].to_numpy()


@pytest.fixture(scope="module")
def by_mean(drifting) -> RegimeModel:
    return RegimeModel(3, n_restarts=1, random_state=SEED, order_by="mean").fit(drifting[0])


@pytest.fixture(scope="module")
def by_vol(drifting) -> RegimeModel:
    return RegimeModel(3, n_restarts=1, random_state=SEED).fit(drifting[0])


def test_regime_names_by_mean():
    assert regime_names(2, "mean") == ["bear", "bull"]
    assert regime_names(3, "mean") == ["bear", "sideways", "bull"]
    assert regime_names(4, "mean") == ["bear", "sideways_1", "sideways_2", "bull"]
    assert regime_names(5, "mean") == ["bear", "sideways_1", "sideways_2", "sideways_3", "bull"]
    assert regime_names(1, "mean") == regime_names(1) == ["regime_0"]
    with pytest.raises(SupsupError, match=r"order_by expected one of \['volatility', 'mean'\], got 'drift'"):
        regime_names(3, "drift")
    with pytest.raises(SupsupError, match="order_by expected one of"):
        RegimeModel(2, order_by="bull").fit(pd.DataFrame())


def test_mean_order_breaks_ties_by_volatility():
    means = np.array([[0.5, 0.0], [-1.0, 0.0], [0.5, 0.0]])
    covars = np.array([np.eye(2) * v for v in (3.0, 5.0, 2.0)])
    assert canonical_order(means, covars, "mean").tolist() == [1, 2, 0]
    assert canonical_order(means, covars, "volatility").tolist() == [2, 0, 1]


def test_negative_drift_regime_is_bear(drifting, by_mean, by_vol):
    prices, truth = drifting
    assert by_mean.names_ == ["bear", "sideways", "bull"] and by_mean.order_by == "mean"
    assert by_vol.names_ == ["calm", "normal", "turbulent"]
    smoothed = by_mean.smooth_proba(prices).to_numpy().argmax(axis=1)
    true_name = np.array(["bull", "sideways", "bear"])[truth[by_mean.vol_window:]]
    assert (np.array(by_mean.names_)[smoothed] == true_name).mean() > 0.85
    daily_mean = by_mean.means_[:, 0] * by_mean.feature_std_[0] + by_mean.feature_mean_[0]
    np.testing.assert_allclose(daily_mean, DRIFT[::-1], atol=2e-3)
    # One fit, two orders: here the mean order is the volatility order reversed.
    np.testing.assert_array_equal(by_mean.means_, by_vol.means_[::-1])
    np.testing.assert_allclose(by_mean.filter_proba(prices).to_numpy(),
                               by_vol.filter_proba(prices).to_numpy()[:, ::-1], atol=1e-12)
    assert by_mean.states_by("volatility").tolist() == [2, 1, 0]
    assert by_vol.states_by("mean").tolist() == [2, 1, 0]


def test_round_trip_keeps_order_by(drifting, by_mean, by_vol):
    prices, _ = drifting
    d = json.loads(json.dumps(by_mean.to_dict()))
    assert d["hyperparameters"]["order_by"] == "mean" and d["names"] == ["bear", "sideways", "bull"]
    rebuilt = RegimeModel.from_dict(d)
    assert rebuilt.get_params() == by_mean.get_params() and rebuilt.get_params()["order_by"] == "mean"
    assert np.array_equal(rebuilt.filter_proba(prices).to_numpy(), by_mean.filter_proba(prices).to_numpy())
    assert "order_by" not in by_vol.to_dict()["hyperparameters"]  # the format before orders existed
    assert RegimeModel.from_dict(by_vol.to_dict()).order_by == "volatility"
    stored = json.loads((DATA / "regime_model_v1.json").read_text())
    assert {RegimeModel.from_dict(c["dict"]).order_by for c in stored["models"].values()} == {"volatility"}


def _reversed(model: RegimeModel) -> RegimeModel:
    """The same fit with its states (and names) stored in reverse order."""
    d = model.to_dict()
    for key in ("names", "startprob", "means", "covars", "stationary"):
        d[key] = d[key][::-1]
    d["transmat"] = [row[::-1] for row in d["transmat"][::-1]]
    return RegimeModel.from_dict(d)


@pytest.mark.parametrize("order_by", ["volatility", "mean"])
def test_lineage_keeps_names_and_order(drifting, by_mean, by_vol, order_by):
    prices = drifting[0].iloc[250:]
    first = by_mean if order_by == "mean" else by_vol
    for previous, perm in ((first, [0, 1, 2]), (_reversed(first), [2, 1, 0])):
        refit = RegimeModel(3, n_restarts=1, random_state=SEED + 1, order_by=order_by).fit(prices, previous)
        assert refit.names_ == previous.names_ and refit.permutation_ == perm
        in_prev_units = (refit.means_ * refit.feature_std_ + refit.feature_mean_
                         - previous.feature_mean_) / previous.feature_std_
        np.testing.assert_allclose(in_prev_units, previous.means_, atol=0.15)


def test_a_lineage_keeps_its_order(drifting, by_mean, by_vol, caplog):
    with pytest.raises(SupsupError, match=r"previous= orders its regimes by 'mean' \(bear, sideways, bull\), "
                                          r"this model by 'volatility'; a lineage keeps its order"):
        RegimeModel(3, n_restarts=1).fit(drifting[0], previous=by_mean)
    cfg = config_from_dict(small_config_dict(regimes={"order_by": "mean"}))
    assert lineage_of(by_mean, cfg) is by_mean
    with caplog.at_level(logging.INFO, logger="supsup_fin.forecaster.prepare"):
        assert lineage_of(by_vol, cfg) is None
    assert "regime lineage restarts: the champion's HMM orders its regimes by 'volatility' " \
           "(calm, normal, turbulent), the config by 'mean'" in caplog.text


def test_plots_colour_regimes_by_name():
    assert _colours(["bear", "sideways", "bull"]) == ["tab:red", "tab:gray", "tab:green"]
    assert _colours(["calm", "normal", "turbulent"]) == ["tab:green", "tab:blue", "tab:red"]
    assert _colours(["turbulent", "calm"]) == ["tab:red", "tab:green"]  # a lineage's own order
    four = _colours(regime_names(4, "mean"))
    assert four[0][0] > four[0][1] and four[-1][1] > four[-1][0]  # bear red, bull green
    five = _colours(regime_names(5))
    assert five[0][1] > five[0][0] and five[-1][0] > five[-1][1]  # calmest green, most volatile red


@pytest.fixture(scope="module")
def small_by_mean(tmp_path_factory):
    """The small config with ``order_by: mean``: its prices, features and regime fits."""
    from supsup_fin.data import load_prices
    from supsup_fin.forecaster.prepare import build_features, fit_regimes

    cfg = config_from_dict(small_config_dict(regimes={"order_by": "mean"}, training={"steps": 5}))
    cache = tmp_path_factory.mktemp("cache")
    prices = {m.name: load_prices(m, cfg.data, cache).frame for m in cfg.markets}
    fs = {n: build_features(n, p, cfg) for n, p in prices.items()}
    rf = {n: fit_regimes(n, p, cfg.regimes, cfg.segments) for n, p in prices.items()}
    return cfg, prices, fs, rf


def test_retrain_by_mean_names_tasks_bear_sideways_bull(small_by_mean):
    from supsup_fin.forecaster.mask_tasks import make_tasks

    cfg, _, fs, rf = small_by_mean
    assert {n: (r.model.order_by, r.names) for n, r in rf.items()} == {
        n: ("mean", ["bear", "sideways", "bull"]) for n in ("syn_a", "syn_b")}
    assert [t.name for t in make_tasks(fs, rf, cfg)] == [
        f"{m}/{r}" for m in ("syn_a", "syn_b") for r in ("bear", "sideways", "bull", "ALL")]


@pytest.mark.slow
def test_retrain_by_mean_forecasts(small_by_mean, one_torch_thread):
    """The library retrain path, masks trained: forecasts name the mean order's regimes."""
    from supsup_fin.forecaster.mask_tasks import make_tasks
    from supsup_fin.forecaster.training import build_forecaster, train_tasks

    cfg, prices, fs, rf = small_by_mean
    net, bank = train_tasks(make_tasks(fs, rf, cfg), cfg)
    assert {"syn_a/bear", "syn_a/bull", "syn_b/bear"} <= set(bank.names)
    frame = build_forecaster(fs, rf, net, bank, cfg).predict_frame("syn_a", prices["syn_a"])
    assert {"regime_bear", "regime_sideways", "regime_bull"} <= set(frame.columns)
    assert set(frame["regime"]) <= {"bear", "sideways", "bull"} and frame["regime"].nunique() == 3
    np.testing.assert_allclose(frame[["p_down", "p_flat", "p_up"]].sum(axis=1), 1.0, atol=1e-6)
