"""A user's prices file through the public load path: dates (integers, time zones, DST), cells that are
not numbers, absurd closes, and errors that name the market, the column and the first offending date."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supsup_fin.config import DataConfig, JumpCheck, MarketConfig
from supsup_fin.data import check_health, load_prices, validate_frame
from supsup_fin.errors import DataError
from supsup_fin.features import make_features

N = 260
DATES = pd.bdate_range("2024-01-02", periods=N, name="date").as_unit("ns")


def walk(n: int = N, seed: int = 0) -> pd.DataFrame:
    close = 100 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, n)))
    return pd.DataFrame({"close": close}, index=DATES[:n])


def load_csv(tmp_path: Path, df: pd.DataFrame, *, index: bool = False, timezone: str | None = None,
             data: DataConfig | None = None):
    path = tmp_path / "prices.csv"
    df.to_csv(path, index=index)
    market = MarketConfig(name="acme", source="file", path=str(path), **({"timezone": timezone} if timezone else {}))
    return load_prices(market, data or DataConfig(), tmp_path)


def day(i: int) -> str:
    return DATES[i].strftime("%Y-%m-%d")


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize("parquet", [False, True])
def test_integer_dates_are_named_as_integers(tmp_path: Path, parquet: bool) -> None:
    df = walk().reset_index(drop=True).assign(date=np.arange(N))[["date", "close"]]
    path = tmp_path / ("p.parquet" if parquet else "p.csv")
    df.to_parquet(path) if parquet else df.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_prices(MarketConfig(name="acme", source="file", path=str(path)), DataConfig(), tmp_path)
    msg = str(err.value)
    assert "'acme'" in msg and "'date'" in msg and "integers" in msg and "duplicated" not in msg, msg


def test_integers_read_as_nanoseconds_are_named_as_integers() -> None:
    df = walk().set_axis(pd.DatetimeIndex(np.arange(N), name="date"))  # 1970-01-01 plus 0..259 ns
    with pytest.raises(DataError) as err:
        validate_frame(df, "acme")
    msg = str(err.value)
    assert "'acme'" in msg and "'date'" in msg and "integers" in msg and "duplicated" not in msg, msg


@pytest.mark.parametrize("tz", ["America/New_York", "Europe/Berlin", "Australia/Sydney"])
def test_offsets_changing_across_dst_load_as_local_dates(tmp_path: Path, tz: str) -> None:
    local = pd.bdate_range("2024-02-01", periods=N).tz_localize(tz)  # spans the spring (and autumn) change
    assert len({t.utcoffset() for t in local}) == 2
    df = walk().reset_index(drop=True).assign(date=[t.isoformat() for t in local])
    lp = load_csv(tmp_path, df)
    assert list(lp.frame.index) == list(local.tz_localize(None))


@pytest.mark.parametrize(("tz", "utc_time"), [("Europe/Berlin", "T23:00:00Z"), ("Asia/Tokyo", "T15:00:00Z")])
def test_utc_instants_take_the_markets_timezone_dates(tmp_path: Path, tz: str, utc_time: str) -> None:
    local = pd.bdate_range("2024-01-02", periods=N).tz_localize(tz)
    stamps = local.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert stamps[44].endswith(utc_time)  # the UTC calendar date is the day before the exchange's
    df = walk().reset_index(drop=True).assign(date=list(stamps))
    lp = load_csv(tmp_path, df, timezone=tz)
    assert list(lp.frame.index) == list(local.tz_localize(None))
    own = load_csv(tmp_path, df)  # no market timezone: each instant keeps its own offset (UTC here)
    assert list(own.frame.index) == list(local.tz_convert("UTC").tz_localize(None).normalize())


def test_tz_aware_index_is_converted_to_the_markets_timezone() -> None:
    local = DATES.tz_localize("Asia/Tokyo")
    df = walk().set_axis(local.tz_convert("UTC"))
    assert list(validate_frame(df, "acme", timezone="Asia/Tokyo").index) == list(DATES)
    assert list(validate_frame(df.set_axis(local), "acme").index) == list(DATES)


def test_naive_timestamps_are_taken_as_given() -> None:
    df = walk().set_axis(DATES + pd.Timedelta(hours=23))
    assert list(validate_frame(df, "acme", timezone="Asia/Tokyo").index) == list(DATES)


def test_unknown_timezone_is_a_config_error() -> None:
    from supsup_fin.config import config_from_dict
    from supsup_fin.errors import ConfigError

    with pytest.raises(ConfigError, match=r"markets\.0\.timezone.*Mars/Olympus"):
        config_from_dict({"markets": [{"name": "x", "source": "file", "path": "p.csv", "timezone": "Mars/Olympus"}]})


def test_unnamed_first_column_of_dates_is_the_date_column(tmp_path: Path) -> None:
    lp = load_csv(tmp_path, walk().rename_axis(None), index=True)  # a header of "", read as "Unnamed: 0"
    assert list(lp.frame.index) == list(DATES)


def test_missing_and_unparseable_dates_name_the_row_before(tmp_path: Path) -> None:
    df = walk().reset_index().assign(date=lambda d: d["date"].dt.strftime("%Y-%m-%d"))
    for bad, needle in ((None, "missing date"), ("2024-13-45", "'2024-13-45'")):
        broken = df.copy()
        broken.loc[7, "date"] = bad
        with pytest.raises(DataError) as err:
            load_csv(tmp_path, broken)
        msg = str(err.value)
        assert "'acme'" in msg and "'date'" in msg and needle in msg and day(6) in msg, msg


# ---------------------------------------------------------------- values


def test_non_numeric_cell_is_reported_at_its_own_row(tmp_path: Path) -> None:
    df = walk().reset_index()
    df["close"] = df["close"].astype(str)
    df.loc[100, "close"] = "1,234.5"
    with pytest.raises(DataError) as err:
        load_csv(tmp_path, df)
    msg = str(err.value)
    assert "'acme'" in msg and "'close'" in msg and "'1,234.5'" in msg and day(100) in msg, msg
    assert day(0) not in msg, msg


def test_numeric_strings_are_numbers() -> None:
    df = walk()
    out = validate_frame(df.assign(close=df["close"].map(repr).astype(object)), "acme")
    np.testing.assert_array_equal(out["close"].to_numpy(), df["close"].to_numpy())


@pytest.mark.parametrize(
    ("rows", "first"),
    [(slice(120, 121), 120), (slice(N - 1, N), N - 1), (slice(120, 124), 120), (slice(120, N), 120),
     (slice(0, 1), 1)],
    ids=["spike", "last-row", "run-of-4", "level-shift", "first-row"],
)
def test_absurd_close_is_an_error_by_default(tmp_path: Path, rows: slice, first: int) -> None:
    df = walk().reset_index()
    df.loc[df.index[rows], "close"] *= 1e12
    with pytest.raises(DataError) as err:
        load_csv(tmp_path, df)
    msg = str(err.value)
    assert "'acme'" in msg and "'close'" in msg and day(first) in msg and "absurd" in msg, msg


@pytest.mark.parametrize("policy", ["repair", "warn"])
def test_absurd_close_is_an_error_under_every_policy(policy: str) -> None:
    df = walk()
    df.iloc[50, 0] *= 100  # a close in cents among dollars
    with pytest.raises(DataError, match=rf"'acme'.*'close'.*{day(50)}"):
        check_health(df, "acme", DataConfig(jump=JumpCheck(policy=policy)))
    out, _ = check_health(df, "acme", DataConfig(jump=JumpCheck(policy=policy, absurd=1000)))
    assert len(out) == N - (policy == "repair")  # below the absurd factor: the usual spike handling


def test_absurd_move_is_measured_across_missing_closes() -> None:
    df = walk()
    df.iloc[50, 0] = np.nan
    df.iloc[51, 0] *= 1e12
    with pytest.raises(DataError, match=rf"'acme'.*'close'.*{day(51)}"):
        check_health(df, "acme", DataConfig(missing={"policy": "warn"}))


# ---------------------------------------------------------------- features


def test_features_refuse_unsorted_dates_naming_the_date() -> None:
    df = walk()
    order = np.arange(N)
    order[[30, 31]] = [31, 30]
    with pytest.raises(DataError) as err:
        make_features(df.set_axis(DATES[order]), ["ret_1", "vol_5"], market="acme")
    msg = str(err.value)
    assert "'acme'" in msg and "'date'" in msg and day(30) in msg, msg


def test_features_of_a_canonical_frame_are_unchanged() -> None:
    df = walk()
    out = make_features(df, ["ret_1"], market="acme")
    assert out.index is df.index
    np.testing.assert_array_equal(out["ret_1"].to_numpy()[1:], np.diff(np.log(df["close"].to_numpy())))
