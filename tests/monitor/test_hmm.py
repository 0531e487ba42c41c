"""HMM drift: recent predictive log-likelihood against its training range."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from supsup_fin.errors import DataError
from supsup_fin.monitor.hmm import hmm_check, loglik_reference, loglik_series, reference_quantile
from supsup_fin.regimes import RegimeModel


def _prices(returns: np.ndarray) -> pd.DataFrame:
    close = 100.0 * np.exp(np.cumsum(returns))
    return pd.DataFrame({"close": close}, index=pd.bdate_range("2001-01-01", periods=len(close), name="date"))


@pytest.fixture(scope="module")
def fitted() -> tuple[RegimeModel, np.ndarray, dict]:
    r = np.random.default_rng(7).normal(0.0003, 0.01, 2600)
    model = RegimeModel(n_states=2, n_restarts=1, random_state=0).fit(_prices(r[:2000]))
    return model, r, loglik_reference(model, _prices(r[:2000]), window=60)


def test_reference_quantiles_ascend_and_interpolate(fitted) -> None:
    _, _, ref = fitted
    q = np.asarray(ref["quantiles"])
    assert ref["window"] == 60 and len(q) == len(ref["grid"]) and (np.diff(q) >= 0).all()
    assert reference_quantile(ref, 0.0) == q[0] and reference_quantile(ref, 1.0) == q[-1]
    assert q[1] <= reference_quantile(ref, 0.0075) <= q[2]  # grid steps of 0.5 %


def test_continuation_passes_and_a_volatility_jump_breaches(fitted) -> None:
    model, r, ref = fitted
    calm = hmm_check(model, _prices(r), ref, 0.01)
    assert not calm["breach"] and calm["value"] > calm["threshold"]
    jumped = r.copy()
    jumped[-60:] *= 4.0  # a volatility no training regime had
    drifted = hmm_check(model, _prices(jumped), ref, 0.01)
    assert drifted["breach"] and drifted["value"] < drifted["threshold"] - 1.0
    assert drifted["window_end"] == str(_prices(r).index[-1].date())


def test_series_is_causal(fitted) -> None:
    model, r, _ = fitted
    full = loglik_series(model, _prices(r), 60)
    part = loglik_series(model, _prices(r[:2300]), 60)
    np.testing.assert_array_equal(full.iloc[: len(part)].to_numpy(), part.to_numpy())


def test_too_few_rows_is_a_clear_error(fitted) -> None:
    model, r, ref = fitted
    with pytest.raises(DataError, match="needs at least"):
        hmm_check(model, _prices(r[:50]), ref, 0.01)
