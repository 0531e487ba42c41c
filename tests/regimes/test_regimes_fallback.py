"""A fit that cannot use the requested state counts says so: ``fallback_reason_`` names the market and why
each count was unusable, ``degenerate`` flags the model, a warning names the market, and both survive
``to_dict``/``from_dict`` (files written without them still load)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_fin.data import generate_synthetic
from supsup_fin.regimes import RegimeFitError, RegimeModel, _fit
from conftest import FUZZ_EXAMPLES_SLOW, SEED

DATA = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return next(iter(generate_synthetic("easy", 1, seed=SEED, end="2003-12-31").prices.values()))


def test_one_bad_tick_is_a_named_degenerate_fallback(prices, caplog):
    """One close multiplied by 1e6 leaves every count of (2, 3) with a state that sees two rows: the
    fit falls back to one state, and says where and why."""
    bad = prices.copy()
    bad.iloc[300, 0] *= 1e6
    with caplog.at_level(logging.WARNING, logger="supsup_fin.regimes"):
        model = RegimeModel((2, 3), n_restarts=1, random_state=SEED, market="spx").fit(bad)
    assert model.n_states_ == 1 and model.degenerate
    reason = model.fallback_reason_
    assert reason.startswith("market 'spx': no usable fit with 2..3 states"), reason
    for k in (2, 3):  # each count, with what made it unusable
        assert re.search(rf"{k} states[^|]*: state \d is almost never visited \(\d+\.\d of 1033 rows", reason), reason
    assert model.fallback_ == reason
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("market 'spx': ") and "no usable fit with 2..3 states" in m for m in warned), warned
    d = json.loads(json.dumps(model.to_dict()))
    assert d["fallback_reason"] == reason
    again = RegimeModel.from_dict(d)
    assert again.fallback_reason_ == reason and again.degenerate


def test_usable_fits_are_not_degenerate(prices):
    model = RegimeModel((2, 3), n_restarts=1, random_state=SEED, market="spx").fit(prices)
    assert model.fallback_reason_ is None and not model.degenerate and model.n_states_ in (2, 3)
    assert "fallback_reason" not in model.to_dict()  # optional: written only for a fallback
    assert RegimeModel.from_dict(model.to_dict()).fallback_reason_ is None


def test_files_without_the_reason_still_load():
    stored = json.loads((DATA / "regime_model_v1.json").read_text())
    for case in stored["models"].values():
        model = RegimeModel.from_dict(case["dict"])
        assert model.fallback_reason_ is None and model.degenerate is False
    d = stored["models"]["return_refit"]["dict"]
    one = {**d, "hyperparameters": {**d["hyperparameters"], "n_states": 2}, "n_states": 1,
           "names": ["regime_0"], "startprob": [1.0], "transmat": [[1.0]], "means": [[0.0]],
           "covars": [[[1.0]]], "stationary": [1.0], "permutation": None,
           "fallback": "no usable fit with 2..2 states; "}
    old = RegimeModel.from_dict(one)  # an earlier one-state fallback, stored before the reason was
    assert old.degenerate and old.fallback_reason_ == "no usable fit with 2..2 states; "


def test_a_lineage_keeps_a_degenerate_count_and_its_reason(prices, monkeypatch):
    real = _fit.fit_once

    def only_one_state(x, n_states, *args, **kwargs):
        return "EM failed (simulated)" if n_states > 1 else real(x, n_states, *args, **kwargs)

    monkeypatch.setattr(_fit, "fit_once", only_one_state)
    first = RegimeModel(3, n_restarts=1, random_state=SEED, market="spx").fit(prices)
    monkeypatch.undo()
    assert first.degenerate and "3 states full: EM failed (simulated)" in first.fallback_reason_
    refit = RegimeModel(3, n_restarts=1, random_state=SEED, market="spx").fit(prices, previous=first)
    assert refit.n_states_ == 1 and refit.degenerate and refit.fallback_ is None
    assert refit.fallback_reason_.startswith("market 'spx': refit keeps the previous fit's 1 state, "
                                             "fewer than the requested 3"), refit.fallback_reason_
    assert first.fallback_reason_ in refit.fallback_reason_


def test_a_lineage_that_cannot_keep_its_count_names_the_market(prices, monkeypatch):
    previous = RegimeModel(2, n_restarts=1, random_state=SEED).fit(prices)
    monkeypatch.setattr(_fit, "fit_once", lambda *args, **kwargs: "EM failed (simulated)")
    with pytest.raises(RegimeFitError, match=r"^market 'spx': RegimeModel.fit: no usable HMM fit: 2 states "
                                             r"full: EM failed \(simulated\)"):
        RegimeModel(2, market="spx").fit(prices, previous=previous)


degenerate_cases = dict(lo=st.integers(1, 3), width=st.integers(0, 1), usable=st.integers(1, 4),
                        selection=st.sampled_from(_fit.SELECTIONS))


def check_degenerate(prices, monkeypatch, lo, width, usable, selection) -> None:
    hi = lo + width
    real = _fit.fit_once

    def fails_above(x, n_states, *args, **kwargs):
        if n_states > usable:
            return f"EM failed (simulated for {n_states} states)"
        return real(x, n_states, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(_fit, "fit_once", fails_above)
        model = RegimeModel((lo, hi), n_restarts=1, random_state=SEED, market="m",
                            selection=selection).fit(prices.iloc[:400])
    if usable >= lo:  # BIC's choice among the usable counts of the range
        assert lo <= model.n_states_ <= min(usable, hi)
    else:  # the first usable count below the range
        assert model.n_states_ == usable
    assert model.degenerate == (model.n_states_ < lo) == (model.fallback_reason_ is not None)
    if model.degenerate:
        assert model.fallback_reason_.startswith("market 'm': ")
        for k in range(lo, hi + 1):
            assert f"simulated for {k} states" in model.fallback_reason_, model.fallback_reason_
    np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0)


@settings(max_examples=25)  # each example is up to six EM fits
@given(**degenerate_cases)
def test_degenerate_means_fewer_states_than_requested(prices, monkeypatch, lo, width, usable, selection):
    """With every count above ``usable`` failing, the fit is degenerate exactly when it has fewer
    states than the requested lowest count; then its reason names every requested count and why."""
    check_degenerate(prices, monkeypatch, lo, width, usable, selection)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES_SLOW)  # the 48 cases are exhausted long before
@given(**degenerate_cases)
def test_degenerate_means_fewer_states_than_requested_slow(prices, monkeypatch, lo, width, usable, selection):
    check_degenerate(prices, monkeypatch, lo, width, usable, selection)


def test_fewer_distinct_rows_than_states_is_a_reason_not_a_warning():
    """k-means would warn (warnings are errors here) and return fewer clusters: the run is unusable,
    with its reason, before hmmlearn is called."""
    x = np.random.default_rng(SEED).permutation(np.repeat([[0.0], [1.0]], 50, axis=0))
    settings = _fit.EMSettings("full", 10, 1e-3, (0,))
    assert _fit.fit_once(x, 3, settings, 0) == "only 2 distinct feature rows for 3 states"
    assert isinstance(_fit.fit_once(x, 2, settings, 0), _fit.FitResult)
