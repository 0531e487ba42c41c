"""RegimeModel at its boundaries: a broken prices frame is refused naming the market, the column and the
first offending date; a stored model with impossible parameters is refused at load, never turned into
NaN probabilities later."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_fin.errors import DataError
from supsup_fin.regimes import RegimeModel
from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW, SEED, random_walk

DATA = Path(__file__).resolve().parent
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MARKETS = ("spx", "nikkei 225", None)
ENTRY_POINTS = ("fit", "features", "filter_proba", "predict_next_proba", "smooth_proba",
                "rolling_next_proba", "regime_stats")
DATE_FAULTS = ("duplicate", "unsorted", "missing-date")
CLOSE_FAULTS = ("nan", "inf", "-inf", "zero", "negative")


@pytest.fixture(scope="module")
def fitted() -> dict[str | None, RegimeModel]:
    """A two-state fit per market name (``None``: a model that was given none)."""
    prices = random_walk(400, SEED)
    model = RegimeModel(2, n_restarts=1, random_state=SEED, market="spx").fit(prices)
    out: dict[str | None, RegimeModel] = {}
    for market in MARKETS:
        d = model.to_dict()
        d["hyperparameters"] = {**d["hyperparameters"], "market": market}
        out[market] = RegimeModel.from_dict(d)
    return out


def broken(n: int, fault: str, row: int, seed: int) -> tuple[pd.DataFrame, str, str]:
    """A close-only frame of ``n`` rows with ``fault`` at ``row`` (>= 1); also the column the error
    must name and the first date it must give (for a missing date: the date before it)."""
    prices = random_walk(n, seed)
    dates = prices.index.to_numpy().copy()
    close = prices["close"].to_numpy().copy()
    if fault == "duplicate":
        dates[row] = dates[row - 1]
    elif fault == "unsorted":
        dates[row - 1], dates[row] = dates[row], dates[row - 1]
    elif fault == "missing-date":
        dates[row] = np.datetime64("NaT")
    else:
        close[row] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zero": 0.0, "negative": -1.5}[fault]
    frame = pd.DataFrame({"close": close}, index=pd.DatetimeIndex(dates, name="date"))
    column = "date" if fault in DATE_FAULTS else "close"
    first = dates[row - 1] if fault == "missing-date" else dates[row]
    return frame, column, str(pd.Timestamp(first).date())


def call(model: RegimeModel, entry: str, prices: pd.DataFrame) -> object:
    if entry == "fit":
        return RegimeModel(2, n_restarts=1, random_state=SEED, market=model.market).fit(prices)
    if entry == "rolling_next_proba":
        return model.rolling_next_proba(prices, 20)
    return getattr(model, entry)(prices)


def check_names_where(fitted, market, entry, fault, n, row, seed) -> None:
    prices, column, first = broken(n, fault, row, seed)
    with pytest.raises(DataError) as info:
        call(fitted[market], entry, prices)
    message = str(info.value)
    assert f"column {column!r}" in message, message
    assert DAY.search(message) and DAY.search(message).group() == first, (message, first)
    if market is not None:
        assert message.startswith(f"market {market!r}: "), message
    else:
        assert "market" not in message, message
    if fault == "missing-date":
        assert f"row {row}" in message, message


def test_duplicated_and_unsorted_dates_name_the_first_offending_date():
    """The message names the index column and the first date that is not after its predecessor."""
    for fault, row in (("duplicate", 61), ("unsorted", 75), ("duplicate", 299)):
        prices, _, first = broken(300, fault, row, SEED)
        with pytest.raises(DataError, match=rf"column 'date' .*{first}"):
            RegimeModel(2).fit(prices)


def probe_bad_frames(n_examples: int, fitted: dict[str | None, RegimeModel]) -> Counter:
    """``n_examples`` frames with one bad date or close, each through one entry point; the tally of
    (fault, entry point) refused with the market, column and first date named (anything else fails)."""
    tally: Counter = Counter()

    @settings(max_examples=n_examples)
    @given(market=st.sampled_from(MARKETS), entry=st.sampled_from(ENTRY_POINTS),
           fault=st.sampled_from(DATE_FAULTS + CLOSE_FAULTS), n=st.integers(80, 240),
           where=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
    def run(market, entry, fault, n, where, seed) -> None:
        check_names_where(fitted, market, entry, fault, n, 1 + int(where * (n - 2)), seed)
        tally[fault, entry] += 1

    run()
    print(f"\n{sum(tally.values())} frames with one bad row, all refused naming market, column and date:"
          + "".join(f"\n  {f:12s} {sum(v for (g, _), v in tally.items() if g == f)}"
                    for f in DATE_FAULTS + CLOSE_FAULTS))
    return tally


def test_every_entry_point_names_market_column_and_first_bad_date(fitted):
    """Each price-frame entry point refuses a frame with one bad date or close, naming the market (when
    the model has one), the column and the first offending date (for a missing date: its row and the
    date before it)."""
    tally = probe_bad_frames(FUZZ_EXAMPLES, fitted)
    assert {f for f, _ in tally} == set(DATE_FAULTS + CLOSE_FAULTS)
    assert {e for _, e in tally} == set(ENTRY_POINTS)


@pytest.mark.slow
def test_every_entry_point_names_market_column_and_first_bad_date_slow(fitted):
    probe_bad_frames(FUZZ_EXAMPLES_SLOW, fitted)


def test_frame_level_errors_name_the_market(fitted):
    prices = random_walk(300, SEED)
    model = fitted["spx"]
    cases = [
        (prices["close"], "expected a prices DataFrame"),
        (prices.rename(columns={"close": "price"}), "expected a 'close' column"),
        (prices.reset_index(), "DatetimeIndex"),
        (prices.iloc[:5], "at least 11 price rows, got 5"),
    ]
    for frame, what in cases:
        with pytest.raises(DataError, match=re.escape(what)) as info:
            model.filter_proba(frame)
        assert str(info.value).startswith("market 'spx': RegimeModel.filter_proba"), info.value
    flat = prices.assign(close=100.0)
    with pytest.raises(DataError, match=r"^market 'spx': RegimeModel.fit.*constant"):
        RegimeModel(2, market="spx").fit(flat)
    with pytest.raises(DataError, match=r"^market 'spx': .*first -1.0 at position 3"):
        model.predict_next_proba_last(np.r_[prices["close"].to_numpy()[:3], -1.0, prices["close"].to_numpy()])


def test_market_is_optional_and_round_trips(fitted):
    prices = random_walk(300, SEED)
    assert RegimeModel(2).market is None and RegimeModel(2, market="spx").get_params()["market"] == "spx"
    named = fitted["spx"]
    again = RegimeModel.from_dict(json.loads(json.dumps(named.to_dict())))
    assert again.market == "spx"
    assert np.array_equal(again.filter_proba(prices).to_numpy(), fitted[None].filter_proba(prices).to_numpy())
    assert "market" not in fitted[None].to_dict()["hyperparameters"]  # the format before markets were named
    loaded = RegimeModel.from_dict(fitted[None].to_dict(), market="dax")
    assert loaded.market == "dax"
    assert RegimeModel.from_dict(named.to_dict(), market="dax").market == "spx"  # the file's own name wins


# ---------------------------------------------------------------- parameters checked at load


@pytest.fixture(scope="module")
def three_state() -> dict:
    """A fitted three-state model's dict, and the prices it was fitted on."""
    prices = random_walk(600, SEED + 1)
    model = RegimeModel(3, n_restarts=1, random_state=SEED).fit(prices)
    return {"dict": json.loads(json.dumps(model.to_dict())), "prices": prices}


