"""Feature (PSI) and HMM drift checks against a market's training reference, and their alerts."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from hmmlearn.hmm import GaussianHMM

from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.monitor.drift import NO_REFERENCE, drift_alerts, drift_checks, psi, psi_threshold
from supsup_fin.monitor.hmm import loglik_series
from supsup_fin.monitor.reference import attach_references, bin_fractions, latest_inputs

ALERT_KEYS = ["kind", "market", "model_version", "as_of", "value", "threshold", "message", "check"]
ROW_KEYS = ["market", "check", "name", "value", "threshold", "breach", "window_start", "window_end", "detail"]


@pytest.fixture(scope="module")
def monitored(small_pipeline) -> RegimeGatedForecaster:
    """A copy of the session forecaster (shared, left as built) with every market's reference."""
    sp = small_pipeline
    fc = copy.copy(sp["forecaster"])
    fc.markets = dict(fc.markets)
    attach_references(fc, sp["features"], sp["regimes"], sp["prices"], sp["cfg"])
    return fc


def volatility_jump(prices: pd.DataFrame, rows: int, factor: float = 3.0) -> pd.DataFrame:
    """``prices`` (close only) with the log returns of its last ``rows`` rows multiplied by ``factor``."""
    r = np.diff(np.log(prices["close"].to_numpy()))
    r[-rows:] *= factor
    close = prices["close"].iloc[0] * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    return pd.DataFrame({"close": close}, index=prices.index)


def breached(rows: list[dict]) -> set[str]:
    return {r["name"] for r in rows if r["breach"]}


def test_psi_is_zero_for_identical_fractions_and_the_hand_value_for_a_shift() -> None:
    assert psi(np.full(10, 0.1), np.full(10, 0.1)) == 0.0
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 3
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.25 * np.log(3.0), rel=1e-12)
    # an empty bin counts as eps = 1e-4: 0.1 ln 2 + (1e-4 - 0.1) ln(1e-3)
    shifted = np.array([0.2, 0.0] + [0.1] * 8)
    assert psi(np.full(10, 0.1), shifted) == pytest.approx(0.1 * np.log(2.0) + (1e-4 - 0.1) * np.log(1e-3), rel=1e-12)
    with pytest.raises(DataError, match=r"shapes \(3,\) and \(2,\)"):
        psi(np.full(3, 1 / 3), np.full(2, 0.5))


def test_training_rows_have_no_drift_against_their_own_reference(small_pipeline, monitored) -> None:
    fs = small_pipeline["features"]["syn_b"]
    values = latest_inputs(fs.X[fs.rows("train")], len(monitored.feature_names))
    ref = monitored.markets["syn_b"].reference["features"]
    for j, name in enumerate(monitored.feature_names):
        expected = np.asarray(ref[name]["fractions"])
        assert psi(expected, bin_fractions(values[:, j], ref[name]["edges"])) == 0.0


def test_a_volatility_jump_raises_feature_and_hmm_drift_alerts(small_pipeline, monitored) -> None:
    cfg = small_pipeline["cfg"].monitor
    prices = volatility_jump(small_pipeline["prices"]["syn_b"], cfg.drift_window)
    rows = drift_checks(monitored, "syn_b", prices, cfg)
    assert [list(r) for r in rows] == [ROW_KEYS] * (len(monitored.feature_names) + 1)
    assert [r["check"] for r in rows] == ["psi"] * len(monitored.feature_names) + ["hmm"]
    alerts = drift_alerts(rows, model_version=7)
    kinds = {(a["kind"], a["check"]) for a in alerts}
    assert {("feature_drift", "vol_5"), ("feature_drift", "vol_20"), ("hmm_drift", "log_likelihood")} <= kinds
    vol = next(a for a in alerts if a["check"] == "vol_5")
    assert list(vol) == ALERT_KEYS
    own = psi_threshold(monitored.markets["syn_b"].reference["features"]["vol_5"], cfg)
    assert own >= cfg.psi_threshold
    assert (vol["market"], vol["model_version"], vol["as_of"], vol["threshold"]) == ("syn_b", 7, "2018-12-31", own)
    start = str(prices.index[-cfg.drift_window].date())
    assert vol["message"] == (f"Market 'syn_b': input feature 'vol_5' drifted from its training distribution "
                              f"(PSI {vol['value']:.3f} >= {own:g}) over {start}..2018-12-31.")
    hmm = next(a for a in alerts if a["kind"] == "hmm_drift")
    assert f"{hmm['value']:.3f} < {hmm['threshold']:.3f}" in hmm["message"] and "HMM" in hmm["message"]


