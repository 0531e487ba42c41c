"""The live forecast's input checks (``RegimeGatedForecaster.predict``, shared by the CLI and the
server): inputs no training row resembles are refused naming market, column and date; inputs far
outside training are served flagged; a probability or position that is not finite never comes back.

Reproduce: ``pytest tests/reliability/test_predict_inputs.py -q``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from reliability.frames import random_walk_frame
from supsup_fin.errors import DataError
from supsup_fin.features import make_features
from supsup_fin.forecaster.gating import ABSURD_Z, OOD_Z, RegimeGatedForecaster
from supsup_fin.gate_modes import GATE_MODES

MARKET = "syn_a"
MODES = st.sampled_from([m for m in GATE_MODES if m != "auto"])


class Small:
    """The small pipeline's forecaster and prices (a short repr for hypothesis' reports)."""

    def __init__(self, p: Small) -> None:
        self.forecaster, self.prices = p["forecaster"], p["prices"]

    def __repr__(self) -> str:
        return "<small pipeline>"


@pytest.fixture(scope="module")
def small(small_pipeline: dict) -> Small:
    return Small(small_pipeline)


def _window(p: Small, rows: int = 260) -> pd.DataFrame:
    return p.prices[MARKET].iloc[-rows:].copy()


def _day(prices: pd.DataFrame, i: int) -> str:
    return str(prices.index[i].date())


def _finite(f: dict) -> None:
    p = np.array(list(f["probabilities"].values()))
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-9 and np.isfinite(f["position"]), f


def _read_rows(fc: RegimeGatedForecaster, mode: str) -> int:
    return fc.lookback + (fc.infer_window - 1 if mode == "infer" else 0)


ABSURD = st.sampled_from(["1e300", "1e-300", "x1e12", "x1e-12", "x1e3", "x1e-3"])


def _absurd_close_is_refused(p: Small, value: str, back: int, mode: str) -> None:
    fc = p.forecaster
    prices = _window(p)
    i = len(prices) - 1 - back
    prices.iloc[i, 0] = prices.iloc[i, 0] * float(value[1:]) if value.startswith("x") else float(value)
    with pytest.raises(DataError) as err:
        fc.predict(MARKET, prices, mode=mode)
    assert f"market {MARKET!r}: column 'close' on {_day(prices, i)}" in str(err.value), str(err.value)


@settings(max_examples=FUZZ_EXAMPLES)
@given(value=ABSURD, back=st.integers(0, 7), mode=MODES)
def test_an_absurd_close_the_input_reads_is_refused_naming_market_column_and_date(
    small: Small, value: str, back: int, mode: str,
) -> None:
    """A close set to 1e±300, or multiplied by 1e±12 or 1e±3, in the last ``lookback`` rows."""
    _absurd_close_is_refused(small, value, back, mode)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES_SLOW)
@given(value=ABSURD, back=st.integers(0, 7), mode=MODES)
def test_an_absurd_close_is_refused_slow(small: Small, value: str, back: int, mode: str) -> None:
    _absurd_close_is_refused(small, value, back, mode)


@pytest.mark.parametrize("rows", [260, 82])
def test_constant_closes_are_refused(small: Small, rows: int) -> None:
    """260 constant closes, or only the 82 the features read: zero volatility, no training row like it."""
    fc = small.forecaster
    prices = _window(small)
    prices.iloc[-rows:, 0] = 123.25
    with pytest.raises(DataError, match=rf"'{MARKET}': column 'close' is 123.25 on all 82 rows "
                                        rf"\S+\.\.{_day(prices, -1)} .*zero volatility"):
        fc.predict(MARKET, prices)


def _expected_flag(fc: RegimeGatedForecaster, prices: pd.DataFrame, mode: str) -> float:
    """The largest |z| of the features the input reads, computed from the frame path."""
    mm = fc.markets[MARKET]
    raw = make_features(prices, fc.feature_names).to_numpy()[-_read_rows(fc, mode):]
    return float(np.abs((raw - mm.scaler.mean) / mm.scaler.std).max())


def _served_flagged_when_out(p: Small, move: float, back: int, mode: str) -> None:
    fc = p.forecaster
    prices = _window(p)
    i = len(prices) - 1 - back
    prices.iloc[i:, 0] *= np.exp(move)  # a level shift: one daily move of `move`
    z = _expected_flag(fc, prices, mode)
    assert z < ABSURD_Z
    f = fc.predict(MARKET, prices, mode=mode)
    _finite(f)
    if z <= OOD_Z:
        assert f["out_of_distribution"] == "", (z, f["out_of_distribution"])
    else:
        assert f["out_of_distribution"].startswith(f"market {MARKET!r}: "), f["out_of_distribution"]
        assert f"beyond {OOD_Z:g}" in f["out_of_distribution"]
        if abs(move) > 0.3:  # the move, not the walk, is what lies out
            assert f"column 'close' on {_day(prices, i)}" in f["out_of_distribution"], f["out_of_distribution"]


@settings(max_examples=FUZZ_EXAMPLES)
@given(move=st.floats(-0.45, 0.45), back=st.integers(0, 7), mode=MODES)
def test_a_move_far_outside_training_is_served_flagged_and_a_usual_one_plainly(
    small: Small, move: float, back: int, mode: str,
) -> None:
    """A one-day log move of up to ±45 % in the last ``lookback`` rows: served; flagged exactly
    when some feature the input reads is more than OOD_Z training standard deviations out."""
    _served_flagged_when_out(small, move, back, mode)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES_SLOW)
@given(move=st.floats(-0.45, 0.45), back=st.integers(0, 7), mode=MODES)
def test_a_move_far_outside_training_is_flagged_slow(small: Small, move: float, back: int, mode: str) -> None:
    _served_flagged_when_out(small, move, back, mode)


@settings(max_examples=FUZZ_EXAMPLES)
@given(seed=st.integers(0, 2**16), mode=MODES)
def test_a_usual_random_walk_is_served_unflagged(small: Small, seed: int, mode: str) -> None:
    """1 % a day (syn_a trained on ~1.4 %): every feature well inside training."""
    fc = small.forecaster
    prices = random_walk_frame(fc.min_rows, seed, columns=())
    f = fc.predict(MARKET, prices, mode=mode)
    _finite(f)
    assert f["out_of_distribution"] == "" and _expected_flag(fc, prices, mode) <= OOD_Z


def _with(fc: RegimeGatedForecaster, **changes) -> RegimeGatedForecaster:
    args = {"feature_names": fc.feature_names, "lookback": fc.lookback, "horizon": fc.horizon,
            "regime_window": fc.regime_window, "mode": fc.mode, "infer_window": fc.infer_window,
            "stochastic_samples": fc.stochastic_samples, "decision": fc.decision}
    markets = {n: dataclasses.replace(m, **changes.pop("market", {})) for n, m in fc.markets.items()}
    return RegimeGatedForecaster(markets, fc.net, fc.bank, **{**args, **changes})


@pytest.mark.parametrize("back", [30, 50, 70])
def test_a_missing_close_the_features_read_is_refused_even_outside_the_hmm_window(
    small: Small, back: int,
) -> None:
    """With a 10-row HMM window (20 price rows), the 82 rows the features read reach further: a NaN there
    reached the network (NaN probabilities) before every input was checked."""
    fc = _with(small.forecaster, regime_window=10)
    assert fc._regime_rows(MARKET) < back < fc._feature_rows
    prices = _window(small)
    prices.iloc[-back, 0] = np.nan
    with pytest.raises(DataError, match=rf"'{MARKET}': column 'close' .* first on {_day(prices, -back)}"):
        fc.predict(MARKET, prices)


def test_a_feature_that_overflows_is_refused_not_clipped(small: Small) -> None:
    """Closes near 1e308: the 20-day mean overflows, ma_gap_20 is -inf, which the scaler's clip
    turned into a plain -5 before every input was checked."""
    fc = small.forecaster
    prices = _window(small)
    prices["close"] *= 1.5e308 / prices["close"].max()
    with pytest.raises(DataError, match=rf"'{MARKET}': .*feature 'ma_gap_20' on \S+ .*is -inf, not finite"):
        fc.predict(MARKET, prices)


def test_no_position_is_returned_that_is_not_finite(small: Small) -> None:
    """Without class returns the kelly rule has no position (NaN): refused, not returned."""
    fc = _with(small.forecaster, market={"class_returns": None})
    assert fc.decision.rule == "kelly"
    with pytest.raises(DataError, match=rf"'{MARKET}': no finite forecast at .* position nan.*no class returns"):
        fc.predict(MARKET, _window(small))
