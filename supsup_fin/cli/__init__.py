"""The ``supsup-fin`` command line: human tables by default, ``--json`` for scripts.

Errors end the command with a non-zero exit and a one-line reason on stderr.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

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
from supsup_fin.config import Config, demo_config_path, load_config
from supsup_fin.workspace import Workspace

def _retrain(cfg: Config, home: Path | None, as_json: bool, force: bool = False) -> dict[str, Any]:
    prefect_defaults()  # first: Prefect reads its settings when it is first imported
    from pipelines.retrain import run_retrain

    with progress_bar(not as_json and err.is_terminal):
        return run_retrain(cfg, home, force)


def _show_retrain(summary: dict[str, Any]) -> None:
    out.print(table("Masks on test (each task's calibrated mask alone on its regime's rows; baseline = class prior)",
                     summary["tasks"], ["task", "n_train", "n_test", "accuracy", "baseline_accuracy",
                                        "log_loss", "baseline_log_loss", "mask_density"]))
    gated = [r for r in summary["forecaster"] if r["segment"] == "test"]
    priors = sorted({k for r in gated for k in r if k.startswith("prior_")}, key=lambda k: list(gated[0]).index(k))
    out.print(table("Gated forecaster on test (baseline = the class prior: knowing nothing; auto = the mode "
                    "each market chose on held-out training rows)", gated,
                     ["market", "mode", *(["runs"] if any("runs" in r for r in gated) else []), "n", "accuracy",
                      "baseline_accuracy", "log_loss", "baseline_log_loss", *priors]))
    if summary.get("recovered"):
        err.print(f"[yellow]recovered from a killed run:[/yellow] {summary['recovered']}")
    reg, p = summary["registered_model"], summary["promotion"]
    if reg.get("unchanged_since") is not None:
        out.print(f"[bold]{reg['name']}[/bold] unchanged since v{reg['unchanged_since']} aliases={reg['aliases']}: the "
                  "same data, config and code as the champion; nothing registered (--force registers anyway)")
    else:
        out.print(f"registered [bold]{reg['name']}[/bold] v{reg['version']} aliases={reg['aliases']}: {p['reason']}")
    out.print(f"tracking: {summary['tracking_uri']}  run {summary['run_id']}  ({summary['elapsed_s']:.1f} s)")


def _show_forecasts(rows: list[dict[str, Any]]) -> None:
    cols = ["market", "as_of", "target_date", *[k for k in rows[0] if k.startswith("p_")],
            "expected_return", "position", "mode", "regime", "stale_days",
            *(["novel_regime"] if any(r.get("novel_regime") for r in rows) else [])] if rows else []
    out.print(table("Forecasts from the champion (position: the decision layer's, in units of notional; "
                    "--json adds the class prior, regime posterior, masks and version)", rows, cols))


@app.command()
@fails_cleanly
def demo(as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """Run the whole pipeline offline on the shipped demo data, then forecast from the registry."""
    from supsup_fin.live.forecast import forecast_markets

    start = time.perf_counter()
    cfg = load_config(demo_config_path())
    summary = _retrain(cfg, home, as_json)
    forecasts = forecast_markets(cfg, Workspace.resolve(home)) if "champion" in summary["registered_model"]["aliases"] else []
    summary["forecasts"] = forecasts
    summary["elapsed_s"] = round(time.perf_counter() - start, 2)
    if as_json:
        print_json(summary)
        return
    _show_retrain(summary)
    if forecasts:
        _show_forecasts(forecasts)
    else:
        out.print("no champion yet: the new version did not beat the class prior on valid")
    from supsup_fin.cli.deploy import ui_hint

    out.print(ui_hint(home))


@app.command()
@fails_cleanly
def retrain(
    config: ConfigOpt,
    force: Annotated[bool, typer.Option("--force", help="Register a new version even when its data, config and code "
                                        "equal the champion's (otherwise nothing is registered: 'unchanged since vN'), "
                                        "and promote even when a market's HMM fell back to fewer regimes than asked "
                                        "(degenerate), if the scores allow.")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Retrain every market's masks, evaluate, log to MLflow, register and maybe promote.

    One retrain per workspace at a time: a second one waits for the first. A retrain killed
    mid-way leaves nothing promotable; the next one reports and closes what it left.
    """
    summary = _retrain(load_config(config), home, as_json, force)
    print_json(summary) if as_json else _show_retrain(summary)


