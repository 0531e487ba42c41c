"""Everything a backtest produces, written to one folder, whole or not at all.

:func:`write_artifacts` writes the comparison table (CSV and text), the per-regime, calibration,
continual, storage and windows tables (CSV; the windows also as JSON), equity plots per market
and for the portfolio, the reliability diagrams, the daily rows (Parquet) and the tearsheet
(:mod:`supsup_fin.backtest.tearsheet`). The folder is built beside its final name and renamed in
when every file is written (:func:`~supsup_fin._atomic.atomic_dir`): a failure leaves no folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from supsup_fin import progress
from supsup_fin._atomic import atomic_dir
from supsup_fin._figures import save_png
from supsup_fin.backtest.plots import equity_figure, reliability_figure
from supsup_fin.backtest.report import PORTFOLIO, BacktestResult
from supsup_fin.backtest.tearsheet import tearsheet_html
from supsup_fin.config import Config

COMPARISON = "comparison.csv"
"""Written by every backtest: the marker of a backtest artifacts folder."""
TEARSHEET = "tearsheet.html"
TABLES = ("per_regime", "calibration", "continual", "storage", "windows")
"""The :class:`~supsup_fin.backtest.report.BacktestResult` tables written as ``<name>.csv``."""


def backtest_folder(root: str | os.PathLike[str], name: str, when: dt.datetime | None = None) -> Path:
    """A folder for a new backtest's artifacts: ``<root>/<name>-<UTC time>``, not taken yet.

    ``name`` (the config's) keeps letters, digits, ``_ . -`` (anything else becomes ``_``); the
    time is ``YYYYmmddTHHMMSSZ`` (``when``, default now); ``-2``, ``-3`` ... follow if the
    folder exists.
    """
    when = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{when:%Y%m%dT%H%M%SZ}"
    folder, n = Path(root) / stem, 1
    while os.path.lexists(folder):
        n += 1
        folder = Path(root) / f"{stem}-{n}"
    return folder


def write_artifacts(result: BacktestResult, cfg: Config, folder: str | os.PathLike[str]) -> list[Path]:
    """Write every artifact of ``result`` into ``folder``; returns their paths, in writing order.

    ``folder`` must be absent, empty or an artifacts folder written before (which is replaced).
    Progress is reported per file (stage ``write artifacts``).
    """
    folder = Path(folder)
    files = _writers(result, cfg)
    with atomic_dir(folder, marker=COMPARISON, what="backtest artifacts") as tmp:
        for i, (name, write) in enumerate(files):
            progress.report("write artifacts", i, len(files), name)
            write(tmp / name)
        progress.report("write artifacts", len(files), len(files), "done")
    return [folder / name for name, _ in files]


def _writers(result: BacktestResult, cfg: Config) -> list[tuple[str, Callable[[Path], object]]]:
    """(file name, what writes it) of every artifact, in writing order."""
    files: list[tuple[str, Callable[[Path], object]]] = [
        (COMPARISON, result.table.to_csv),
        ("comparison.txt", lambda p: p.write_text(result.table.round(4).to_string() + "\n")),
        *((f"{t}.csv", getattr(result, t).to_csv) for t in TABLES),
        ("windows.json", lambda p: p.write_text(json.dumps(result.forecasts.window_log, indent=1, default=str))),
    ]
    markets = [*sorted(result.forecasts.closes), *([] if result.portfolio.empty else [PORTFOLIO])]
    files += [(f"equity_{m}.png", lambda p, m=m: save_png(equity_figure(result, m), p)) for m in markets]
    if not result.calibration.empty:  # empty when no strategy gives probabilities
        files.append(("reliability.png", lambda p: save_png(reliability_figure(result.calibration), p)))
    files += [("daily.parquet", result.daily.to_parquet),
              (TEARSHEET, lambda p: p.write_text(tearsheet_html(result, cfg), encoding="utf-8"))]
    return files
