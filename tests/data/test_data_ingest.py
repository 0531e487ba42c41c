"""A user's prices file through the public load path: its layout (a Yahoo download, which close, column
names), dates (integers, time zones, DST), cells that are not numbers, absurd closes, and errors that name
the market, the file, the column and the first offending date (every structural fault of a file at once);
the example file market; every failing market in one error when markets are ingested together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supsup_fin.config import DataConfig, JumpCheck, MarketConfig, load_config
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


def yahoo_csv(n: int = 6) -> pd.DataFrame:
    """Bars in a Yahoo download's layout; ``Adj Close`` is half of ``Close`` (a 2:1 split after the last row)."""
    close = np.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])[:n]
    return pd.DataFrame({"Date": DATES[:n].strftime("%Y-%m-%d"), "Open": close - 0.5, "High": close + 1.0,
                         "Low": close - 1.0, "Close": close, "Adj Close": close / 2, "Volume": np.arange(n) + 100})


def load_file(tmp_path: Path, text_or_frame: str | pd.DataFrame, **market: str) -> pd.DataFrame:
    path = tmp_path / "prices.csv"
    if isinstance(text_or_frame, str):
        path.write_text(text_or_frame)
    else:
        text_or_frame.to_csv(path, index=False)
    return load_prices(MarketConfig(name="acme", source="file", path=str(path), **market), DataConfig(), tmp_path).frame


# ---------------------------------------------------------------- layout


def test_a_yahoo_download_uses_close_unless_adj_close_is_chosen(tmp_path: Path) -> None:
    raw = yahoo_csv()
    plain = load_file(tmp_path, raw)
    assert list(plain.columns) == ["open", "high", "low", "close", "volume"]
    np.testing.assert_array_equal(plain["close"], raw["Close"])
    adjusted = load_file(tmp_path, raw, close="adj_close")
    assert list(adjusted.columns) == ["open", "high", "low", "close", "volume"]
    np.testing.assert_array_equal(adjusted["close"], raw["Adj Close"])
    for col in ("Open", "High", "Low"):  # each bar scaled by adj_close / close: 1/2 here
        np.testing.assert_allclose(adjusted[col.lower()], raw[col] / 2, rtol=1e-15)
    np.testing.assert_array_equal(adjusted["volume"], raw["Volume"])


def test_adj_close_without_a_close_drops_the_bars_it_cannot_scale(tmp_path: Path) -> None:
    out = load_file(tmp_path, yahoo_csv().drop(columns=["Close"]), close="adj_close")
    assert list(out.columns) == ["close", "volume"]
    np.testing.assert_array_equal(out["close"], yahoo_csv()["Adj Close"])


def test_column_names_ignore_case_spaces_and_underscores(tmp_path: Path) -> None:
    raw = yahoo_csv().rename(columns={"Date": " DATE ", "Close": "CLOSE", "Adj Close": "adj_close",
                                      "Volume": "vol ume"})
    out = load_file(tmp_path, raw, close="adj_close")
    np.testing.assert_array_equal(out["close"], yahoo_csv()["Adj Close"])
    assert "volume" not in out.columns  # "vol ume" is "vol_ume": not a known column
    both = yahoo_csv().assign(adj__close=1.0)  # "Adj Close" and "adj__close" are one name
    with pytest.raises(DataError, match=r"columns \['adj_close'\] appear more than once"):
        load_file(tmp_path, both)