def named(d: dict, market: str = "spx") -> dict:
    """``d`` as written by a model that knows its market."""
    return {**d, "hyperparameters": {**d["hyperparameters"], "market": market}}


def test_transition_row_that_is_not_a_distribution_is_refused(three_state):
    d = three_state["dict"]
    bad = {**d, "transmat": [[5.0, -4.0, 0.0]] + d["transmat"][1:]}
    with pytest.raises(DataError, match=r"^RegimeModel.from_dict: 'transmat' row 0 expected non-negative, "
                                        r"finite probabilities summing to 1, got \[5.0, -4.0, 0.0\]"):
        RegimeModel.from_dict(bad)
    with pytest.raises(DataError, match=r"^market 'spx': RegimeModel.from_dict: 'transmat' row 0"):
        RegimeModel.from_dict(named(bad))
    with pytest.raises(DataError, match=r"^market 'dax': RegimeModel.from_dict: 'transmat' row 0"):
        RegimeModel.from_dict(bad, market="dax")


KNOWN_FAULTS = [
    ("startprob", lambda d: [0.5, 0.6, -0.1], "'startprob' expected non-negative"),
    ("startprob", lambda d: [0.5, 0.5, 0.5], "'startprob' expected non-negative"),
    ("stationary", lambda d: [float("nan"), 0.5, 0.5], "'stationary' expected non-negative"),
    ("transmat", lambda d: d["transmat"][:2] + [[0.2, 0.2, 0.2]], "'transmat' row 2"),
    ("transmat", lambda d: d["transmat"][:1] + [[float("inf"), 0.0, 0.0]] + d["transmat"][2:], "'transmat' row 1"),
    ("means", lambda d: [d["means"][0], [float("nan"), 0.0], d["means"][2]], "'means' row 1 expected finite"),
    ("covars", lambda d: d["covars"][:2] + [[[-1.0, 0.0], [0.0, 1.0]]], "'covars' state 2 expected"),
    ("covars", lambda d: [[[1.0, 0.9], [0.2, 1.0]]] + d["covars"][1:], "'covars' state 0 expected"),
    ("covars", lambda d: [[[1.0, 2.0], [2.0, 1.0]]] + d["covars"][1:], "'covars' state 0 expected"),
    ("feature_std", lambda d: [d["feature_std"][0], 0.0], "'feature_std' expected finite numbers > 0"),
    ("feature_mean", lambda d: [float("inf"), 0.0], "'feature_mean' expected finite"),
    ("transmat", lambda d: [[0.5, 0.5, 0.0]] * 2, r"'transmat' expected shape \(3, 3\)"),
    ("permutation", lambda d: [0, 0, 1], "'permutation' expected"),
    ("transmat", lambda d: [["a", 0.5, 0.5]] + d["transmat"][1:], "'transmat' expected numbers"),
]


