"""``supsup-fin backtest``: the walk-forward comparison table, per market and for the portfolio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines import prefect_defaults
from supsup_fin.cli.common import (
    ConfigOpt,
    HomeOpt,
    JsonOpt,
    VerboseOpt,
    app,
    err,
    fails_cleanly,
    out,
    print_json,
    progress_bar,
    table,
)
from supsup_fin.config import load_config
from supsup_fin.workspace import Workspace

_COLUMNS = ["strategy", "sharpe", "sharpe_lo", "sharpe_hi", "dsr", "ann_return", "ann_vol", "max_drawdown",
            "calmar", "hit_rate", "turnover", "accuracy", "log_loss", "brier", "flat_missing"]


def show_backtest(summary: dict[str, Any]) -> None:
    """Print the comparison tables of a backtest summary."""
    by_market: dict[str, list[dict[str, Any]]] = {}
    for r in summary["table"]:
        by_market.setdefault(r["market"], []).append(r)
    for market, rows in by_market.items():
        out.print(table(f"{market}: walk-forward after {summary['costs_bps']:g} bps costs per unit traded "
                        "(sharpe_lo/hi: 95% bootstrap CI; dsr: deflated Sharpe over all strategies)",
                        rows, _COLUMNS))
    if summary["continual"]:
        out.print(table("Continual path: accuracy on each window's days, right after training vs at the end",
                        summary["continual"], ["market", "strategy", "avg_accuracy", "bwt", "forgetting"]))
    out.print(table("Storage", summary["storage"], ["model", "count", "bytes"]))
    w = summary["windows"]
    if w:
        out.print(f"{len(w)} windows {w[0]['test_start']}..{w[-1]['test_end']}, {summary['elapsed_s']:.0f} s")
    show_artifacts(summary)
    if summary["run_id"]:
        out.print(f"tracking: {summary['tracking_uri']}  run {summary['run_id']}", soft_wrap=True, highlight=False,
                  markup=False)
        out.print(f"MLflow run: {summary['mlflow_url']}  (served by `supsup-fin ui`)", soft_wrap=True,
                  highlight=False, markup=False)


def show_artifacts(summary: dict[str, Any]) -> None:
    """Print where a backtest's files were written: the folder once, each file under it, the tearsheet."""
    folder = Path(summary["artifacts_dir"])
    lines = [f"artifacts: {folder}", *(f"  {Path(p).relative_to(folder)}" for p in summary["artifacts"])]
    if summary["tearsheet"]:
        lines.append(f"tearsheet: {summary['tearsheet']}")
    for line in lines:
        out.print(line, soft_wrap=True, highlight=False, markup=False)


@app.command()
@fails_cleanly
def backtest(
    config: ConfigOpt,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Record the run in MLflow.")] = True,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Walk-forward backtest: every gate mode and baseline, after costs, in one table."""
    cfg = load_config(config)
    prefect_defaults()  # first: Prefect reads its settings when it is first imported
    from pipelines.backtest import backtest_flow

    with progress_bar(not as_json and err.is_terminal):
        summary = backtest_flow(config=cfg.model_dump(mode="json"), workspace=str(home) if home else None,
                                track=track)
    if summary["run_id"]:
        from supsup_fin.tracking.ui import run_url, ui_url

        summary["mlflow_url"] = run_url(ui_url(cfg.tracking, Workspace.resolve(home)), summary["experiment_id"],
                                        summary["run_id"])
    print_json(summary) if as_json else show_backtest(summary)



