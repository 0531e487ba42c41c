"""The fast paths of a live forecast against the reference computations they replace.

- ``_forward.forward_last_proba`` (scaled-probability tree product) == the log-space forward's
  last row, on random HMMs, including the inputs where it hands over to the log-space filter;
- ``RegimeModel.predict_next_proba_last`` == the last row of ``predict_next_proba``;
- ``features.feature_array`` == ``make_features(...).to_numpy()``, bitwise;
- ``RegimeGatedForecaster.predict`` == the last row of ``predict_frames`` on the same rows, for
  every mode, whatever form the prices frame comes in; bad frames are still refused.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SEED, random_walk

from supsup_fin.data import validate_frame
from supsup_fin.errors import DataError
from supsup_fin.features import FEATURES, feature_array, make_features
from supsup_fin.data.frame import canonical_values, price_arrays
from supsup_fin.gate_modes import GATE_MODES
from supsup_fin.regimes import RegimeModel, _forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_hmm(rng: np.random.Generator, k: int, n: int, spread: float):
    a = rng.dirichlet(np.full(k, rng.uniform(0.2, 5.0)), size=k)
    log_start = np.log(_forward.stationary_distribution(a))
    log_b = rng.normal(size=(n, k)) * spread - 3.0
    return log_b, log_start, _forward.log_transmat(a)


def _reference_last(log_b, log_start, log_a) -> np.ndarray:
    return np.exp(_forward.forward(log_b, log_start, log_a)[0][-1])


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_fast_forward_equals_the_log_space_forward(k: int) -> None:
    rng = np.random.default_rng(SEED + k)
    for n in (1, 2, 3, 7, 64, 250, 251, 333):
        for spread in (0.1, 3.0, 20.0):
            args = _random_hmm(rng, k, n, spread)
            assert _forward._forward_last_scaled(*args) is not None  # the fast path answered
            fast = _forward.forward_last_proba(*args)
            np.testing.assert_allclose(fast, _reference_last(*args), rtol=0, atol=1e-12)
            assert fast.shape == (k,) and np.isclose(fast.sum(), 1.0)


def test_fast_forward_hands_extreme_inputs_to_the_log_space_forward() -> None:
    rng = np.random.default_rng(SEED)
    log_b, log_start, log_a = _random_hmm(rng, 3, 120, 1.0)
    cases = {
        "an emission 1000 nats below the best": (log_b + np.where(np.arange(3) == 1, -1000.0, 0.0)[None, :],
                                                  log_start, log_a),
        "a zero transition": (log_b, log_start, np.where(np.eye(3, k=1) > 0, -np.inf, log_a)),
        "a zero start probability": (log_b, np.array([-np.inf, *log_start[1:]]), log_a),
    }
    for what, args in cases.items():
        assert _forward._forward_last_scaled(*args) is None, what
        np.testing.assert_array_equal(_forward.forward_last_proba(*args), _reference_last(*args), err_msg=what)


@pytest.mark.parametrize("observations", ["return_vol", "return"])
def test_predict_next_proba_last_equals_the_frame_forecast(observations: str) -> None:
    prices = random_walk(900, vol=0.012)
    prices.iloc[300:500, 0] *= np.exp(np.cumsum(np.random.default_rng(SEED).normal(0, 0.03, 200)))
    model = RegimeModel(3, n_restarts=1, random_state=SEED, observations=observations).fit(prices.iloc[:600])
    for end in (40, 261, 599, 899):
        window = prices.iloc[max(0, end - 259): end + 1]
        ref = model.predict_next_proba(window).to_numpy()[-1]
        fast = model.predict_next_proba_last(window["close"].to_numpy())
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    close = prices["close"].to_numpy()[-50:].copy()
    close[7] = np.nan
    with pytest.raises(DataError, match="expected finite prices > 0.*at position 7"):
        model.predict_next_proba_last(close)
    with pytest.raises(DataError, match="more than vol_window=10 prices"):
        model.predict_next_proba_last(close[:10])


def test_feature_array_is_bitwise_make_features() -> None:
    prices = random_walk(300)
    prices["high"], prices["low"] = prices["close"] * 1.01, prices["close"] * 0.98
    prices["volume"] = np.random.default_rng(SEED).uniform(1e5, 1e6, len(prices))
    names = sorted(FEATURES)
    for part in (prices, prices.iloc[-82:]):
        columns = {c: part[c].to_numpy() for c in part.columns}
        np.testing.assert_array_equal(feature_array(columns, names), make_features(part, names).to_numpy())
    with pytest.raises(DataError, match=r"market 'm': feature 'range_1' needs columns \['high', 'low'\]"):
        feature_array({"close": prices["close"].to_numpy()}, ["ret_1", "range_1"], market="m")


def test_price_arrays_are_validate_frames_columns() -> None:
    p = random_walk(50)
    p["high"], p["low"] = p["close"] * 1.01, p["close"] * 0.99
    p["volume"] = np.arange(50, dtype=np.int64) * 1000
    p = p[["high", "low", "close", "volume"]].set_axis(p.index.as_unit("ns"))
    frames = {
        "canonical float64": (p.astype(np.float64), True),
        "microsecond dates": (p.set_axis(p.index.as_unit("us")), False),
        "an int64 volume": (p, True),
        "float32 columns": (p.astype(np.float32), False),
        "a non-canonical order": (p[["close", "high", "low", "volume"]], False),
        "a missing volume": (p.assign(volume=p["volume"].astype(float).where(p.index != p.index[9])), True),
        "a date column": (p.reset_index(), False),
    }
    for what, (frame, fast) in frames.items():
        assert (canonical_values(frame) is not None) == fast, what
        columns, dates = price_arrays(frame, "m")
        ref = validate_frame(frame, "m")
        assert list(columns) == list(ref.columns), what
        for c, values in columns.items():
            assert values.dtype == np.float64 and values.flags.c_contiguous, what
            np.testing.assert_array_equal(values, ref[c].to_numpy(), err_msg=what)
        pd.testing.assert_index_equal(dates, ref.index, check_names=False)
    flags = p.assign(volume=p["volume"] > 0)
    assert canonical_values(flags) is None
    with pytest.raises(DataError, match="column 'volume' must be numeric"):
        price_arrays(flags, "m")


def _reference(fc, market: str, prices: pd.DataFrame, mode: str) -> pd.Series:
    """The last row of ``predict_frames`` on the last ``min_rows`` rows: the reference computation."""
    return fc.predict_frames(market, prices.iloc[-fc.min_rows:], [mode])[mode].iloc[-1]


@pytest.mark.parametrize("mode", GATE_MODES)
def test_predict_equals_the_frame_computation_for_every_mode(small_pipeline: dict, mode: str) -> None:
    fc = small_pipeline["forecaster"]
    for market, prices in small_pipeline["prices"].items():
        assert canonical_values(prices) is not None  # the fast path of the frame checks is taken
        for end in (fc.min_rows - 1, len(prices) // 2, len(prices) - 1):
            upto = prices.iloc[: end + 1]
            one = fc.predict(market, upto, mode)
            row = _reference(fc, market, upto, mode)
            probs = [one["probabilities"][c] for c in fc.classes]
            np.testing.assert_allclose(probs, row[[f"p_{c}" for c in fc.classes]].to_numpy(float), rtol=0, atol=1e-9)
            post = [one["regime_posterior"][r] for r in fc.markets[market].regime.names_]
            ref_post = row[[f"regime_{r}" for r in fc.markets[market].regime.names_]].to_numpy(float)
            np.testing.assert_allclose(post, ref_post, rtol=0, atol=1e-12)
            assert one["regime"] == row["regime"] and one["mode"] == mode
            assert one["as_of"] == str(row.name.date())
            assert abs(one["signal"] - row["signal"]) <= 1e-9
            assert one["masks"].keys() == json.loads(row["masks"]).keys()


def test_predict_is_the_same_for_every_form_of_the_prices_frame(small_pipeline: dict) -> None:
    fc = small_pipeline["forecaster"]
    canonical = small_pipeline["prices"]["syn_a"].iloc[-fc.min_rows - 5:]
    ref = fc.predict("syn_a", canonical, "soft")
    as_column = canonical.reset_index()
    shouted = canonical.rename(columns=str.upper)
    extra = canonical.assign(note="x", open=canonical["close"])[["note", "close", "open"]]
    noon = canonical.set_axis(canonical.index + pd.Timedelta(hours=12))
    zoned = canonical.tz_localize("America/New_York")
    for what, frame in {"a date column": as_column, "upper-case names": shouted, "extra columns": extra,
                        "times of day": noon, "a time zone": zoned}.items():
        assert fc.predict("syn_a", frame, "soft") == ref, what


def test_predict_still_refuses_bad_frames(small_pipeline: dict) -> None:
    fc = small_pipeline["forecaster"]
    prices = small_pipeline["prices"]["syn_a"].iloc[-fc.min_rows:]
    bad = {
        "non-positive": (prices.assign(close=prices["close"].where(np.arange(len(prices)) != 3, -1.0)),
                         r"market 'syn_a': column 'close' must be finite and > 0"),
        "infinite": (prices.assign(close=prices["close"].where(np.arange(len(prices)) != 3, np.inf)),
                     r"column 'close' must be finite"),
        "unsorted": (prices.iloc[::-1], r"column 'date' is not increasing"),
        "duplicated": (pd.concat([prices, prices.iloc[-1:]]), r"duplicated dates"),
        "missing close": (prices.assign(close=prices["close"].where(np.arange(len(prices)) != len(prices) - 4)),
                          r"column 'close' expected finite numbers, got 1 missing"),
    }
    for frame, message in bad.values():
        with pytest.raises(DataError, match=message):
            fc.predict("syn_a", frame)
