"""``supsup-fin monitor``: the rolling scores, alerts and run link; ``--fail-on-alert`` exits 3 while
a check fires and 0 otherwise; no champion is one line. ``forecast --as-of`` prints the backfill's
forecast of that day."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import small_config_dict
from typer.testing import CliRunner

from supsup_fin.cli import app
from supsup_fin.cli.monitor import ALERT_EXIT
from supsup_fin.config import config_from_dict
from supsup_fin.live.forecast import backfill, champion
from supsup_fin.live.table import append_forecasts
from supsup_fin.tracking import log_retrain
from supsup_fin.workspace import Workspace

runner = CliRunner()
DAYS = 30
HORIZON = config_from_dict(small_config_dict()).features.horizon


def _register(p: dict, root: Path) -> dict:
    """The small model registered as champion in workspace ``root``, with the champion's last
    ``DAYS`` forecasts of syn_a stored as if it had put 0.9 on a wrong class every day."""
    ws = Workspace.resolve(root)
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri exports the URI: drop an earlier test's
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                    forecaster=p["forecaster"])
        model, version = champion(p["cfg"], ws)
    rows = backfill(model, version, p["loaded"]["syn_a"], DAYS)
    append_forecasts(ws, [r | _wrong(p, r) for r in rows])
    return {"ws": ws, "rows": rows, "version": version}


def _wrong(p: dict, row: dict) -> dict:
    """Probabilities 0.9 on a class the market did not take over the horizon, 0.05 on the others."""
    close = p["loaded"][row["market"]].frame["close"]
    t = close.index.get_loc(pd.Timestamp(row["as_of"]))
    if t + HORIZON >= len(close):
        return {}
    realised = np.log(close.iloc[t + HORIZON] / close.iloc[t])
    taken = int(np.searchsorted(p["forecaster"].markets[row["market"]].class_edges, realised, side="right"))
    return {f"p_{c}": 0.9 if k == (taken + 1) % 3 else 0.05 for k, c in enumerate(["down", "flat", "up"])}


@pytest.fixture(scope="module")
def registered(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _register(small_pipeline, tmp_path_factory.mktemp("monitor-cli"))


def _config(tmp_path: Path, **monitor: float) -> str:
    path = tmp_path / f"small-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(small_config_dict(monitor=monitor)))
    return str(path)


@pytest.fixture
def without_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's flow replaced by the pass it wraps (the flow itself: the slow test below)."""
    import pipelines.monitor
    from supsup_fin.monitor.run import monitor_pass

    monkeypatch.setattr(pipelines.monitor, "run_monitor",
                        lambda cfg, home, backfill: monitor_pass(cfg, Workspace.resolve(home), backfill))


def test_fail_on_alert_exits_3_while_a_check_fires_and_0_otherwise(registered: dict, tmp_path: Path,
                                                                  without_prefect: None) -> None:
    home = str(registered["ws"].root)
    quiet = runner.invoke(app, ["monitor", "-c", _config(tmp_path, loss_margin=3.0), "--home", home, "--fail-on-alert"])
    assert quiet.exit_code == 0, quiet.output
    matured = DAYS - HORIZON
    assert f"{matured} scored now, {HORIZON} waiting for their horizon" in quiet.stdout
    assert "alerts: none" in quiet.stdout and "MLflow run: http://" in quiet.stdout
    row = next(ln for ln in quiet.stdout.splitlines() if ln.startswith("│ syn_a"))  # the scores table's
    cells = [c.strip() for c in row.split("│")]
    assert cells[2:5] == ["v1", str(matured), f"{-np.log(0.05):.4f}"]  # log loss: every day wrong at p = 0.05

    strict = _config(tmp_path, loss_margin=0.0)
    raised = runner.invoke(app, ["monitor", "-c", strict, "--home", home, "--fail-on-alert"])
    assert raised.exit_code == ALERT_EXIT == 3, raised.output
    assert "alerts: 1" in raised.stdout and "new  worse_than_prior: syn_a v1: mean log-loss" in raised.stdout
    again = runner.invoke(app, ["monitor", "-c", strict, "--home", home, "--fail-on-alert", "--json"])
    assert again.exit_code == 3, again.output
    rep = json.loads(again.stdout)
    assert rep["alerts"] == [] and [(a["market"], a["new"]) for a in rep["alerts_open"]] == [("syn_a", False)]
    assert runner.invoke(app, ["monitor", "-c", strict, "--home", home]).exit_code == 0  # reported, not failed


def test_monitor_without_a_champion_says_to_retrain_first(registered: dict, tmp_path: Path,
                                                          without_prefect: None) -> None:
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(small_config_dict(tracking={"model_name": "other-model"})))
    result = runner.invoke(app, ["monitor", "-c", str(config), "--home", str(registered["ws"].root)])
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert line == "error: registered model 'other-model' has no 'champion' alias; run `supsup-fin retrain` first"


def test_forecast_as_of_prints_the_backfilled_forecast_of_that_day(registered: dict, tmp_path: Path) -> None:
    home, day = str(registered["ws"].root), registered["rows"][-7]
    result = runner.invoke(app, ["forecast", "-c", _config(tmp_path), "--home", home, "-m", "syn_a",
                                 "--as-of", day["as_of"], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [day | {"novel_regime": ""}]  # a forecast also says whether the regime is novel
    missing = runner.invoke(app, ["forecast", "-c", _config(tmp_path), "--home", home, "--as-of", "2018-12-29"])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == ("error: market 'syn_a' has no prices on 2018-12-29; the nearest earlier "
                                      "trading date is 2018-12-28")


@pytest.mark.slow  # a temporary Prefect server, a registration and two flow runs
def test_the_monitor_command_and_the_forecast_flow_run_the_pass_under_prefect(harness, small_pipeline: dict,
                                                                             tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pipelines.forecast import run_forecast
    from pipelines.monitor import ARTIFACT_KEY
    from supsup_fin.config import load_config

    reg, config = _register(small_pipeline, tmp_path / "ws"), _config(tmp_path, loss_margin=0.0)
    result = runner.invoke(app, ["monitor", "-c", config, "--home", str(reg["ws"].root), "--backfill", "8", "--json",
                                 "--fail-on-alert"])
    assert result.exit_code == 3, result.output
    rep = json.loads(result.stdout)
    assert rep["backfilled"] == 8  # syn_b's last 8 days; syn_a's are stored already
    assert [(a["market"], a["kind"]) for a in rep["alerts"]] == [("syn_a", "worse_than_prior")]
    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    assert json.loads(art.data) == rep["alerts"]

    out = run_forecast(load_config(config), reg["ws"].root)  # the scheduled deployment's flow
    assert out["added"] == 0 and out["monitor"]["model_version"] == reg["version"]
    assert out["monitor"]["alerts"] == [] and [a["market"] for a in out["monitor"]["alerts_open"]] == ["syn_a"]
    assert out["monitor"]["run_id"] != rep["run_id"]
