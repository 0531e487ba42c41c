"""A backtest's artifacts folder and its tearsheet: every file written whole or none, the page's
sections against the result's own numbers, and the page as a browser renders it."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from browser import images_loaded, open_page, skip_without_browser
from test_backtest import backtest_config_dict

from supsup_fin import progress
from supsup_fin.backtest import artifacts
from supsup_fin.backtest.artifacts import TEARSHEET, backtest_folder, write_artifacts
from supsup_fin.backtest.metrics import rolling_sharpe
from supsup_fin.backtest.plots import calibration_ece, rolling_sharpe_figure
from supsup_fin.backtest.report import PORTFOLIO, run_backtest
from supsup_fin.backtest.tearsheet import highlighted
from supsup_fin.config import config_from_dict
from supsup_fin.data import load_prices

SHOWN = ["supsup_auto", "hmm_rule", "buy_and_hold", "oracle"]
FILES = {"comparison.csv", "comparison.txt", "per_regime.csv", "calibration.csv", "continual.csv", "storage.csv",
         "windows.csv", "windows.json", "equity_syn.png", "equity_portfolio.png", "reliability.png",
         "daily.parquet", TEARSHEET}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two windows of one synthetic market, cheap strategies only; its artifacts, and every
    progress report of the walk and of the writing."""
    tree = backtest_config_dict()
    tree["backtest"] = {**tree["backtest"], "end": "2012-09-28", "modes": ["soft", "auto"],
                        "baselines": ["buy_and_hold", "hmm_rule", "oracle"]}
    cfg = config_from_dict(tree)
    prices = {m.name: load_prices(m, cfg.data, tmp_path_factory.mktemp("cache")).frame for m in cfg.markets}
    reports: list[tuple[str, int, int, str]] = []
    with progress.listening(lambda *a: reports.append(a)):
        result = run_backtest(cfg, prices)
        folder = tmp_path_factory.mktemp("backtests") / "bt-small"
        paths = write_artifacts(result, cfg, folder)
    return SimpleNamespace(cfg=cfg, result=result, folder=folder, paths=paths, reports=reports)


