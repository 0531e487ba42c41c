"""Processes that die or overlap.

Killed runs: ``retrain`` and ``forecast --store`` SIGKILLed at points spread over their stages,
registration included. After every kill the champion is a complete, loadable version, no
registered version lacks its files, nothing half-written is left, ``forecast`` answers, and the
next retrain succeeds (closing what the killed one left).

Kill points: at fractions of a full retrain's measured wall time (every stage, start-up included),
and on the output lines a retrain prints while it logs and registers the model.

Concurrency: two retrains started at once on one workspace (one waits for the other's lock; both
find the champion made from the same inputs and register nothing; a healthy store, no sqlite
traceback), and two ``forecast --store`` at once (no row lost).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import small_config_dict
from mlflow.tracking import MlflowClient

from supsup_fin._atomic import stale_temporaries
from supsup_fin.config import load_config
from supsup_fin.forecaster.persist import check_manifest
from supsup_fin.live.forecast import forecast_markets
from supsup_fin.live.table import read_forecasts, table_path
from supsup_fin.tracking import tracking_uri
from supsup_fin.tracking.recovery import decided
from supsup_fin.tracking.registry import MANIFEST_TAG, champion_version
from supsup_fin.tracking.versions import logged_model_id
from supsup_fin.workspace import Workspace

REGISTRATION_LINES = ("Validating input example", "Creating a new version", "Created version")
"""Lines a retrain prints while it logs the model (1), registers it (2) and has registered it (3)."""


@dataclass
class Probe:
    """A workspace with a champion, and the command lines that run on it."""

    config: Path
    home: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "supsup_fin.cli", *args, "--config", str(self.config), "--home", str(self.home)]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=600)

    @property
    def workspace(self) -> Workspace:
        return Workspace.resolve(self.home)

    def client(self) -> tuple[MlflowClient, str]:
        cfg = load_config(self.config)
        uri = tracking_uri(cfg.tracking, self.workspace)
        return MlflowClient(uri, registry_uri=uri), cfg.tracking.model_name


def kill_after(argv: list[str], *, seconds: float | None = None, line: str | None = None) -> str:
    """Start ``argv`` in its own process group and SIGKILL the group ``seconds`` after the start or
    when a stderr line contains ``line``. Returns how it ended ("killed at ..." or "finished")."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    start, buf = time.monotonic(), b""
    deadline = start + (seconds if seconds is not None else 600)
    try:
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                return f"killed at {time.monotonic() - start:.1f} s"
            ready, _, _ = select.select([proc.stderr], [], [], min(left, 0.05))
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536)
                buf += chunk
                if line is not None and line.encode() in buf:
                    os.killpg(proc.pid, signal.SIGKILL)
                    return f"killed on {line!r} at {time.monotonic() - start:.1f} s"
        return "finished"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def leftovers(root: Path) -> list[str]:
    """Half-written files or directories in the workspace (temporary or aside copies)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith(".tmp") or ".old-" in p.name)


def unswept(root: Path) -> list[str]:
    """Leftovers that are not a dead writer's temporary (which the next write removes)."""
    stale = {str(t.relative_to(root)) for p in root.rglob("*") if not p.name.startswith(".")
             for t in stale_temporaries(p)}
    return [p for p in leftovers(root) if p not in stale]


def check_after_kill(probe: Probe, what: str) -> dict:
    """Everything that must hold after a kill; returns the figures of this kill."""
    client, name = probe.client()
    champ = champion_version(client, name)
    assert champ is not None, what
    versions = client.search_model_versions(f"name = '{name}'")
    by_version = {int(v.version): client.get_model_version(name, v.version) for v in versions}
    champ_tags = by_version[champ].tags
    assert decided(champ_tags) and champ_tags["promotion.promoted"] == "True", (what, champ_tags)
    for v, mv in by_version.items():  # every registered version still has its files, intact
        if mv.tags.get("pruned") == "true":
            continue
        loc = client.get_logged_model(logged_model_id(mv)).artifact_location.removeprefix("file://")
        assert check_manifest(Path(loc) / "artifacts" / "forecaster", mv.tags.get(MANIFEST_TAG)), (what, v)
    assert unswept(probe.home) == [], what  # a kill mid-write leaves at most a dead writer's temporary
    table = read_forecasts(probe.workspace)  # readable, and one row per key
    assert not table.duplicated(["as_of", "market", "model_version"]).any(), what
    rows = forecast_markets(load_config(probe.config), probe.workspace)
    assert len(rows) == 2 and all(pd.notna(r["position"]) for r in rows), what
    undecided = [v for v, mv in by_version.items() if not decided(mv.tags)]
    return {"kill": what, "champion": champ, "versions": len(by_version), "undecided_after_kill": undecided,
            "forecast_rows_stored": len(table), "dead_writer_temporaries": len(leftovers(probe.home))}


