"""``supsup-fin ingest`` and ``supsup-fin regimes``: tables, JSON, plots, one-line errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from conftest import random_walk
from typer.testing import CliRunner

from supsup_fin.cli import app

runner = CliRunner()


def _config(tmp_path: Path, markets: list[dict], **extra: dict) -> Path:
    tree = {"name": "t", "markets": markets, "regimes": {"n_states": [2, 3], "n_restarts": 1, "regime_window": 50},
            **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _csv(tmp_path: Path, name: str, frame: pd.DataFrame) -> str:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path)
    return str(path)


def _prices(n: int = 60) -> pd.DataFrame:
    return random_walk(n, start="2011-01-03")


def test_ingest_health_table_and_json(tmp_path: Path) -> None:
    gappy = _prices()
    gappy.iloc[5:7, 0] = np.nan
    jumpy = _prices()
    jumpy.iloc[30:, 0] *= 1.5  # a level shift: kept with a warning (policy 'warn'), which handles it
    cfg = _config(tmp_path, [{"name": "syn", "source": "synthetic", "dataset": "easy", "seed": 1},
                             {"name": "gappy", "source": "file", "path": _csv(tmp_path, "g", gappy)},
                             {"name": "jumpy", "source": "file", "path": _csv(tmp_path, "j", jumpy)}])
    result = runner.invoke(app, ["ingest", "--config", str(cfg), "--home", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert "Data health" in result.stdout and "gappy" in result.stdout and "2 repair" in result.stdout
    assert "ok: loaded, every finding handled by its policy" in " ".join(result.stdout.split())
    table = [ln for ln in result.stdout.splitlines() if ln.startswith("│ ") and "file" in ln]
    assert len(table) == 2 and all(ln.rstrip(" │").endswith("True") for ln in table), result.stdout
    result = runner.invoke(app, ["ingest", "--config", str(cfg), "--json", "--market", "gappy", "--market", "jumpy",
                                 "--home", str(tmp_path / "h")])
    gappy_row, jumpy_row = json.loads(result.stdout)
    assert gappy_row["findings"][0]["check"] == "missing" and gappy_row["findings"][0]["count"] == 2
    assert gappy_row["rows_out"] == 60 and gappy_row["ok"] is True
    assert [(f["check"], f["action"]) for f in jumpy_row["findings"]] == [("jump", "warn")]
    assert jumpy_row["ok"] is True and jumpy_row["error"] is None


def test_ingest_bad_files_fail_with_one_line_per_market(tmp_path: Path) -> None:
    wrong = _prices().rename(columns={"close": "price"})
    bad_dates = _prices().reset_index()
    bad_dates["date"] = bad_dates["date"].dt.strftime("%Y-%m-%d").astype(object)
    bad_dates.loc[3, "date"] = "not-a-date"
    cfg = _config(tmp_path, [{"name": "ok", "source": "synthetic", "dataset": "hard"},
                             {"name": "wrong", "source": "file", "path": _csv(tmp_path, "w", wrong)},
                             {"name": "dates", "source": "file",
                              "path": str(tmp_path / "d.csv")}])
    bad_dates.to_csv(tmp_path / "d.csv", index=False)
    result = runner.invoke(app, ["ingest", "--config", str(cfg), "--home", str(tmp_path / "h")])
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, result.stderr
    assert "'wrong'" in lines[0] and "no 'close' column" in lines[0]
    assert "'dates'" in lines[1] and "column 'date'" in lines[1] and "'not-a-date' at row 3" in lines[1]
    rows = {ln.split()[1]: ln.rstrip(" │").split()[-1] for ln in result.stdout.splitlines() if ln.startswith("│ ")}
    assert rows == {"ok": "True", "wrong": "False", "dates": "False"}, result.stdout  # every market in the table


def test_regimes_prints_stats_and_writes_plot(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = np.where((np.arange(800) // 100) % 2 == 0, 0.005, 0.025)
    frame = pd.DataFrame({"close": 100 * np.exp(np.cumsum(rng.normal(0, vol)))},
                         index=pd.bdate_range("2010-01-04", periods=800, name="date"))
    cfg = _config(tmp_path, [{"name": "syn", "source": "file", "path": _csv(tmp_path, "syn", frame)}])
    result = runner.invoke(app, ["regimes", "--config", str(cfg), "--home", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert "expected duration days" in " ".join(result.stdout.split()) and "calm" in result.stdout
    title = " ".join(result.stdout.split())
    assert "syn: 2 regimes; BIC per state count (bic_returns, lower is better): 2:" in title, result.stdout
    assert "; chosen 2; converged=True" in title and "criterion" not in title
    png = tmp_path / "h" / "regimes" / "syn.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~umask  # what a plain open() gives
    result = runner.invoke(app, ["regimes", "--config", str(cfg), "--json", "--home", str(tmp_path / "h"),
                                 "--plot-dir", str(tmp_path / "plots")])
    (report,) = json.loads(result.stdout)
    assert report["n_states"] == 2 and set(report["bic"]) == {"2", "3"} and "criterion" not in report, report
    assert report["bic"]["2"] < report["bic"]["3"] and report["selection"] == "bic_returns"  # lowest BIC chosen
    assert f"2:{report['bic']['2']:.1f}, 3:{report['bic']['3']:.1f}; chosen 2" in title
    assert len(report["stats"]) == 2 and report["converged"] is True
    assert Path(report["plot"]) == tmp_path / "plots" / "syn.png"


def test_regimes_errors_are_one_line(tmp_path: Path) -> None:
    short = _prices(40)
    cfg = _config(tmp_path, [{"name": "short", "source": "file", "path": _csv(tmp_path, "s", short)}],
                  regimes={"n_states": [2, 8]})
    result = runner.invoke(app, ["regimes", "--config", str(cfg), "--home", str(tmp_path / "h")])
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'short'" in lines[0] and "n_states range (2, 8)" in lines[0], result.stderr
    result = runner.invoke(app, ["regimes", "--config", str(cfg), "--market", "nope"])
    assert result.exit_code == 1 and "unknown market 'nope'" in result.stderr