def test_an_undrifted_continuation_raises_nothing_and_the_same_window_drifted_does(small_pipeline, monitored) -> None:
    """Every post-training row of the training process as the window (a 60-row window of persistent
    features differs from training by chance, see the calibration figures in the docs)."""
    cfg, prices = small_pipeline["cfg"].monitor, small_pipeline["prices"]["syn_b"]
    after = int((prices.index > pd.Timestamp(monitored.markets["syn_b"].reference["train_end"])).sum())
    long = cfg.model_copy(update={"drift_window": after - 10})
    rows = drift_checks(monitored, "syn_b", prices, long)
    assert breached(rows) == set() and drift_alerts(rows, 1) == []
    assert max(r["value"] for r in rows if r["check"] == "psi") < 0.1
    drifted = breached(drift_checks(monitored, "syn_b", volatility_jump(prices, after - 10), long))
    assert {"vol_5", "vol_20", "log_likelihood"} <= drifted


def test_drift_at_a_date_ignores_every_later_row(small_pipeline, monitored) -> None:
    cfg = small_pipeline["cfg"].monitor
    longer = volatility_jump(small_pipeline["prices"]["syn_b"], 300)  # the rows after d drift
    d, window = longer.index[-400], cfg.drift_window
    at_d = drift_checks(monitored, "syn_b", longer.loc[:d], cfg)
    ref, model = monitored.markets["syn_b"].reference, monitored.markets["syn_b"].regime
    X = latest_inputs(monitored.inputs("syn_b", longer), len(monitored.feature_names))
    end = longer.index.get_loc(d) + 1
    from_longer = [round(psi(ref["features"][n]["fractions"], bin_fractions(X[end - window:end, j], ref["features"][n]["edges"])), 6)
                   for j, n in enumerate(monitored.feature_names)]
    from_longer.append(round(float(loglik_series(model, longer, window).loc[d]), 6))
    assert [r["value"] for r in at_d] == from_longer
    assert {r["window_end"] for r in at_d} == {str(d.date())}
    assert breached(drift_checks(monitored, "syn_b", longer, cfg)) - breached(at_d)  # the later rows do drift


def test_a_model_without_reference_gets_one_quiet_row(small_pipeline) -> None:
    rows = drift_checks(small_pipeline["forecaster"], "syn_a", small_pipeline["prices"]["syn_a"],
                        small_pipeline["cfg"].monitor)
    assert rows == [{"market": "syn_a", "check": "reference", "name": "reference", "value": None, "threshold": None,
                     "breach": False, "window_start": None, "window_end": None, "detail": NO_REFERENCE}]
    assert drift_alerts(rows, 1) == []


def test_too_few_rows_and_unknown_markets_are_data_errors(small_pipeline, monitored) -> None:
    cfg, prices = small_pipeline["cfg"].monitor, small_pipeline["prices"]["syn_a"]
    with pytest.raises(DataError, match=r"market 'syn_a': the feature drift check needs 126 rows .* got 100"):
        drift_checks(monitored, "syn_a", prices.iloc[:100], cfg)
    with pytest.raises(DataError, match=r"unknown market 'nope'; this model knows \['syn_a', 'syn_b'\]"):
        drift_checks(monitored, "nope", prices, cfg)


def test_predictive_log_likelihood_sums_to_hmmlearns_score_and_is_prefix_invariant(small_pipeline) -> None:
    model, prices = small_pipeline["regimes"]["syn_b"].model, small_pipeline["prices"]["syn_b"]
    ll = model.predictive_log_likelihood(prices)
    hmm = GaussianHMM(n_components=model.n_states_, covariance_type="full")
    hmm.startprob_, hmm.transmat_ = model.stationary_, model.transmat_  # the filter starts from stationary_
    hmm.means_, hmm.covars_ = model.means_, model.covars_
    assert ll.sum() == pytest.approx(hmm.score(model.features(prices).to_numpy()), rel=1e-12)
    head = model.predictive_log_likelihood(prices.iloc[:3000])
    np.testing.assert_array_equal(head.to_numpy(), ll.to_numpy()[:len(head)])


def test_each_feature_alerts_beyond_its_own_training_range(small_pipeline, monitored) -> None:
    """At the default 60-row window, undrifted rows after training rarely breach: each feature's
    level is the 0.995 quantile of its PSI over training windows (persistent features such as a
    20-day volatility exceed the 0.25 rule of thumb in most undrifted windows)."""
    cfg, prices = small_pipeline["cfg"].monitor, small_pipeline["prices"]["syn_b"]
    ref = monitored.markets["syn_b"].reference["features"]
    assert all(r["psi_window"] == cfg.drift_window and len(r["psi_quantiles"]) == 201 for r in ref.values())
    assert psi_threshold(ref["vol_20"], cfg) > cfg.psi_threshold  # its training windows swing past 0.25
    assert psi_threshold(ref["vol_20"], cfg.model_copy(update={"drift_window": 90})) == cfg.psi_threshold
    first = int((prices.index <= pd.Timestamp(monitored.markets["syn_b"].reference["train_end"])).sum())
    ends = range(first + cfg.drift_window, len(prices) + 1, cfg.drift_window)  # non-overlapping windows
    fired = [breached(drift_checks(monitored, "syn_b", prices.iloc[:end], cfg)) - {"log_likelihood"} for end in ends]
    assert len(fired) >= 20 and sum(map(bool, fired)) / len(fired) <= 0.2