@pytest.fixture
def probe(tmp_path: Path) -> Probe:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_config_dict()))
    p = Probe(config, tmp_path / "home")
    first = p.run("retrain", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["promotion"]["promoted"]
    return p


def next_retrain_succeeds(probe: Probe, *args: str) -> dict:
    done = probe.run("retrain", "--json", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow  # ~80 s; the default suite covers the same state in process (test_registry_faults)
def test_kill_right_after_created_version(probe: Probe) -> None:
    # forced: v1 has the same inputs; verbose: MLflow's "Created version" line is shown with --verbose only
    how = kill_after(probe.argv("retrain", "--force", "--verbose"), line="Created version")
    assert how.startswith("killed on"), how
    figures = check_after_kill(probe, how)
    assert figures["undecided_after_kill"] == [2]  # the kill left v2 without a decision...
    promote = probe.run("promote", "--version", "2")
    assert promote.returncode != 0 and "incomplete" in promote.stderr  # ...which is never promotable
    summary = next_retrain_succeeds(probe, "--force")  # through the champion gate, though v1 has the same inputs
    assert "v2" in summary["recovered"] and "marked incomplete" in summary["recovered"]
    assert "marked FAILED" in summary["recovered"]  # the killed MLflow run
    assert "marked Crashed" in summary["recovered"]  # the killed Prefect flow run
    assert summary["promotion"]["champion_version"] == 1  # the gate compared with v1, not "no champion"
    client, name = probe.client()
    assert champion_version(client, name) in (1, summary["registered_model"]["version"])


@pytest.mark.slow
def test_twenty_kills_over_every_stage(probe: Probe) -> None:
    """15 retrain kills at evenly spread times, 3 on logging / registration lines, 2 of forecast --store
    (at 60 % and 90 % of its measured time: around the table write). The retrains are forced: the
    champion has the same inputs, and an unforced retrain would register nothing."""
    start = time.monotonic()
    next_retrain_succeeds(probe, "--force")
    full = time.monotonic() - start
    start = time.monotonic()
    assert probe.run("forecast", "--store").returncode == 0
    store = time.monotonic() - start
    points = [("retrain", {"seconds": 0.9 * full * (i + 0.5) / 15}) for i in range(15)]
    points += [("retrain-verbose", {"line": ln}) for ln in REGISTRATION_LINES]  # MLflow's lines: --verbose
    points += [("forecast", {"seconds": store * f}) for f in (0.6, 0.9)]
    figures = []
    for command, when in points:
        args = {"forecast": ("forecast", "--store"), "retrain": ("retrain", "--force"),
                "retrain-verbose": ("retrain", "--force", "--verbose")}[command]
        if command == "forecast":  # stored keys are skipped: start from no table, so the kill meets a write
            table_path(probe.workspace).unlink(missing_ok=True)
        how = kill_after(probe.argv(*args), **when)
        figures.append({"command": " ".join(args), **check_after_kill(probe, f"{' '.join(args)}: {how}")})
    summary = next_retrain_succeeds(probe)
    stored = probe.run("forecast", "--store", "--json")
    assert stored.returncode == 0, stored.stderr[-2000:]
    assert leftovers(probe.home) == []  # the next writes swept every dead writer's temporary
    figures.append({"final_retrain": summary["registered_model"], "recovered": summary["recovered"]})
    out = Path(os.environ.get("SUPSUP_RELIABILITY_OUT", probe.home.parent)) / "killed_runs.json"
    out.write_text(json.dumps({"full_retrain_s": round(full, 1), "forecast_store_s": round(store, 1), "kills": figures},
                              indent=1, default=str))
    print(json.dumps(figures, indent=1, default=str))
    client, name = probe.client()
    assert all("promotion.promoted" in client.get_model_version(name, v.version).tags
               for v in client.search_model_versions(f"name = '{name}'"))  # decided, or closed as incomplete
    assert sum(f.get("kill", "").endswith("finished") for f in figures) <= 2  # a run faster than the one timed


def started(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # ~65 s; the default suite checks the lock itself (tests/test_workspace.py)
def test_two_retrains_at_once_one_waits(probe: Probe) -> None:
    procs = [started(probe.argv("retrain", "--json")) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-2000:]
        assert "database is locked" not in stderr and "Traceback" not in stderr
    said = [" ".join(stderr.split()) for _, stderr in outs]  # log lines wrap on the terminal
    waited = [s for s in said if "waiting up to" in s and "retrain lock" in s]
    assert len(waited) == 1  # the second said it waits, naming the holder
    assert "pid" in waited[0]
    # the same data, config and code as champion v1: both record a run and register nothing
    registered = [json.loads(stdout)["registered_model"] for stdout, _ in outs]
    assert [(r["version"], r["unchanged_since"]) for r in registered] == [(1, 1), (1, 1)]
    client, name = probe.client()
    assert [int(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [1]
    assert champion_version(client, name) == 1 and decided(client.get_model_version(name, "1").tags)
    runs = client.search_runs([client.get_experiment_by_name(load_config(probe.config).tracking.experiment).experiment_id],
                              "tags.`supsup_fin.flow` = 'retrain'")
    assert sorted(r.data.tags.get("unchanged_since", "-") for r in runs) == ["-", "1", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert leftovers(probe.home) == []


@pytest.mark.slow  # ~45 s; the default suite has the table's own concurrent-writer test (test_deploy)
def test_two_forecast_stores_at_once_lose_no_row(probe: Probe) -> None:
    procs = [started(probe.argv("forecast", "--store", "--json", "--market", m)) for m in ("syn_a", "syn_b")]
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-2000:]
    table = read_forecasts(probe.workspace)
    assert sorted(table["market"]) == ["syn_a", "syn_b"]
    again = [started(probe.argv("forecast", "--store", "--json")) for _ in range(2)]
    for p in again:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-2000:]
    assert len(read_forecasts(probe.workspace)) == 2  # the same keys again: nothing duplicated