@pytest.mark.parametrize("field, corrupt, what", KNOWN_FAULTS)
def test_impossible_parameters_are_refused_naming_the_field(three_state, field, corrupt, what):
    d = three_state["dict"]
    with pytest.raises(DataError, match=rf"^market 'spx': RegimeModel.from_dict: {what}"):
        RegimeModel.from_dict(named({**d, field: corrupt(d)}))


def test_stored_dicts_pass_the_checks():
    """Every dict of the earlier format's fixture loads (their rows sum to 1 within 1e-15)."""
    stored = json.loads((DATA / "regime_model_v1.json").read_text())
    for case in stored["models"].values():
        RegimeModel.from_dict(case["dict"])


row_values = st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, np.nan, np.inf, -np.inf, 1e-7, -1e-7]))
LOAD_FIELDS = ("transmat", "startprob", "stationary", "covars", "feature_std")


def load_corrupted(three_state: dict, field: str, state: int, values: list[float], normalise: bool) -> str:
    """The stored three-state model with one row of ``field`` replaced by ``values``: how it ends."""
    d = named(json.loads(json.dumps(three_state["dict"])))
    v = np.array(values, dtype=np.float64)
    if normalise and np.isfinite(v).all() and v.sum() > 0:
        v = v / v.sum()
    if field == "transmat":
        d["transmat"][state] = v.tolist()
    elif field in ("startprob", "stationary"):
        d[field] = v.tolist()
    elif field == "covars":
        d["covars"][state] = [[v[0], v[1]], [v[1], v[2]]]
    else:
        d["feature_std"] = v[:2].tolist()
    try:
        model = RegimeModel.from_dict(d)
    except DataError as err:
        assert str(err).startswith("market 'spx': RegimeModel.from_dict: ") and f"'{field}'" in str(err)
        return "refused at load"
    try:
        proba = model.filter_proba(three_state["prices"]).to_numpy()
    except DataError as err:  # positive and finite, but so extreme that float64 overflows
        assert re.match(r"market 'spx': RegimeModel.filter_proba: expected finite state densities, .* on "
                        r"\d{4}-\d{2}-\d{2}", str(err)), err
        return "refused by the filter"
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    nxt = model.predict_next_proba(three_state["prices"]).to_numpy()
    assert np.isfinite(nxt).all() and np.allclose(nxt.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    return "finite posteriors"


def probe_stored_models(n_examples: int, three_state: dict) -> Counter:
    tally: Counter = Counter()
    values = st.one_of(st.floats(-2.0, 2.0),
                       st.sampled_from([0.0, 1.0, np.nan, np.inf, -np.inf, 1e-7, -1e-7, 1e-200]))

    @settings(max_examples=n_examples)
    @given(field=st.sampled_from(LOAD_FIELDS), state=st.integers(0, 2),
           values=st.lists(values, min_size=3, max_size=3), normalise=st.booleans())
    def run(field, state, values, normalise) -> None:
        tally[field, load_corrupted(three_state, field, state, values, normalise)] += 1

    run()
    print(f"\n{sum(tally.values())} stored models with one corrupted row (none gave NaN):"
          + "".join(f"\n  {f:12s} {o:22s} {n}" for (f, o), n in sorted(tally.items())))
    return tally


def test_a_loaded_model_refuses_or_gives_distributions(three_state):
    """A stored model with any one row of a probability vector, a covariance or the scaler replaced is
    refused at load with a DataError naming the field, or gives finite posteriors summing to 1, or (a
    scale so small that float64 overflows) is refused by the filter naming the first date: never NaN."""
    tally = probe_stored_models(FUZZ_EXAMPLES, three_state)
    assert {f for f, o in tally if o == "refused at load"} == set(LOAD_FIELDS)
    assert sum(n for (_, o), n in tally.items() if o == "finite posteriors") > 0


def test_a_scale_that_overflows_is_refused_where_it_would_give_nan(three_state):
    """Positive and finite, so it loads; its standardised features overflow float64 on every row."""
    model = RegimeModel.from_dict(named({**three_state["dict"], "feature_std": [1e-200, 1e-200]}))
    prices = three_state["prices"]
    first = str(prices.index[model.vol_window].date())
    with pytest.raises(DataError, match=rf"^market 'spx': RegimeModel.filter_proba: expected finite state "
                                        rf"densities, got \[.*\] on {first}"):
        model.filter_proba(prices)
    with pytest.raises(DataError, match=r"^market 'spx': RegimeModel.predict_next_proba_last: .* at row 0"):
        model.predict_next_proba_last(prices["close"].to_numpy())


@pytest.mark.slow
def test_a_loaded_model_refuses_or_gives_distributions_slow(three_state):
    probe_stored_models(FUZZ_EXAMPLES_SLOW, three_state)
