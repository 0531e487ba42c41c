"""The command line: help, JSON output, one-line errors, and the offline demo end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_config_dict
from supsup_fin.cli import app

runner = CliRunner()
COMMANDS = ["demo", "retrain", "forecast", "masks", "backtest"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_json(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output


def _error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_config_is_one_line_and_nonzero(tmp_path: Path) -> None:
    result = runner.invoke(app, ["retrain", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "does not exist" in _error_line(result)


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    tree = small_config_dict()
    tree["training"]["stepz"] = 3
    cfg.write_text(yaml.safe_dump(tree))
    result = runner.invoke(app, ["retrain", "--config", str(cfg), "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "unknown key 'training.stepz'" in _error_line(result)


def test_forecast_without_champion_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small_config_dict()))
    result = runner.invoke(app, ["forecast", "--config", str(cfg), "--home", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert "has no 'champion' alias" in _error_line(result)


def test_masks_inspects_a_saved_forecaster(small_pipeline: dict, tmp_path: Path) -> None:
    path = small_pipeline["forecaster"].save(tmp_path / "fc")
    result = runner.invoke(app, ["masks", "--path", str(path), "--json", "--overlap"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert [t["task"] for t in info["tasks"]] == small_pipeline["bank"].names
    assert all(abs(t["density"] - 0.5) < 1e-3 for t in info["tasks"])
    k = len(info["tasks"])
    assert k == 8  # two markets x (three regimes + ALL)
    assert len(info["overlap"]["matrix"]) == k and all(info["overlap"]["matrix"][i][i] == 1.0 for i in range(k))
    # 8 features x lookback 8 inputs -> hidden (32, 32) -> 3 classes; one bit per weight (every
    # layer a whole number of bytes) against 4 bytes per weight as dense float32
    assert info["sizes"] == [64, 32, 32, 3]
    weights = 64 * 32 + 32 * 32 + 32 * 3
    assert all(t["bytes"] == weights // 8 == 396 for t in info["tasks"])
    assert info["bytes_bits"] == k * weights // 8
    assert info["bytes_dense_float32"] == k * weights * 4
    table = runner.invoke(app, ["masks", "--path", str(path / "bank")])
    assert table.exit_code == 0 and "syn_a/ALL" in table.stdout


def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    """`supsup-fin demo --json` as a user runs it: a subprocess with its own workspace."""
    env = {**os.environ, "SUPSUP_FIN_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "supsup_fin.cli", "demo", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["markets"] == ["sp500", "nasdaq", "wti"]
    assert {t["task"] for t in out["tasks"]} >= {"sp500/ALL", "nasdaq/ALL", "wti/ALL"}
    for t in out["tasks"]:
        assert t["mask_density"] == pytest.approx(0.5, abs=1e-3)
    # ALL is scored on every test row with a 5-day-ahead target: the test segment's days less 5
    # (sp500, nasdaq: 754 days 2016-01-04..2018-12-31; wti: 785 rows to 2019-01-03, gaps forward-filled)
    n_test = {t["task"]: t["n_test"] for t in out["tasks"]}
    assert {m: n_test[f"{m}/ALL"] for m in out["markets"]} == {"sp500": 749, "nasdaq": 749, "wti": 780}
    for m in out["markets"]:  # each of those rows goes to exactly one regime's mask
        regimes = [n for task, n in n_test.items() if task.startswith(f"{m}/") and task != f"{m}/ALL"]
        assert len(regimes) >= 2 and sum(regimes) == n_test[f"{m}/ALL"], (m, n_test)
    assert out["registered_model"]["name"] == "supsup-fin-demo" and out["registered_model"]["version"] == 1
    assert out["tracking_uri"].startswith("sqlite:///") and str(tmp_path / "home") in out["tracking_uri"]
    assert out["elapsed_s"] > 0
    # the first version is champion when it beats the class prior on valid: the shipped demo does
    # (seeded training; valid log-loss ~1.084 vs the prior's ~1.099), so the registry serves forecasts
    assert "champion" in out["registered_model"]["aliases"], out["promotion"]["reason"]
    assert [(f["market"], f["as_of"], f["model_version"]) for f in out["forecasts"]] == [
        ("sp500", "2018-12-31", 1), ("nasdaq", "2018-12-31", 1), ("wti", "2019-01-03", 1)]  # each market's last day
