"""Scoring matured forecasts: hand-made prices whose every realised return and class is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from supsup_fin.config import MonitorConfig
from supsup_fin.errors import DataError
from supsup_fin.monitor.plots import loss_gap_figure, reliability_figure
from supsup_fin.monitor.scoring import (
    append_scores,
    ece,
    read_scores,
    reliability_table,
    rolling_summary,
    score_rows,
    scores_path,
    worse_than_prior,
)
from supsup_fin.workspace import Workspace

EDGES = [-0.05, 0.05]
DATES = pd.bdate_range("2024-01-01", periods=8, name="date")  # Mon 1 Jan .. Wed 10 Jan
# one-row log returns: up (+ln 1.1), down (ln 0.9), flat (0), up (+ln 1.1), then flat
PRICES = {"m": pd.DataFrame({"close": [100.0, 110.0, 99.0, 99.0, 108.9, 108.9, 108.9, 108.9]}, index=DATES)}
PRIOR = (0.3, 0.3, 0.4)  # argmax: up


def _row(as_of: str, p: tuple[float, float, float], position: float, *, market: str = "m", version: int = 1,
         horizon: int = 1, edges: list[float] | None = EDGES) -> dict:
    row = {"market": market, "as_of": as_of, "model_version": version, "horizon": horizon,
           "target_date": str((pd.Timestamp(as_of) + pd.offsets.BDay(horizon)).date()), "position": position,
           **{f"p_{c}": v for c, v in zip(("down", "flat", "up"), p)},
           **{f"prior_{c}": v for c, v in zip(("down", "flat", "up"), PRIOR)}}
    return row | ({"class_edges": json.dumps(edges)} if edges is not None else {})


MATURED = [  # as_of, p, position -> realised class, hit, confidence, position return
    _row("2024-01-01", (0.2, 0.3, 0.5), 1.0),    # up:   hit,  0.5,  +0.10
    _row("2024-01-02", (0.6, 0.3, 0.1), -0.5),   # down: hit,  0.6,  -0.5 * -0.10 = +0.05
    _row("2024-01-03", (0.1, 0.2, 0.7), 1.0),    # flat: miss, 0.7,  0
    _row("2024-01-04", (0.4, 0.35, 0.25), 0.0, edges=None),  # up (edges from the callable): miss, 0.4, 0
]
LOSSES = [-math.log(0.5), -math.log(0.6), -math.log(0.2), -math.log(0.25)]
PRIOR_LOSSES = [-math.log(0.4), -math.log(0.3), -math.log(0.3), -math.log(0.4)]


def _forecasts() -> pd.DataFrame:
    others = [
        _row("2024-01-10", (0.3, 0.3, 0.4), 1.0),             # last date: the next close is not there yet
        _row("2024-01-08", (0.3, 0.3, 0.4), 1.0, horizon=3),  # 2 rows after it, 3 needed
        _row("2024-01-05", (0.3, 0.3, 0.4), 1.0, version=2, edges=None),  # no edges anywhere
        _row("2024-01-06", (0.3, 0.3, 0.4), 1.0),             # a Saturday
        _row("2024-01-02", (0.3, 0.3, 0.4), 1.0, market="x"),  # no prices
    ]
    return pd.DataFrame(MATURED + others)


def _edges(calls: list) -> object:
    def edges(market: str, version: int) -> np.ndarray | None:
        calls.append((market, version))
        return np.array(EDGES) if version == 1 else None
    return edges


@pytest.fixture
def scored() -> pd.DataFrame:
    return score_rows(_forecasts(), PRICES, _edges([]))


def test_known_scores(scored: pd.DataFrame) -> None:
    assert scored["as_of"].tolist() == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    assert scored["realised_class"].tolist() == ["up", "down", "flat", "up"]
    assert scored["predicted_class"].tolist() == ["up", "down", "up", "down"]
    np.testing.assert_allclose(scored["realised_return"], [math.log(1.1), math.log(0.9), 0.0, math.log(1.1)])
    np.testing.assert_allclose(scored["p_realised"], [0.5, 0.6, 0.2, 0.25])
    np.testing.assert_allclose(scored["log_loss"], LOSSES)
    np.testing.assert_allclose(scored["prior_log_loss"], PRIOR_LOSSES)
    assert scored["hit"].tolist() == [True, True, False, False]
    assert scored["prior_hit"].tolist() == [True, False, False, True]
    np.testing.assert_allclose(scored["confidence"], [0.5, 0.6, 0.7, 0.4])
    np.testing.assert_allclose(scored["position_return"], [0.1, 0.05, 0.0, 0.0], atol=1e-12)
    assert scored["target_date"].tolist() == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert (scored["n_classes"] == 3).all() and (scored["model_version"] == 1).all()
    assert str(scored["scored_at"].dt.tz) == "UTC"


def test_pending_and_skipped_rows_are_counted_not_scored(scored: pd.DataFrame) -> None:
    assert scored.attrs["counts"] == {"matured": 4, "pending": 2,
                                      "skipped": {"no_prices": 1, "not_a_trading_date": 1, "no_edges": 1}}
    assert "2024-01-10" not in set(scored["as_of"]) and "2024-01-08" not in set(scored["as_of"])


def test_edges_asked_once_per_version_only_for_rows_without_them() -> None:
    calls: list = []
    rows = pd.DataFrame([MATURED[3], MATURED[3] | {"as_of": "2024-01-03"}, MATURED[0]])
    out = score_rows(rows, PRICES, _edges(calls))
    assert calls == [("m", 1)] and len(out) == 3


def test_two_classes_and_clipped_log_loss() -> None:
    row = _row("2024-01-02", (0.0, 0.0, 1.0), 1.0, edges=[0.0])  # realised down; p_down = 0 -> floor 1e-12
    row |= {"p_down": 0.0, "p_up": 1.0, "prior_down": 0.5, "prior_up": 0.5}
    out = score_rows(pd.DataFrame([row]).drop(columns=["p_flat", "prior_flat"]), PRICES, _edges([]))
    assert out["n_classes"].tolist() == [2] and out["realised_class"].tolist() == ["down"]
    np.testing.assert_allclose(out["log_loss"], [-math.log(1e-12)])
    np.testing.assert_allclose(out["prior_log_loss"], [math.log(2)])


def test_probabilities_that_do_not_match_the_edges_are_refused() -> None:
    row = _row("2024-01-02", (0.3, 0.3, 0.4), 1.0, edges=[0.0, 0.01, 0.02])
    with pytest.raises(DataError, match=r"forecast of 'm' at 2024-01-02 by v1: expected 1 or 2 class edges"):
        score_rows(pd.DataFrame([row]), PRICES, _edges([]))
    with pytest.raises(DataError, match="a forecast of 'm' has as_of 'soon', expected YYYY-MM-DD"):
        score_rows(pd.DataFrame([row | {"as_of": "soon"}]), PRICES, _edges([]))
    with pytest.raises(DataError, match="lacks columns \\['position'\\]"):
        score_rows(pd.DataFrame([row]).drop(columns="position"), PRICES, _edges([]))


def test_reliability_and_ece(scored: pd.DataFrame) -> None:
    # bins on [1/3, 1]: [1/3, 2/3) holds 0.5, 0.6 (hits) and 0.4 (miss); [2/3, 1] holds 0.7 (miss)
    t = reliability_table(scored, 2)
    assert t["count"].tolist() == [3, 1] and t["bin"].tolist() == [0, 1]
    np.testing.assert_allclose(t["conf_lo"], [1 / 3, 2 / 3])
    np.testing.assert_allclose(t["confidence"], [0.5, 0.7])
    np.testing.assert_allclose(t["accuracy"], [2 / 3, 0.0])
    assert ece(scored, 2) == pytest.approx(3 / 4 * (2 / 3 - 0.5) + 1 / 4 * 0.7)
    assert reliability_table(scored, 4)["count"].tolist() == [1, 2, 1, 0]
    assert math.isnan(ece(scored.iloc[:0], 2))


def test_rolling_summary(scored: pd.DataFrame) -> None:
    [s] = rolling_summary(scored, window=10, bins=2)
    gap = np.mean(LOSSES) - np.mean(PRIOR_LOSSES)
    assert s == {
        "market": "m", "model_version": 1, "n": 4, "first": "2024-01-01", "last": "2024-01-04",
        "log_loss": round(np.mean(LOSSES), 6), "prior_log_loss": round(np.mean(PRIOR_LOSSES), 6),
        "gap": round(gap, 6), "hit_rate": 0.5, "prior_hit_rate": 0.5, "ece": 0.3,
        "mean_position_return": 0.0375, "total_position_return": 0.15, "worse_than_prior": gap > 0,
    }
    assert gap < 0  # these forecasts beat the prior
    [last3] = rolling_summary(scored.iloc[::-1], window=3, bins=2)  # the last 3 by as_of, whatever the order
    assert (last3["n"], last3["first"], last3["hit_rate"]) == (3, "2024-01-02", round(1 / 3, 6))
    assert last3["gap"] == round(np.mean(LOSSES[1:]) - np.mean(PRIOR_LOSSES[1:]), 6)


def test_worse_than_prior_fires_only_past_both_thresholds(scored: pd.DataFrame) -> None:
    base = {"market": "m", "model_version": 3, "first": "2024-01-01", "last": "2024-02-01",
            "log_loss": 1.11, "prior_log_loss": 1.1}
    cfg = MonitorConfig(min_matured=20, loss_margin=0.005)
    [alert] = worse_than_prior([base | {"n": 20, "gap": 0.01}], cfg)
    assert alert == {"kind": "worse_than_prior", "market": "m", "model_version": 3, "as_of": "2024-02-01",
                     "value": 0.01, "threshold": 0.005, "message": alert["message"]}
    assert all(w in alert["message"] for w in ("m v3", "20 matured", "1.1100", "1.1000"))
    assert worse_than_prior([base | {"n": 19, "gap": 0.01}], cfg) == []       # too few matured
    assert worse_than_prior([base | {"n": 20, "gap": 0.005}], cfg) == []      # not beyond the margin
    assert worse_than_prior([base | {"n": 20, "gap": -0.1}], cfg) == []
    # from scores: the same forecasts with a log-loss one nat worse lose to the prior
    wrong = scored.assign(log_loss=scored["log_loss"] + 1.0)
    summary = rolling_summary(wrong, window=10, bins=2)
    assert summary[0]["worse_than_prior"]
    assert len(worse_than_prior(summary, MonitorConfig(min_matured=4))) == 1
    assert worse_than_prior(summary, MonitorConfig(min_matured=5)) == []


def test_append_is_idempotent(tmp_path, scored: pd.DataFrame) -> None:
    ws = Workspace(tmp_path)
    assert read_scores(ws).empty and "log_loss" in read_scores(ws).columns
    assert len(append_scores(ws, scored.iloc[:2])) == 2
    added = append_scores(ws, scored)
    assert added["as_of"].tolist() == ["2024-01-03", "2024-01-04"]
    before = scores_path(ws).read_bytes()
    again = score_rows(_forecasts(), PRICES, _edges([]))  # scored anew: a later scored_at
    assert append_scores(ws, again).empty and append_scores(ws, scored).empty
    assert scores_path(ws).read_bytes() == before
    table = read_scores(ws)
    pd.testing.assert_frame_equal(table.drop(columns="scored_at"), scored.drop(columns="scored_at"),
                                  check_dtype=False)
    assert rolling_summary(table, 10, 2) == rolling_summary(scored, 10, 2)


def test_loss_gap_figure(scored: pd.DataFrame) -> None:
    two = pd.concat([scored, scored.iloc[:2].assign(model_version=2)], ignore_index=True)
    fig = loss_gap_figure(two, "m", window=2)
    v1, v2, zero = fig.axes[0].get_lines()
    gaps = np.array(LOSSES) - np.array(PRIOR_LOSSES)
    np.testing.assert_allclose(v1.get_ydata(), [gaps[0], gaps[:2].mean(), gaps[1:3].mean(), gaps[2:].mean()])
    np.testing.assert_allclose(v2.get_ydata(), [gaps[0], gaps[:2].mean()])
    assert (v1.get_label(), v2.get_label()) == ("v1", "v2") and list(zero.get_ydata()) == [0.0, 0.0]
    with pytest.raises(DataError, match="no scored forecasts of market 'y'; the scores hold \\['m'\\]"):
        loss_gap_figure(scored, "y", window=2)
    assert "ECE 0.300" in reliability_figure(scored, 2).axes[0].get_title()
