"""One MLflow run per monitoring pass: the rolling scores of each market's model versions, their
tables and plots, and the alerts raised."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from pandas import DataFrame

from supsup_fin._figures import save_png
from supsup_fin.config import TrackingConfig
from supsup_fin.errors import DataError
from supsup_fin.tracking.backtests import _key
from supsup_fin.tracking.describe import MAX_DESCRIPTION, NOTE_TAG, _number
from supsup_fin.tracking.recovery import fail_abandoned_runs
from supsup_fin.tracking.store import connect, run_tags
from supsup_fin.workspace import Workspace

KIND_TAG = "supsup_fin.kind"

LOGGED = ("log_loss", "prior_log_loss", "gap", "hit_rate", "ece", "mean_position_return", "n")
"""Keys of a summary row logged as ``monitor/<market>/v<version>/<key>``."""


def log_monitor_run(
    tracking: TrackingConfig, ws: Workspace, summary: list[dict[str, Any]], tables: dict[str, DataFrame],
    figures: dict[str, Figure], alerts: list[dict[str, Any]], tags: dict[str, str] | None = None,
) -> str:
    """Record a monitoring pass as one run named ``monitor`` in the tracking config's experiment.

    Parameters
    ----------
    summary : list of dict
        :func:`~supsup_fin.monitor.scoring.rolling_summary`'s rows: their :data:`LOGGED` values
        become metrics ``monitor/<market>/v<version>/<key>`` (undefined ones are left out); the
        rows themselves ``monitor/summary.json``.
    tables : dict of str to DataFrame
        Logged as ``monitor/<name>.csv``.
    figures : dict of str to Figure
        Logged as ``monitor/plots/<name>.png``.
    alerts : list of dict
        Logged as ``monitor/alerts.json``; their count as the metric ``monitor/alerts``.
    tags : dict, optional
        Run tags besides ``supsup_fin.kind=monitor``, the code's and the process's.

    Returns
    -------
    str
        The run id. The run's description lists the scores and the alerts.
    """
    for name in [*tables, *figures]:
        if not name or Path(name).name != name:
            raise DataError(f"log_monitor_run: expected plain file names for tables and figures, got {name!r}")
    client = connect(tracking, ws)
    fail_abandoned_runs(client, mlflow.get_experiment_by_name(tracking.experiment).experiment_id)
    metrics = {_key("monitor", s["market"], f"v{s['model_version']}", k): float(s[k])
               for s in summary for k in LOGGED if s.get(k) is not None}
    with mlflow.start_run(run_name="monitor") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({KIND_TAG: "monitor", "supsup_fin.flow": "monitor", **run_tags(), **(tags or {}),
                         NOTE_TAG: monitor_description(summary, alerts)})
        mlflow.log_metrics(metrics | {"monitor/alerts": float(len(alerts))})
        root = Path(tmp)
        (root / "plots").mkdir()
        for name, frame in tables.items():
            frame.to_csv(root / f"{name.removesuffix('.csv')}.csv", index=False)
        for name, fig in figures.items():
            save_png(fig, root / "plots" / f"{name.removesuffix('.png')}.png")
        (root / "alerts.json").write_text(json.dumps(alerts, indent=1, default=str))
        (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        mlflow.log_artifacts(tmp, artifact_path="monitor")
    return run.info.run_id


def monitor_description(summary: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> str:
    """Markdown for a monitoring run: the alerts first, then per market and version the rolling scores."""
    head = f"**{len(alerts)} alert(s)**:" if alerts else "No alerts."
    parts = [head + "".join(f"\n- {a['message']}" for a in alerts)]
    if summary:
        lines = ["| market | version | matured | as_of | log-loss | class prior | gap | hit rate | ECE | "
                 "position return (sum) |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['market']} | v{s['model_version']} | {s['n']} | {s['first']} .. {s['last']} | "
                  f"{_number(s['log_loss'])} | {_number(s['prior_log_loss'])} | {_number(s['gap'])} | "
                  f"{_number(s['hit_rate'])} | {_number(s['ece'])} | {_number(s['total_position_return'])} |"
                  for s in summary]
        parts.append("Rolling scores of the matured forecasts (gap: log-loss minus the class prior's; "
                     "below 0 beats knowing nothing):\n\n" + "\n".join(lines))
    else:
        parts.append("No matured forecasts scored yet.")
    return "\n\n".join(parts)[:MAX_DESCRIPTION]
