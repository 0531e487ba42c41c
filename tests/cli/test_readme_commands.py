"""The README's commands through the real command line, as a user runs them from a shell.

Each runs as a subprocess on one demo workspace and is checked for its exit code, for ``--json``
output that parses (stdout holds nothing else), for default output free of tracebacks and
third-party log lines, and for errors that are one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from supsup_fin.cli.common import HomeOpt, VerboseOpt, fails_cleanly
from supsup_fin.config import demo_config_path

DEMO = str(demo_config_path())
THIRD_PARTY_MARKS = ("Traceback (most recent call last)", "Downloading artifacts", "Created version",
                     "Successfully registered", "| INFO", "| WARNING", "prefect", "INFO mlflow", "mlflow.store",
                     "HTTP Request", "alembic", "UserWarning", "FutureWarning", "DeprecationWarning")
"""What a library's log line or a traceback leaves on the terminal; none may reach it by default."""


def cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``supsup-fin ARGS`` with ``home`` as the workspace, as a shell would run it (not a terminal)."""
    env = {**os.environ, "SUPSUP_FIN_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "supsup_fin.cli", *args], env=env, cwd=home.parent,
                          capture_output=True, text=True, timeout=timeout)


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    """Default output: results on stdout; on stderr only our one-line warnings and errors."""
    for mark in THIRD_PARTY_MARKS:
        assert mark not in proc.stdout and mark not in proc.stderr, (mark, proc.stderr[-2000:])
    for line in proc.stderr.splitlines():
        assert not line.strip() or line.startswith(("warning: ", "error: ", "traceback in ")), proc.stderr[-2000:]


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`supsup-fin demo --json` once, as a user runs it: a workspace with a registered champion."""
    home = tmp_path_factory.mktemp("readme") / "home"
    proc = cli(home, "demo", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, json.loads(proc.stdout)


def test_demo_runs_offline_end_to_end(demo_home: tuple[Path, dict]) -> None:
    _, out = demo_home
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
    assert out["tracking_uri"].startswith("sqlite:///") and str(demo_home[0]) in out["tracking_uri"]
    assert out["elapsed_s"] > 0
    # the first version is champion when it beats the class prior on valid: the shipped demo does
    # (seeded training; valid log-loss ~1.07 vs the prior's ~1.099), so the registry serves forecasts
    assert "champion" in out["registered_model"]["aliases"], out["promotion"]["reason"]
    assert [(f["market"], f["as_of"], f["model_version"]) for f in out["forecasts"]] == [
        ("sp500", "2018-12-31", 1), ("nasdaq", "2018-12-31", 1), ("wti", "2019-01-03", 1)]  # each market's last day


def test_demo_again_is_quiet_and_registers_nothing(demo_home: tuple[Path, dict]) -> None:
    """The second `make demo`: progress, the tables and the forecast only; same data, config and
    code as the champion, so no new version."""
    home, _ = demo_home
    proc = cli(home, "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc)
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        "warning: market 'wti': check 'jump' on column 'close': 1 row(s) with |daily return| > 0.25, "
        "first -33.4%; first on 1991-01-17 (kept, policy 'warn')"]  # once, though two steps load wti
    assert "Gated forecaster on test" in proc.stdout and "Forecasts from the champion" in proc.stdout
    assert "unchanged since v1" in proc.stdout
    assert "…" not in proc.stdout  # tables wrap, never cut
    models = json.loads(cli(home, "models", "-c", DEMO, "--json").stdout)
    assert [r["version"] for r in models] == [1]


def slow(*args: str) -> object:
    """A command checked by `make test-slow` only: each process pays ~6 s of imports."""
    return pytest.param(list(args), marks=pytest.mark.slow, id=" ".join(args))


@pytest.mark.parametrize("args", [
    ["forecast", "-c", DEMO], ["models", "-c", DEMO, "--json"],
    slow("forecast", "-c", DEMO, "--market", "wti", "--json"), slow("masks", "--overlap"), slow("masks", "--json"),
    slow("models", "-c", DEMO), slow("ingest", "-c", DEMO), slow("ingest", "-c", DEMO, "--json"),
    slow("regimes", "-c", DEMO, "-m", "sp500", "--json"), slow("serve", "-c", DEMO, "--example"),
    slow("monitor", "-c", DEMO, "--backfill", "30"), slow("monitor", "-c", DEMO, "--json"),
    slow("masks", "--explain"), slow("forecast", "-c", DEMO, "--as-of", "2018-11-30", "--json"),
], ids=lambda args: " ".join(args))
def test_readme_command(demo_home: tuple[Path, dict], args: list[str]) -> None:
    home, _ = demo_home
    proc = cli(home, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc)
    if "--json" in args or "--example" in args:
        json.loads(proc.stdout)  # the whole of stdout is one JSON document
    else:
        assert proc.stdout.strip()


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(["forecast", "-c", DEMO, "--market", "NOSUCH"], ["unknown market 'NOSUCH'", "sp500"],
                 id="forecast-unknown-market"),
    pytest.param(["ingest", "-c", DEMO, "--market", "NOSUCH", "--json"], ["unknown market 'NOSUCH'", "sp500"],
                 id="ingest-unknown-market", marks=pytest.mark.slow),
    pytest.param(["regimes", "-c", DEMO, "--market", "NOSUCH"], ["unknown market 'NOSUCH'", "sp500"],
                 id="regimes-unknown-market", marks=pytest.mark.slow),
    pytest.param(["promote", "-c", DEMO, "--version", "99"], ["99"], id="promote-no-such-version",
                 marks=pytest.mark.slow),
    pytest.param(["retrain", "-c", "no/such.yaml"], ["no/such.yaml"], id="retrain-no-config"),
])
def test_readme_command_errors_are_one_line(demo_home: tuple[Path, dict], args: list[str], expected: list[str]) -> None:
    home, _ = demo_home
    assert_one_line_error(cli(home, *args), *expected)


def test_unexpected_errors_are_one_line_with_the_log(tmp_path: Path) -> None:
    """An error the project did not foresee: one line naming its type, the traceback in the log file
    (and on the terminal with --verbose)."""
    app = typer.Typer()

    @app.command()
    @fails_cleanly
    def boom(home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
        raise RuntimeError("disk said no\nwhile writing")

    home = tmp_path / "home"
    quiet = CliRunner().invoke(app, ["--home", str(home)])
    log = home / "logs" / "supsup-fin.log"
    assert quiet.exit_code == 1
    assert quiet.stderr.splitlines() == ["error: RuntimeError: disk said no while writing", f"traceback in {log}"]
    assert "Traceback (most recent call last)" in log.read_text() and "disk said no" in log.read_text()
    loud = CliRunner().invoke(app, ["--home", str(home), "--verbose"])
    assert loud.exit_code == 1 and "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.splitlines()[-2:] == quiet.stderr.splitlines()
