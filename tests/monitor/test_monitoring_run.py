"""A monitoring pass recorded as one MLflow run: its metrics by path, tables, plots, alerts and description."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from supsup_fin.config import MonitorConfig, TrackingConfig
from supsup_fin.errors import DataError
from supsup_fin.monitor.plots import loss_gap_figure
from supsup_fin.monitor.scoring import reliability_table, rolling_summary, worse_than_prior
from supsup_fin.tracking.describe import NOTE_TAG
from supsup_fin.tracking.monitoring import log_monitor_run
from supsup_fin.tracking.store import tracking_uri
from supsup_fin.workspace import Workspace


def _scores() -> pd.DataFrame:
    """Market a: v1 beats the prior (gap -0.2, no positions), v2 loses to it (gap +0.3); market b: one forecast."""
    rows = [("a", 1, f"2024-01-{d:02d}", 0.8, 1.0, d % 2 == 0, None) for d in range(1, 6)]
    rows += [("a", 2, f"2024-01-{d:02d}", 1.4, 1.1, False, 0.01) for d in range(1, 5)]
    rows += [("b", 1, "2024-01-03", 0.5, 0.7, True, -0.02)]
    frame = pd.DataFrame(rows, columns=["market", "model_version", "as_of", "log_loss", "prior_log_loss", "hit",
                                        "position_return"])
    return frame.assign(prior_hit=False, confidence=0.5, n_classes=3)


def test_the_run_carries_metrics_tables_plots_and_alerts(tmp_path: Path) -> None:
    ws, tracking = Workspace(tmp_path / "ws"), TrackingConfig(experiment="monitoring")
    scores = _scores()
    summary = rolling_summary(scores, window=10, bins=4)
    alerts = worse_than_prior(summary, MonitorConfig(min_matured=2))
    assert [(a["market"], a["model_version"]) for a in alerts] == [("a", 2)]
    run_id = log_monitor_run(tracking, ws, summary, {"summary": pd.DataFrame(summary),
                                                     "reliability": reliability_table(scores, 4)},
                             {"loss_gap_a": loss_gap_figure(scores, "a", 3)}, alerts, tags={"trigger": "test"})

    client = MlflowClient(tracking_uri(tracking, ws))
    run = client.get_run(run_id)
    assert run.info.run_name == "monitor" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "monitoring"
    m = run.data.metrics
    assert m["monitor/a/v1/log_loss"] == pytest.approx(0.8) and m["monitor/a/v1/gap"] == pytest.approx(-0.2)
    assert m["monitor/a/v2/gap"] == pytest.approx(0.3) and m["monitor/a/v2/n"] == 4
    assert m["monitor/a/v1/hit_rate"] == pytest.approx(0.4) and m["monitor/b/v1/ece"] == pytest.approx(0.5)
    assert m["monitor/a/v2/mean_position_return"] == pytest.approx(0.01)
    assert "monitor/a/v1/mean_position_return" not in m  # no positions: nothing logged
    assert m["monitor/alerts"] == 1
    tags = run.data.tags
    assert tags["supsup_fin.kind"] == "monitor" and tags["trigger"] == "test" and "code.sha256" in tags
    assert alerts[0]["message"] in tags[NOTE_TAG] and "| a | v2 | 4 | 2024-01-01 .. 2024-01-04 |" in tags[NOTE_TAG]

    files = {f.path for f in client.list_artifacts(run_id, "monitor")}
    assert files == {"monitor/summary.csv", "monitor/reliability.csv", "monitor/alerts.json", "monitor/summary.json",
                     "monitor/plots"}
    assert [f.path for f in client.list_artifacts(run_id, "monitor/plots")] == ["monitor/plots/loss_gap_a.png"]
    local = Path(client.download_artifacts(run_id, "monitor", str(tmp_path / "down")))
    assert json.loads((local / "alerts.json").read_text()) == alerts
    assert pd.read_csv(local / "summary.csv")["gap"].tolist() == [-0.2, 0.3, -0.2]
    assert (local / "plots" / "loss_gap_a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_table_name_with_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected plain file names for tables and figures, got '../x'"):
        log_monitor_run(TrackingConfig(), Workspace(tmp_path), [], {"../x": pd.DataFrame()}, {}, [])
