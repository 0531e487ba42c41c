"""Prices-frame contract, health policies, bundled, synthetic and file sources."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from supsup_fin.config import DataConfig, GapCheck, HighLowCheck, JumpCheck, MarketConfig, MissingCheck, StaleCheck
from supsup_fin.data import (
    BUNDLED_DATASETS,
    SYNTHETIC_PRESETS,
    HealthReport,
    LoadedPrices,
    check_health,
    frame_hash,
    generate_synthetic,
    load_prices,
    validate_frame,
)
from supsup_fin.data import health
from supsup_fin.errors import DataError

DATES = pd.bdate_range("2020-01-01", periods=30, name="date")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees health warnings as a fresh process does (a finding warns once per process)."""
    monkeypatch.setattr(health, "_warned", set())


def ohlcv(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """A clean OHLCV frame with small daily moves."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    return pd.DataFrame(
        {"open": close * 0.999, "high": close * 1.01, "low": close * 0.99, "close": close,
         "volume": rng.integers(1_000, 2_000, n).astype(float)},
        index=pd.bdate_range("2020-01-01", periods=n, name="date").as_unit("ns"),
    )


def closes(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"close": np.asarray(values, dtype=float)},
                        index=pd.bdate_range("2020-01-01", periods=len(values), name="date").as_unit("ns"))


def cfg(**checks: object) -> DataConfig:
    return DataConfig(**checks)


# ---------------------------------------------------------------- structure


def test_validate_canonical_form() -> None:
    raw = ohlcv()
    messy = raw[["volume", "close", "low", "high", "open"]].rename(columns=str.upper)
    messy["VOLUME"] = messy["VOLUME"].astype("int64")
    messy["extra"] = 1.0
    messy.index = (messy.index + pd.Timedelta(hours=16)).as_unit("us").rename("Date")
    out = validate_frame(messy, "m")
    assert list(out.columns) == ["open", "high", "low", "close", "volume"]
    assert all(dt == np.float64 for dt in out.dtypes)
    assert out.index.name == "date" and str(out.index.dtype) == "datetime64[ns]"
    assert (out.index == raw.index).all()
    pd.testing.assert_frame_equal(out, raw, check_freq=False)


def test_validate_tz_aware_keeps_wall_clock_dates() -> None:
    raw = closes([1.0, 2.0, 3.0])
    aware = raw.set_axis(raw.index.tz_localize("Asia/Tokyo"))
    out = validate_frame(aware, "m")
    assert out.index.tz is None
    assert list(out.index) == list(raw.index)


def test_validate_date_column_and_close_only() -> None:
    raw = closes([1.0, 2.0]).reset_index().rename(columns={"date": "Date", "close": "Close"})
    raw["Date"] = raw["Date"].dt.strftime("%Y-%m-%d")
    out = validate_frame(raw, "m")
    assert list(out.columns) == ["close"] and isinstance(out.index, pd.DatetimeIndex)


def _dup(df: pd.DataFrame) -> pd.DataFrame:
    idx = df.index.tolist()
    idx[5] = idx[4]
    return df.set_axis(pd.DatetimeIndex(idx, name="date"))


def _unsorted(df: pd.DataFrame) -> pd.DataFrame:
    idx = df.index.tolist()
    idx[6], idx[7] = idx[7], idx[6]
    return df.set_axis(pd.DatetimeIndex(idx, name="date"))


def _set(col: str, row: int, value: object) -> object:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype({col: object}) if not isinstance(value, float) else df.copy()
        df.iloc[row, df.columns.get_loc(col)] = value
        return df
    return f


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda df: df.drop(columns=["close"]), ["'close'", "open", "volume"]),
        (lambda df: df.iloc[:0], ["'close'", "empty"]),
        (_dup, ["'date'", "duplicated", str(DATES[4].date())]),
        (_unsorted, ["'date'", "not increasing", str(DATES[6].date())]),
        (_set("close", 9, -1.5), ["'close'", "-1.5", str(DATES[9].date())]),
        (_set("close", 3, 0.0), ["'close'", "0.0", str(DATES[3].date())]),
        (_set("low", 8, -2.0), ["'low'", str(DATES[8].date())]),
        (_set("close", 11, "n/a"), ["'close'", "numeric", "'n/a'", str(DATES[11].date())]),
        (_set("close", 12, np.inf), ["'close'", "inf", str(DATES[12].date())]),
        (_set("volume", 13, -5.0), ["'volume'", str(DATES[13].date())]),
    ],
    ids=["no-close", "empty", "duplicated", "unsorted", "negative", "zero", "negative-low", "non-numeric",
         "inf", "negative-volume"],
)
def test_structural_faults_raise(fault, expected: list[str]) -> None:
    bad = fault(ohlcv())
    with pytest.raises(DataError) as err:
        validate_frame(bad, "SPX-test")
    msg = str(err.value)
    assert "'SPX-test'" in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_structural_faults_raise_even_under_repair_policies() -> None:
    with pytest.raises(DataError, match="duplicated"):
        check_health(_dup(ohlcv()), "m", DataConfig())


# ---------------------------------------------------------------- content policies


def test_missing_repair_fills_at_most_max_fill_then_drops(caplog: pytest.LogCaptureFixture) -> None:
    values = list(100 + np.arange(30.0))
    for i in (0, 5, 10, 11, 12, 13):
        values[i] = np.nan
    df = closes(values)
    caplog.set_level(logging.INFO, logger="supsup_fin.data")
    out, rep = check_health(df, "m", cfg(missing=MissingCheck(policy="repair", max_fill=2)))
    dropped = df.index[[0, 12, 13]]
    assert len(out) == 27 and not out.index.isin(dropped).any()
    assert out.loc[df.index[5], "close"] == 104.0  # from row 4
    assert out.loc[df.index[10], "close"] == out.loc[df.index[11], "close"] == 109.0
    assert not out["close"].isna().any()
    (f,) = rep.find("missing")
    assert (f.count, f.action, f.first_date) == (6, "repair", df.index[0])
    assert "3 forward-filled" in f.detail and "3 dropped" in f.detail
    assert rep.clean and rep.rows_in == 30 and rep.rows_out == 27
    assert "6 row(s)" in caplog.text


def test_missing_warn_keeps_nan_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    df = ohlcv()
    df.iloc[7, 0] = np.nan
    out, rep = check_health(df, "mkt", cfg(missing=MissingCheck(policy="warn")))
    assert np.isnan(out.iloc[7, 0]) and len(out) == 30
    assert [(f.check, f.count, f.action) for f in rep.findings] == [("missing", 1, "warn")]
    assert not rep.clean
    (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'mkt'" in rec.getMessage() and str(df.index[7].date()) in rec.getMessage()


def test_missing_error_names_market_column_date() -> None:
    df = ohlcv()
    df.iloc[7, 3] = np.nan
    with pytest.raises(DataError, match=rf"'mkt'.*'close'.*{df.index[7].date()}"):
        check_health(df, "mkt", cfg(missing=MissingCheck(policy="error")))


def _high_low_fault() -> pd.DataFrame:
    df = ohlcv()
    df.iloc[[4, 9], df.columns.get_loc("high")] = df["low"].iloc[[4, 9]] * 0.9
    return df


def test_high_low_policies(caplog: pytest.LogCaptureFixture) -> None:
    df = _high_low_fault()
    out, rep = check_health(df, "m", cfg(high_low=HighLowCheck(policy="repair")))
    assert len(out) == 28 and not out.index.isin(df.index[[4, 9]]).any()
    assert rep.find("high_low")[0].count == 2
    out, rep = check_health(df, "m", cfg(high_low=HighLowCheck(policy="warn")))
    assert len(out) == 30 and rep.find("high_low")[0].action == "warn"
    assert "high < low" in caplog.text
    with pytest.raises(DataError, match=rf"'m'.*'high'.*{df.index[4].date()}"):
        check_health(df, "m", cfg(high_low=HighLowCheck(policy="error")))


def test_jump_policies() -> None:
    values = [100 + 0.1 * i for i in range(5)] + [101, 102, 60, 101, 103, 104, 150, 151, 152]
    df = closes(values)
    out, rep = check_health(df, "m", DataConfig())  # default: warn
    assert len(out) == len(df)
    (f,) = rep.find("jump")
    assert (f.count, f.action, f.first_date) == (3, "warn", df.index[7])  # into the spike, out, the level shift

    out, rep = check_health(df, "m", cfg(jump=JumpCheck(policy="repair", threshold=0.25)))
    assert list(out.index) == list(df.index.delete(7))  # only the one-day spike goes
    spike, shift = rep.find("jump")
    assert (spike.action, spike.count, spike.first_date) == ("repair", 1, df.index[7])
    assert (shift.action, shift.count, shift.first_date) == ("warn", 1, df.index[11])

    with pytest.raises(DataError, match=rf"'m'.*'close'.*{df.index[7].date()}"):
        check_health(df, "m", cfg(jump=JumpCheck(policy="error")))


def test_stale_policies() -> None:
    values = [100 + i for i in range(10)] + [110.0] * 8 + [111 + i for i in range(10)]
    df = closes(values)
    assert check_health(df, "m", cfg(stale=StaleCheck(max_repeats=8)))[1].findings == ()
    out, rep = check_health(df, "m", cfg(stale=StaleCheck(policy="warn", max_repeats=5)))
    assert len(out) == 28 and rep.find("stale")[0].count == 7 and rep.find("stale")[0].first_date == df.index[10]
    out, rep = check_health(df, "m", cfg(stale=StaleCheck(policy="repair", max_repeats=5)))
    assert len(out) == 21 and (out["close"] == 110.0).sum() == 1 and df.index[10] in out.index
    with pytest.raises(DataError, match=rf"'m'.*'close'.*{df.index[10].date()}"):
        check_health(df, "m", cfg(stale=StaleCheck(policy="error")))


def test_gap_policies() -> None:
    idx = pd.DatetimeIndex(["2020-01-01", "2020-01-02", "2020-01-20", "2020-01-21", "2020-02-20", "2020-02-21"],
                           name="date")
    df = pd.DataFrame({"close": [1.0, 1.01, 1.02, 1.03, 1.04, 1.05]}, index=idx)
    out, rep = check_health(df, "m", DataConfig())
    (f,) = rep.find("gap")
    assert (f.count, f.action, f.first_date) == (2, "warn", idx[2]) and len(out) == 6
    assert "longest 30" in f.detail
    out, rep = check_health(df, "m", cfg(gap=GapCheck(policy="repair")))
    assert list(out.index) == list(idx[4:])
    assert check_health(df, "m", cfg(gap=GapCheck(max_days=30)))[1].findings == ()
    with pytest.raises(DataError, match=r"'m'.*'date'.*2020-01-20"):
        check_health(df, "m", cfg(gap=GapCheck(policy="error")))


def test_a_warning_reaches_the_terminal_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    """The same finding on the same data (a flow loading prices a command loaded before) warns once;
    the repeats stay in the log at INFO. Another market, or other data, warns again."""
    df = _high_low_fault()
    warn = cfg(high_low=HighLowCheck(policy="warn"))
    caplog.set_level(logging.INFO, logger="supsup_fin.data")
    for market in ("m", "m", "m2"):
        check_health(df, market, warn)
    check_health(df.drop(index=df.index[4]), "m", warn)
    found = [(r.levelno, r.getMessage()) for r in caplog.records if "high < low" in r.getMessage()]
    assert [level for level, _ in found] == [logging.WARNING, logging.INFO, logging.WARNING, logging.WARNING]
    assert found[0][1] == found[1][1] and "'m'" in found[0][1] and "2 row(s)" in found[0][1]
    assert "'m2'" in found[2][1] and "1 row(s)" in found[3][1]


def test_report_records_are_json() -> None:
    _, rep = check_health(_high_low_fault(), "m", DataConfig())
    recs = rep.to_records()
    assert json.loads(json.dumps(recs)) == recs
    assert recs[0]["market"] == "m" and recs[0]["first_date"] == "2020-01-07"
    assert set(recs[0]) == {"market", "check", "count", "action", "first_date", "detail"}


def test_clean_frame_has_no_findings_and_is_not_mutated() -> None:
    df = ohlcv()
    before = df.copy()
    out, rep = check_health(df, "m", DataConfig())
    assert rep.findings == () and rep.clean and isinstance(rep, HealthReport)
    pd.testing.assert_frame_equal(df, before)
    pd.testing.assert_frame_equal(out, df, check_freq=False)


# ---------------------------------------------------------------- frame hash


def test_frame_hash_is_stable_and_sensitive() -> None:
    df = validate_frame(ohlcv(), "m")
    h = frame_hash(df)
    assert len(h) == 64 and h == frame_hash(df.copy())
    assert frame_hash(df.set_axis(df.index.as_unit("us"))) == h  # resolution does not matter
    changed = df.copy()
    changed.iloc[17, 3] *= 1 + 1e-12
    assert frame_hash(changed) != h
    assert frame_hash(df.set_axis(df.index + pd.Timedelta(days=1))) != h
    assert frame_hash(df.rename(columns={"volume": "vol"})) != h
    assert frame_hash(df.iloc[:-1]) != h
    # pinned: a change of the canonical layout must be deliberate (bump the version tag)
    tiny = closes([1.0, 2.5])
    assert frame_hash(tiny) == "d0f82a720ccbd41df119521406788805343783fe7d892b0290ff174874b4cb1d"


# ---------------------------------------------------------------- bundled


@pytest.mark.parametrize("name", ["sp500", "nasdaq"])
def test_bundled_equity_ohlcv(name: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    lp = load_prices(MarketConfig(name=name, source="bundled", dataset=name), DataConfig(), tmp_path)
    f = lp.frame
    assert isinstance(lp, LoadedPrices) and lp.source == "bundled" and lp.stale_days == 0
    assert list(f.columns) == ["open", "high", "low", "close", "volume"] and len(f) == 5031
    assert (f.index[0], f.index[-1]) == (pd.Timestamp("1999-01-04"), pd.Timestamp("2018-12-31"))
    assert lp.as_of == pd.Timestamp("2018-12-31")
    assert (f["high"] >= f["low"]).all()
    assert ((f["close"] <= f["high"] * (1 + 1e-9)) & (f["close"] >= f["low"] * (1 - 1e-9))).all()
    assert lp.health.findings == () and lp.data_hash == frame_hash(f)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_bundled_wti_passes_defaults(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    lp = load_prices(MarketConfig(name="wti", source="bundled", dataset="wti"), DataConfig(), tmp_path)
    assert list(lp.frame.columns) == ["close"] and len(lp.frame) == 8611
    assert not lp.frame["close"].isna().any()
    (missing,) = lp.health.find("missing")
    assert missing.action == "repair" and missing.count == 290 and "0 dropped" in missing.detail
    (jump,) = lp.health.find("jump")
    assert (jump.action, jump.count, jump.first_date) == ("warn", 1, pd.Timestamp("1991-01-17"))
    assert "-33.4%" in jump.detail
    assert any(r.levelno == logging.WARNING and "1991-01-17" in r.getMessage() for r in caplog.records)


def test_bundled_unknown_lists_names(tmp_path) -> None:
    with pytest.raises(DataError, match=r"unknown bundled dataset 'spx'.*nasdaq.*sp500.*wti"):
        load_prices(MarketConfig(name="x", source="bundled", dataset="spx"), DataConfig(), tmp_path)
    assert set(BUNDLED_DATASETS) == {"sp500", "nasdaq", "wti"}


# ---------------------------------------------------------------- synthetic


def _regime_vols(draw, name: str) -> np.ndarray:
    r = np.log(draw.prices[name]["close"]).diff()
    z = draw.regimes[name]
    return np.array([r[z == k].std() for k in range(3)])


def test_synthetic_deterministic_and_seeded() -> None:
    a = generate_synthetic("easy", 2, seed=7)
    b = generate_synthetic("easy", 2, seed=7)
    c = generate_synthetic("easy", 2, seed=8)
    for name in a.prices:
        pd.testing.assert_frame_equal(a.prices[name], b.prices[name])
        pd.testing.assert_series_equal(a.regimes[name], b.regimes[name])
        assert not np.allclose(a.prices[name]["close"], c.prices[name]["close"])
    assert not np.allclose(a.prices["easy_0"]["close"], a.prices["easy_1"]["close"])
    single = generate_synthetic("easy", 1, seed=7)
    pd.testing.assert_frame_equal(single.prices["easy_0"], a.prices["easy_0"])
    assert json.loads(json.dumps(a.params)) == a.params
    assert np.allclose(np.sum(a.params["transition"], axis=1), 1.0)
    assert set(a.params) >= {"transition", "drift", "vol", "ar"}


def test_synthetic_frame_contract() -> None:
    draw = generate_synthetic("hard", 1, seed=0, start="2001-01-01", end="2001-12-31")
    f = draw.prices["hard_0"]
    assert list(f.columns) == ["close"] and (f.index.day_of_week < 5).all()
    pd.testing.assert_frame_equal(validate_frame(f, "h"), f)
    z = draw.regimes["hard_0"]
    assert z.index.equals(f.index) and z.dtype == np.int64 and set(z.unique()) <= {0, 1, 2}


def test_synthetic_regimes_ordered_and_easy_more_separated() -> None:
    easy = generate_synthetic("easy", 3, seed=1)
    hard = generate_synthetic("hard", 3, seed=1)
    easy_sep, hard_sep = [], []
    for draw, seps in ((easy, easy_sep), (hard, hard_sep)):
        for name in draw.prices:
            vols = _regime_vols(draw, name)
            assert vols[0] < vols[1] < vols[2], (name, vols)
            seps.append(min(vols[1] / vols[0], vols[2] / vols[1]))
    assert min(easy_sep) > max(hard_sep)
    stick = lambda p: np.diag(p.params["transition"]).mean()  # noqa: E731
    assert stick(easy) > stick(hard)


def test_synthetic_unknown_preset_and_load_prices(tmp_path) -> None:
    with pytest.raises(DataError, match=r"unknown synthetic preset 'medium'.*easy.*hard"):
        generate_synthetic("medium")
    assert set(SYNTHETIC_PRESETS) == {"easy", "hard"}
    m = MarketConfig(name="syn", source="synthetic", dataset="hard", seed=5)
    lp = load_prices(m, DataConfig(), tmp_path)
    assert lp.source == "synthetic" and lp.stale_days == 0 and lp.market == "syn"
    pd.testing.assert_frame_equal(lp.frame, generate_synthetic("hard", 1, seed=5).prices["hard_0"], check_freq=False)
    with pytest.raises(DataError, match="medium"):
        load_prices(m.model_copy(update={"dataset": "medium"}), DataConfig(), tmp_path)


# ---------------------------------------------------------------- file


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_source_roundtrip(tmp_path, suffix: str) -> None:
    df = ohlcv()
    path = tmp_path / f"prices{suffix}"
    if suffix == ".csv":
        df.rename(columns=str.title).rename_axis("Date").to_csv(path)
    else:
        df.to_parquet(path)
    lp = load_prices(MarketConfig(name="f", source="file", path=str(path)), DataConfig(), tmp_path)
    assert lp.source == "file" and lp.stale_days == 0
    pd.testing.assert_frame_equal(lp.frame, df, check_freq=False, rtol=1e-12)


def test_file_source_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"'f'.*nope\.csv.*does not exist"):
        load_prices(MarketConfig(name="f", source="file", path=str(path)), DataConfig(), tmp_path)


def test_file_source_bad_close_column(tmp_path) -> None:
    path = tmp_path / "p.csv"
    ohlcv().drop(columns="close").to_csv(path)
    with pytest.raises(DataError, match=r"'f'.*no 'close' column.*open"):
        load_prices(MarketConfig(name="f", source="file", path=str(path)), DataConfig(), tmp_path)