class _Page(HTMLParser):
    """The parts of the tearsheet the tests read: title, sections (id -> tables of cell texts,
    images), every link and source."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.title, self.sections, self.refs = "", {}, []
        self._section = self._cell = self._in_title = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href")]
        if tag == "title":
            self._in_title = True
        elif tag == "section":
            self._section = self.sections.setdefault(a["id"], {"tables": [], "images": []})
        elif tag == "table":
            self._section["tables"].append([])
        elif tag == "tr":
            self._section["tables"][-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self._section["images"].append(a)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in ("td", "th"):
            self._section["tables"][-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell += data


def _png_size(src: str) -> tuple[int, int]:
    data = base64.b64decode(src.removeprefix("data:image/png;base64,"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_write_artifacts_writes_every_file_of_the_backtest(written) -> None:
    res, folder = written.result, written.folder
    assert written.paths == [folder / p.name for p in written.paths]
    assert {p.name for p in written.paths} == FILES == {p.name for p in folder.iterdir()}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary beside it
    table = pd.read_csv(folder / "comparison.csv", index_col=["market", "strategy"])
    pd.testing.assert_frame_equal(table, res.table, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "daily.parquet"), res.daily)
    assert json.loads((folder / "windows.json").read_text()) == json.loads(json.dumps(res.forecasts.window_log,
                                                                                      default=str))
    assert len(pd.read_csv(folder / "per_regime.csv")) == len(res.per_regime)
    assert "supsup_auto" in (folder / "comparison.txt").read_text()
    for name in ("equity_syn.png", "equity_portfolio.png", "reliability.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / TEARSHEET).read_text().startswith("<!DOCTYPE html>")
    writes = [r for r in written.reports if r[0] == "write artifacts"]
    assert [r[1:3] for r in writes] == [(i, len(FILES)) for i in range(len(FILES) + 1)]
    assert [r[3] for r in writes[:-1]] == [p.name for p in written.paths]


def test_a_failure_mid_way_leaves_no_folder_and_the_old_one_whole(written, tmp_path, monkeypatch) -> None:
    calls = []

    def second_figure_fails(result, market, *a):
        calls.append(market)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(result, market, *a)

    real = artifacts.equity_figure
    monkeypatch.setattr(artifacts, "equity_figure", second_figure_fails)
    fresh = tmp_path / "runs" / "bt"
    with pytest.raises(OSError, match="disk full"):
        write_artifacts(written.result, written.cfg, fresh)
    assert calls == ["syn", PORTFOLIO] and list(fresh.parent.iterdir()) == []
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written.folder.iterdir()}
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        write_artifacts(written.result, written.cfg, written.folder)  # over a complete folder
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written.folder.iterdir()} == before
    assert [p.name for p in written.folder.parent.iterdir()] == [written.folder.name]


def test_backtest_folder_is_named_by_config_and_utc_time_and_never_reused(tmp_path) -> None:
    when = dt.datetime(2024, 3, 5, 14, 7, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    first = backtest_folder(tmp_path, "my run/v2", when)
    assert first == tmp_path / "my_run_v2-20240305T120709Z"
    first.mkdir()
    second = backtest_folder(tmp_path, "my run/v2", when)
    assert second == tmp_path / "my_run_v2-20240305T120709Z-2"
    second.mkdir()
    assert backtest_folder(tmp_path, "my run/v2", when).name.endswith("-3")


def test_walk_forward_reports_each_window_and_each_market_step(written) -> None:
    walk = [r[1:] for r in written.reports if r[0] == "walk-forward"]
    tags = [w.tag for w in written.result.forecasts.windows]
    # every window fitted in order, all trained in one pass, then each forecast
    assert walk == [(0, 5, f"fit {tags[0]}"), (1, 5, f"fit {tags[1]}"), (2, 5, "train every window"),
                    (3, 5, f"forecast {tags[0]}"), (4, 5, f"forecast {tags[1]}"), (5, 5, "done")]
    steps = [r[1:] for r in written.reports if r[0] == "window"]
    assert steps == ([(0, 2, f"{tag}: fit syn") for tag in tags]
                     + [(i, 2, f"{tag}: {what}") for tag in tags for i, what in [(1, "forecast syn"), (2, "done")]])


def test_the_strategies_shown_are_the_gated_one_the_best_baseline_buy_and_hold_and_the_oracle() -> None:
    def result(rows: dict[tuple[str, str], float]):
        index = pd.MultiIndex.from_tuples(list(rows), names=["market", "strategy"])
        return SimpleNamespace(table=pd.DataFrame({"sharpe": list(rows.values())}, index=index))

    cfg = config_from_dict(backtest_config_dict())  # gating.mode auto
    port = {"supsup_soft": 0.5, "supsup_auto": 0.1, "logistic": 0.3, "dense": 0.4, "buy_and_hold": 0.9,
            "oracle": 2.0, "class_prior": np.nan}
    shown = highlighted(result({(PORTFOLIO, s): v for s, v in port.items()} | {("a", "logistic"): 5.0}), cfg)
    assert shown == {"gated forecaster": "supsup_auto", "best baseline by Sharpe": "dense",
                     "buy and hold": "buy_and_hold", "oracle (knows the true model)": "oracle"}
    # no portfolio: the mean over markets; the configured gate mode not run: the first one run
    cfg = config_from_dict({**backtest_config_dict(), "gating": {"mode": "infer"}})
    rows = {("a", "supsup_hard"): 0.0, ("a", "logistic"): 1.0, ("b", "logistic"): -0.8, ("a", "dense"): 0.3,
            ("b", "dense"): 0.0}
    assert highlighted(result(rows), cfg) == {"gated forecaster": "supsup_hard", "best baseline by Sharpe": "dense"}


def test_rolling_sharpe_figure_draws_each_shown_strategy_in_the_portfolio_and_each_market(written) -> None:
    res = written.result
    fig = rolling_sharpe_figure(res, SHOWN, window=63)
    assert [ax.get_ylabel() for ax in fig.axes] == [PORTFOLIO, "syn"]
    for ax, market in zip(fig.axes, [PORTFOLIO, "syn"]):
        lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
        assert list(lines) == SHOWN
        src = res.portfolio if market == PORTFOLIO else res.daily[res.daily.market == market]
        ret = src[src.strategy == "supsup_auto"].set_index("date")["ret"]
        np.testing.assert_array_equal(lines["supsup_auto"].get_ydata(), rolling_sharpe(ret, 63).to_numpy())


def test_tearsheet_holds_the_title_tables_and_figures_of_the_backtest(written) -> None:
    res = written.result
    page = _Page((written.folder / TEARSHEET).read_text(encoding="utf-8"))
    assert page.title == "Backtest bt-small"
    assert list(page.sections) == ["strategies", "equity", "rolling-sharpe", "comparison", "per-regime", "calibration",
                                   "continual", "storage", "windows"]
    assert all(ref.startswith(("data:image/png;base64,", "#")) for ref in page.refs)  # offline: nothing to fetch
    images = [img for s in page.sections.values() for img in s["images"]]
    assert [len(page.sections[s]["images"]) for s in ("equity", "rolling-sharpe", "calibration")] == [2, 1, 1]
    assert len(images) == 4 and all(min(_png_size(img["src"])) > 100 for img in images)
    # the headline: the shown strategies with the portfolio's scores
    head = page.sections["strategies"]["tables"][0]
    assert [r[1] for r in head[2:]] == SHOWN
    port = res.table.xs(PORTFOLIO, level="market")
    assert head[2][2] == f"{port.loc['supsup_auto', 'sharpe']:.4f}"
    # the comparison: one table per panel, every strategy, best Sharpe first, with its numbers
    portfolio, syn = page.sections["comparison"]["tables"]
    for table, market in ((portfolio, PORTFOLIO), (syn, "syn")):
        want = res.table.xs(market, level="market").sort_values("sharpe", ascending=False)
        assert [r[0] for r in table[2:]] == list(want.index)
        assert [r[1] for r in table[2:]] == [f"{v:.4f}" for v in want["sharpe"]]
    # per regime: the shown strategies only, each regime with its days
    regimes = page.sections["per-regime"]["tables"][0][2:]
    want = res.per_regime[res.per_regime.index.get_level_values("strategy").isin(SHOWN)]
    assert len(regimes) == len(want)
    assert [r[-5] for r in regimes] == [str(d) for d in want["days"]]
    # calibration: each strategy's ECE, best first, and the reliability diagrams
    ece = calibration_ece(res.calibration).sort_values()
    assert page.sections["calibration"]["tables"][0][2:] == [[s, f"{v:.4f}"] for s, v in ece.items()]


@skip_without_browser
def test_tearsheet_renders_in_a_browser(written) -> None:
    with open_page((written.folder / TEARSHEET).as_uri()) as page:
        assert page.title() == "Backtest bt-small"
        assert page.locator("h1").inner_text() == "Backtest bt-small"
        assert page.locator("#comparison table").count() == 2
        assert page.locator("#comparison table tbody tr").count() == 2 * 5
        loaded, total = images_loaded(page)
        assert (loaded, total) == (4, 4)
