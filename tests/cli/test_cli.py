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
COMMANDS = ["demo", "retrain", "forecast", "masks", "backtest", "ingest", "regimes", "models", "promote", "rollback",
            "serve", "schedule", "ui", "monitor"]


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


def test_help_shows_flags_without_a_value_type() -> None:
    """`--json`, `--verbose`, `--force`, `--help`... take no value: the help says none (no `<bool>`)."""
    proc = subprocess.run([sys.executable, "-m", "supsup_fin.cli", "retrain", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--force" in proc.stdout and "--json" in proc.stdout and "<path>" in proc.stdout
    assert "<bool>" not in proc.stdout