@app.command()
@fails_cleanly
def forecast(
    config: ConfigOpt, market: Annotated[list[str] | None, typer.Option("--market", "-m", help="Only this market (repeatable).")] = None,
    store: Annotated[bool, typer.Option("--store", help="Also append to the forecasts table and log an MLflow run (idempotent).")] = False,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="DATE", help="Forecast at the close of DATE (YYYY-MM-DD), "
                                              "from each market's prices up to that date only.")] = None,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Forecast the latest date of each market (or --as-of DATE) with the registered champion."""
    from supsup_fin.live.forecast import forecast_markets, store_forecasts

    cfg, ws = load_config(config), Workspace.resolve(home)
    rows = forecast_markets(cfg, ws, market or None, as_of)
    stored = store_forecasts(cfg, ws, rows) if store else None
    if as_json:
        print_json({"forecasts": rows, "stored": stored} if store else rows)
        return
    _show_forecasts(rows)
    if stored:
        out.print(f"forecasts table {stored['table']}: {stored['added']} added, {stored['skipped']} already there")


@app.command()
@fails_cleanly
def masks(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config naming the registered model.")] = None,
    path: Annotated[Path | None, typer.Option("--path", help="A mask bank or forecaster directory instead of the registry.")] = None,
    version: Annotated[str, typer.Option("--version", help="Registry version number or alias.")] = "champion",
    overlap: Annotated[bool, typer.Option("--overlap", help="Also print the Jaccard overlap matrix.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Also show which inputs (feature, lag) each mask's input "
                                          "layer keeps, and how each regime mask overlaps its market's ALL mask and "
                                          "other markets' masks, against chance.")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Inspect a mask bank: tasks, per-layer densities, storage, overlaps, the inputs each mask reads."""
    from supsup_fin.forecaster.bank_info import describe_bank, explain_tables, load_bank
    from supsup_fin.masks.explain import explain_bank

    cfg = load_config(config) if config else load_config(demo_config_path())
    opened = load_bank(cfg, Workspace.resolve(home), path=path, version=version)
    bank, source = opened.bank, opened.source
    info = describe_bank(bank, overlap=overlap)
    info["source"] = source
    if explain:
        info["explain"] = explain_bank(bank, opened.feature_names, opened.lookback)
    if as_json:
        print_json(info)
        return
    layer_cols = [f"layer{i}" for i in range(len(info["tasks"][0]["layer_density"]))] if info["tasks"] else []
    rows = [{**t, **dict(zip(layer_cols, t["layer_density"]))} for t in info["tasks"]]
    out.print(table(f"Mask bank ({source}); base {info['base_hash'][:12]}, sizes {info['sizes']}", rows,
                     ["task", "method", "n_train", "density", *layer_cols, "bytes"]))
    out.print(f"{len(rows)} masks, {info['bytes_bits']} bytes of mask bits "
              f"(dense float32 copies would take {info['bytes_dense_float32']} bytes)")
    if overlap and info["tasks"]:
        out.print(_overlap_table(info["overlap"]))
    if explain and info["tasks"]:
        shown = explain_tables(info["explain"])
        if info["explain"]["inputs"] == "index":
            out.print("[yellow]a bare mask bank names no features: inputs are shown by index (in0 ..); a forecaster "
                      "directory or registry version names them by feature and lag[/yellow]")
        out.print(table("What each mask's input layer reads: per feature (all lags), the kept fraction of its weights "
                        "over the layer's density (1 = uniform); top: the input (feature@lag) kept most",
                        shown["usage"], list(shown["usage"][0])))
        out.print(shown["usage_note"])
        if shown["overlap"]:
            out.print(table("Each regime mask's overlap over all layers: Jaccard (chance: independent masks of these "
                            "densities); more/less than ALL: the features it keeps more/less of than its market's ALL "
                            f"mask, in density points ({shown['overlap_note']})", shown["overlap"],
                            list(shown["overlap"][0])))


def _overlap_table(overlap: dict[str, Any]) -> Table:
    """The Jaccard matrix with numbered columns (narrow at any task count) and the chance level."""
    names, chance = overlap["names"], np.asarray(overlap["chance"])
    off = chance[~np.eye(len(names), dtype=bool)]
    if off.size == 0:  # one mask: no pair to compare
        level = "none (one mask)"
    else:
        level = f"{off.min():.2f}" if np.ptp(off) < 0.005 else f"{off.min():.2f}-{off.max():.2f}"
    t = Table(title=f"Jaccard overlap of kept weights (column j: row j's mask); chance level for independent "
                    f"masks of these densities: {level}", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("mask")
    for j in range(len(names)):
        t.add_column(str(j + 1), justify="right")
    for i, (n, row) in enumerate(zip(names, overlap["matrix"])):
        t.add_row(str(i + 1), n, *[f"{v:.2f}" for v in row])
    return t


def main() -> None:
    """Console-script entry point."""
    command = typer.main.get_command(app)
    _bare_flags(command)
    command(prog_name="supsup-fin")


def _bare_flags(command: Any) -> None:
    """Show flags in ``--help`` without a ``<bool>`` value, as they take none (``--help`` itself too)."""
    for param in [*command.params, command.get_help_option(typer.Context(command))]:
        if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _bare_flags(sub)


# Further command groups register themselves on `app` when imported.
from supsup_fin.cli import backtest as _backtest, data as _data, deploy as _deploy, monitor as _monitor  # noqa: E402,F401

