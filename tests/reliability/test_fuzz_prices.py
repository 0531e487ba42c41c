"""Fuzzed price frames through the public path: a file market's load -> features -> regime fit.

The only outcomes allowed: a correct result (dates strictly increasing and equal to the calendar
dates the rows stand for, finite features after their warm-up, a fitted HMM with finite parameters)
or a :class:`DataError` that names the market, and for a row-specific fault its column and first
offending date. Faults that must not stop a load (a missing value, constant prices, a short series)
must load. Each probe prints its tally: examples per fault and outcome.

Reproduce: ``pytest tests/reliability/test_fuzz_prices.py -q -s`` (``-m slow`` for the 10,000-example twins).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from reliability.frames import FAULTS, PriceCase, price_frames
from supsup_fin.config import DataConfig, FeaturesConfig, MarketConfig
from supsup_fin.data import load_prices, validate_frame
from supsup_fin.errors import DataError
from supsup_fin.features import feature_warmup, make_features
from supsup_fin.regimes import RegimeModel

MARKET = "fz-market"
MUST_LOAD = ("valid", "nan", "constant", "short", "one-row")
"""Faults a load repairs or keeps (with a logged finding); every other fault must be refused at load."""

REGIME = {"n_states": 2, "n_restarts": 1, "n_iter": 10, "vol_window": 10}
REGIME_MIN_ROWS = 10 * 2 * 2 + 10  # RegimeModel.fit's minimum for 2 states on (return, vol)
NAMES = FeaturesConfig().names


def _write(case: PriceCase, folder: Path, parquet: bool) -> Path:
    path = folder / ("prices.parquet" if parquet else "prices.csv")
    keep_index = isinstance(case.frame.index, pd.DatetimeIndex)
    if parquet:
        case.frame.to_parquet(path, index=keep_index)
    else:
        case.frame.to_csv(path, index=keep_index)
    return path


def _check_error(err: DataError, case: PriceCase) -> None:
    msg = str(err)
    assert repr(MARKET) in msg, (case.description, msg)
    if case.column is not None:
        assert f"'{case.column}'" in msg.lower(), (case.description, msg)
    if case.date is not None:
        assert case.date in msg, (case.description, msg)


def _check_frame(frame: pd.DataFrame, case: PriceCase) -> None:
    dates = frame.index
    assert isinstance(dates, pd.DatetimeIndex) and dates.tz is None
    assert (np.diff(dates.asi8) > 0).all() and (dates == dates.normalize()).all()
    assert dates.isin(case.dates).all(), case.description  # no date shifted by a time zone
    if case.fault == "valid":
        assert dates.equals(case.dates), case.description
    assert np.isfinite(frame.to_numpy()).all()


def _ingest(case: PriceCase, folder: Path, parquet: bool) -> pd.DataFrame | DataError:
    """The file market's load, and the same frame through ``validate_frame`` in memory: they agree."""
    market = MarketConfig(name=MARKET, source="file", path=str(_write(case, folder, parquet)),
                          timezone=case.timezone)
    try:
        loaded = load_prices(market, DataConfig(), folder).frame
    except DataError as err:
        loaded = err
    try:
        validate_frame(case.frame, MARKET, timezone=case.timezone)
        in_memory = None
    except DataError as err:
        in_memory = err
    if in_memory is not None:  # what validation refuses in memory, the load refuses too
        assert isinstance(loaded, DataError), (case.description, str(in_memory))
    return loaded


def _features(frame: pd.DataFrame) -> None:
    x = make_features(frame, NAMES, market=MARKET).to_numpy()
    assert x.shape == (len(frame), len(NAMES))
    assert np.isfinite(x[feature_warmup(NAMES):]).all()


def probe_prices(n_examples: int, folder: Path, faults: tuple[str, ...] = ("valid", *FAULTS),
                 regimes: bool = False) -> Counter:
    """About ``n_examples`` fuzzed frames, shared evenly by ``faults``, through load and features (and a
    regime fit); the outcome tally by fault."""
    tally: Counter = Counter()

    def one(case: PriceCase, parquet: bool) -> str:
        loaded = _ingest(case, folder, parquet)
        if isinstance(loaded, DataError):
            assert case.fault not in MUST_LOAD, (case.description, str(loaded))
            _check_error(loaded, case)
            return "refused at load"
        assert case.fault in MUST_LOAD, (case.description, "loaded")
        _check_frame(loaded, case)
        _features(loaded)
        if not regimes:
            return "loaded"
        try:
            model = RegimeModel(**REGIME).fit(loaded)
        except DataError as err:
            assert case.fault in ("constant", "short", "one-row"), (case.description, str(err))
            return "refused by the regime fit"
        assert len(loaded) >= REGIME_MIN_ROWS and case.fault in ("valid", "nan"), case.description
        for value in (model.means_, model.covars_, model.transmat_, model.startprob_):
            assert np.isfinite(value).all()
        np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0)
        return "fitted"

    for fault in faults:
        @settings(max_examples=max(1, n_examples // len(faults)))
        @given(case=price_frames(max_rows=320, short_rows=REGIME_MIN_ROWS, faults=(fault,)), parquet=st.booleans())
        def run(case: PriceCase, parquet: bool) -> None:
            tally[case.fault, one(case, parquet)] += 1

        run()
    rows = "".join(f"\n  {f:12s} {o:26s} {n}" for (f, o), n in sorted(tally.items()))
    print(f"\n{sum(tally.values())} fuzzed frames{rows}")
    return tally


def test_fuzzed_frames_load_or_name_the_fault(tmp_path: Path) -> None:
    tally = probe_prices(FUZZ_EXAMPLES, tmp_path)
    assert {f for f, _ in tally} == {"valid", *FAULTS}  # every fault was drawn
    assert tally["valid", "loaded"] > 0


def test_fuzzed_loadable_frames_fit_regimes_or_are_refused(tmp_path: Path) -> None:
    tally = probe_prices(40, tmp_path, MUST_LOAD, regimes=True)
    assert tally["valid", "fitted"] > 0 and tally["short", "refused by the regime fit"] > 0


@pytest.mark.slow
def test_fuzzed_frames_load_or_name_the_fault_slow(tmp_path: Path) -> None:
    probe_prices(FUZZ_EXAMPLES_SLOW, tmp_path)


@pytest.mark.slow
def test_fuzzed_loadable_frames_fit_regimes_or_are_refused_slow(tmp_path: Path) -> None:
    probe_prices(FUZZ_EXAMPLES_SLOW // 10, tmp_path, MUST_LOAD, regimes=True)
