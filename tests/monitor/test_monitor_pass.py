"""As-of forecasts and backfill are causal and equal each other; a monitoring pass on a registered
small model scores the matured forecasts by hand's answer, logs one MLflow run, and adds nothing
when run again."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from supsup_fin.errors import DataError
from supsup_fin.live.forecast import backfill, champion, forecast_one
from supsup_fin.live.table import append_forecasts, read_forecasts
from supsup_fin.monitor.alerts import read_alerts
from supsup_fin.monitor.run import monitor_pass
from supsup_fin.monitor.scoring import read_scores
from supsup_fin.tracking import log_retrain, tracking_uri
from supsup_fin.workspace import Workspace

BACKFILL = 30


@pytest.fixture(scope="module")
def registered(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small model registered as champion v1 in a workspace of its own, and loaded back."""
    p, ws = small_pipeline, Workspace.resolve(tmp_path_factory.mktemp("monitor"))
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri exports the URI: drop an earlier test's
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                          forecaster=p["forecaster"])
        assert "champion" in run.aliases, run.decision.reason
        model, version = champion(p["cfg"], ws)
    return {"ws": ws, "cfg": p["cfg"], "model": model, "version": version, "p": p}


def test_backfill_equals_the_as_of_forecast_and_ignores_the_future(registered: dict) -> None:
    model, version, lp = registered["model"], registered["version"], registered["p"]["loaded"]["syn_a"]
    rows = backfill(model, version, lp, 4)
    dates = [str(d.date()) for d in lp.frame.index[-4:]]
    assert [r["as_of"] for r in rows] == dates
    day = dates[1]
    row = rows[1]
    assert row == forecast_one(model, version, lp, day)
    # prefix invariance: the prices after the day, changed or cut, change nothing
    cut = lp.frame.loc[:day]
    future = lp.frame.index > pd.Timestamp(day)
    shaken = lp.frame.assign(close=np.where(future, lp.frame["close"] * 1.7, lp.frame["close"]))
    for frame in (cut, shaken):
        other = dataclasses.replace(lp, frame=frame)
        assert forecast_one(model, version, other, day) == row
    assert forecast_one(model, version, dataclasses.replace(lp, frame=cut))["p_up"] == row["p_up"]
    assert row["class_edges"] == registered["p"]["forecaster"].markets["syn_a"].class_edges.tolist()
    assert row["data_as_of"] == day and row["stale_days"] == 0


def test_an_as_of_date_without_prices_names_the_nearest_earlier_one(registered: dict) -> None:
    model, version, lp = registered["model"], registered["version"], registered["p"]["loaded"]["syn_a"]
    saturday = lp.frame.index[-3] + pd.offsets.Day((5 - lp.frame.index[-3].weekday()) % 7)
    friday = lp.frame.index[lp.frame.index <= saturday][-1]
    with pytest.raises(DataError, match=rf"market 'syn_a' has no prices on {saturday.date()}; the nearest "
                                        rf"earlier trading date is {friday.date()}$"):
        forecast_one(model, version, lp, str(saturday.date()))
    with pytest.raises(DataError, match=r"prices start on 2000-01-03$"):
        forecast_one(model, version, lp, "1999-06-01")


def _confidently_wrong(rows: list[dict], version: int) -> list[dict]:
    """The rows as model ``version`` would have made them with 0.9 on ``down`` every day."""
    return [r | {"model_version": version, "p_down": 0.9, "p_flat": 0.05, "p_up": 0.05} for r in rows]