def test_a_missing_close_points_to_adj_close(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no 'close' column.*set the market's close: adj_close"):
        load_file(tmp_path, yahoo_csv().drop(columns=["Close"]))
    with pytest.raises(DataError, match=r"no 'adj_close' column \(the market's close: adj_close\)"):
        load_file(tmp_path, yahoo_csv().drop(columns=["Adj Close"]), close="adj_close")


def test_every_structural_fault_of_a_file_in_one_error(tmp_path: Path) -> None:
    raw = yahoo_csv().astype({"Date": object, "Close": object})
    raw.loc[1, "Date"] = "2024-13-45"  # unparseable
    raw.loc[3, "Date"] = raw.loc[2, "Date"]  # duplicated
    raw.loc[[4, 5], "Date"] = [day(6), day(5)]  # not increasing
    raw.loc[5, "Close"] = "twelve"  # not a number, dated 2024-01-09
    raw.loc[0, "Volume"] = -1  # negative volume
    with pytest.raises(DataError) as err:
        load_file(tmp_path, raw)
    msg = str(err.value)
    assert msg.startswith(f"market 'acme': prices file {str(tmp_path / 'prices.csv')!r}: 5 structural faults: (1) "), msg
    for i, fault in enumerate([
            f"column 'Date' expected ISO-8601 dates (YYYY-MM-DD); first unparseable value '2024-13-45' at row 1 "
            f"(after {day(0)})",
            f"column 'Date' has duplicated dates (1), first {day(2)}",
            f"column 'Date' is not increasing: {day(5)} comes after {day(6)}",
            f"column 'close' must be numeric; first non-numeric value 'twelve' on {day(5)}",
            f"column 'volume' must be finite and >= 0; 1 bad value(s), first -1.0 on {day(0)}"], 1):
        assert f"({i}) {fault}" in msg, (fault, msg)
    assert "\n" not in msg


def test_a_file_with_a_fault_keeps_the_one_fault_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_file(tmp_path, yahoo_csv().assign(Close=-1.0))
    assert str(err.value) == (f"market 'acme': prices file {str(tmp_path / 'prices.csv')!r}: column 'close' must be "
                              f"finite and > 0; 6 bad value(s), first -1.0 on {day(0)}")


@pytest.mark.parametrize(("text", "expected"), [
    ("", "is empty; expected a header row"),
    ("Date,Open,High,Low,Close,Adj Close,Volume\n", "the prices frame is empty (no rows in column 'close')"),
])
def test_an_empty_file_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(DataError) as err:
        load_file(tmp_path, text)
    assert str(err.value).startswith(f"market 'acme': prices file {str(tmp_path / 'prices.csv')!r}")
    assert expected in str(err.value)


def test_the_example_file_market_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the example's path is relative to the repository root
    cfg = load_config(root / "configs" / "examples" / "file_market.yaml")
    (market,) = cfg.markets
    assert market.close == "adj_close"
    lp = load_prices(market, cfg.data, tmp_path)
    assert (len(lp.frame), lp.health.findings) == (754, ())
    assert lp.frame.index[[0, -1]].strftime("%Y-%m-%d").tolist() == ["2016-01-04", "2018-12-31"]
    raw = pd.read_csv(root / market.path)
    np.testing.assert_array_equal(lp.frame["close"], raw["Adj Close"])
    rows = [len(lp.frame.loc[str(start or "1900"):str(end or "2100")]) for start, end in
            (cfg.segments.train, cfg.segments.valid, cfg.segments.test)]
    assert rows == [377, 126, 251]  # each segment holds the regime window (100 rows) and more


def test_ingest_all_names_every_failing_market(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The flows' ingest waits for every market and raises one error naming each that failed."""
    from pipelines import retrain
    from supsup_fin.config import config_from_dict

    class Done:
        def __init__(self, market: MarketConfig, cfg, cache_dir: Path) -> None:
            try:
                self.value, self.error = load_prices(market, cfg.data, cache_dir), None
            except DataError as err:
                self.value, self.error = None, err

        def result(self):
            if self.error:
                raise self.error
            return self.value

    monkeypatch.setattr(retrain, "ingest", type("Task", (), {"submit": staticmethod(Done)}))
    (tmp_path / "a.csv").write_text("date,price\n2024-01-02,1\n")
    (tmp_path / "b.csv").write_text("date,close\n2024-01-02,-1\n")
    cfg = config_from_dict({"markets": [
        {"name": "a", "source": "file", "path": str(tmp_path / "a.csv")},
        {"name": "good", "source": "synthetic", "dataset": "easy"},
        {"name": "b", "source": "file", "path": str(tmp_path / "b.csv")}]})
    with pytest.raises(DataError) as err:
        retrain.ingest_all(cfg, tmp_path)
    msg = str(err.value)
    assert msg.startswith("2 of 3 markets could not be loaded: (1) market 'a': "), msg
    assert "(2) market 'b': " in msg and "no 'close' column" in msg and "must be finite and > 0" in msg
    assert "'good'" not in msg
    with pytest.raises(DataError) as err:  # one failing market: its own error
        retrain.ingest_all(cfg, tmp_path, ["good", "b"])
    assert str(err.value).startswith("market 'b': prices file ")
    assert list(retrain.ingest_all(cfg, tmp_path, ["good"])) == ["good"]


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