def test_a_pass_scores_what_matured_logs_one_run_and_a_second_adds_nothing(registered: dict) -> None:
    ws, cfg, version = registered["ws"], registered["cfg"], registered["version"]
    horizon, closes = cfg.features.horizon, {n: lp.frame["close"] for n, lp in registered["p"]["loaded"].items()}
    # a pruned version's forecasts that carry their class edges: scored without the version
    old = _confidently_wrong(backfill(registered["model"], version, registered["p"]["loaded"]["syn_b"], BACKFILL), 7)
    append_forecasts(ws, old)
    seen: list[list[dict]] = []
    first = monitor_pass(cfg, ws, backfill=BACKFILL, notify=seen.append)

    assert first["model_version"] == version and first["markets"] == ["syn_a", "syn_b"]
    assert first["backfilled"] == 2 * BACKFILL
    matured = BACKFILL - horizon  # the last `horizon` dates have no outcome yet
    assert (first["scored"], first["pending"]) == (3 * matured, 3 * horizon)
    scores = read_scores(ws)
    assert len(scores) == 3 * matured
    # one score by hand: the horizon's log return, its class by the version's edges, -log p of that class
    stored = read_forecasts(ws).set_index(["market", "as_of", "model_version"])
    s = scores[scores["model_version"] == version].iloc[0]
    c = closes[s["market"]]
    t = c.index.get_loc(pd.Timestamp(s["as_of"]))
    realised = np.log(c.iloc[t + horizon] / c.iloc[t])
    edges = registered["p"]["forecaster"].markets[s["market"]].class_edges
    cls = ["down", "flat", "up"][int(np.searchsorted(edges, realised, side="right"))]
    f = stored.loc[(s["market"], s["as_of"], version)]
    assert s["realised_class"] == cls and s["log_loss"] == pytest.approx(-np.log(f[f"p_{cls}"]), rel=1e-12)

    by = {(r["market"], r["model_version"]): r for r in first["summary"]}
    assert set(by) == {("syn_a", version), ("syn_b", version), ("syn_b", 7)} and by["syn_b", 7]["n"] == matured
    old_scores = scores[scores["model_version"] == 7]
    assert by["syn_b", 7]["log_loss"] == pytest.approx(
        -np.log(np.where(old_scores["realised_class"] == "down", 0.9, 0.05)).mean(), abs=1e-6)
    # the pruned version is worse than knowing nothing: an alert, new, not the champion's
    (alert,) = [a for a in first["alerts"] if a["model_version"] == 7]
    assert alert["kind"] == "worse_than_prior" and alert["market"] == "syn_b" and alert["value"] == by["syn_b", 7]["gap"]
    assert seen == [first["alerts"]] and all(a["model_version"] == version for a in first["alerts_open"])
    assert set(first["reliability"]) == {"syn_a", "syn_b"}
    assert sum(r["count"] for r in first["reliability"]["syn_a"]) == matured

    client = MlflowClient(tracking_uri(cfg.tracking, ws))
    (run,) = client.search_runs([first["experiment_id"]], "tags.`supsup_fin.kind` = 'monitor'")
    assert run.info.run_id == first["run_id"] and first["run_url"].endswith(f"/runs/{first['run_id']}")
    assert run.data.metrics["monitor/syn_b/v7/log_loss"] == pytest.approx(by["syn_b", 7]["log_loss"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "monitor/plots")}
    assert logged == {"monitor/plots/loss_gap_syn_a.png", "monitor/plots/loss_gap_syn_b.png"}
    json.dumps(first, allow_nan=False)  # the report is JSON as it is (no NaN, no numpy scalars)

    tables = {"forecasts": read_forecasts(ws), "scores": read_scores(ws), "alerts": read_alerts(ws)}
    again = monitor_pass(cfg, ws, backfill=BACKFILL, notify=seen.append)
    assert (again["backfilled"], again["scored"], again["pending"], again["alerts"]) == (0, 0, 3 * horizon, [])
    assert again["alerts_open"] == [a | {"new": False} for a in first["alerts_open"]]
    assert len(seen) == 1  # nothing new to tell
    pd.testing.assert_frame_equal(read_forecasts(ws), tables["forecasts"])
    pd.testing.assert_frame_equal(read_scores(ws), tables["scores"])
    pd.testing.assert_frame_equal(read_alerts(ws), tables["alerts"])
    assert len(client.search_runs([first["experiment_id"]], "tags.`supsup_fin.kind` = 'monitor'")) == 2
