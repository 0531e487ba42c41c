"""The ``supsup-fin`` command line: human tables by default, ``--json`` for scripts.

Errors end the command with a non-zero exit and a one-line reason on stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from supsup_fin import progress as _progress
from supsup_fin.config import Config, demo_config_path, load_config
from supsup_fin.errors import SupsupError
from supsup_fin.workspace import Workspace

app = typer.Typer(
    name="supsup-fin", no_args_is_help=True, add_completion=False,
    help="Market-regime forecasting with Supermasks in Superposition.",
)
# Piped output keeps whole tables: a terminal's own width, otherwise 160 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
HomeOpt = Annotated[Path | None, typer.Option("--home", help="Workspace directory (default $SUPSUP_FIN_HOME or ./.supsup_fin).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show library and Prefect logs.")]


def _setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    logging.basicConfig(level=level, format="%(name)s: %(message)s", force=True,
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def _fails_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user-facing error into a one-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SupsupError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True)
    ids: dict[str, Any] = {}

    def listen(stage: str, done: int, total: int, info: str) -> None:
        if stage not in ids:
            ids[stage] = bar.add_task(stage, total=total, info="")
        bar.update(ids[stage], completed=done, total=total, info=info)

    with bar, _progress.listening(listen):
        yield


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c in ("task", "market", "regime", "mode", "as_of", "masks") else "right")
    for r in rows:
        t.add_row(*[_fmt(r.get(c)) for c in columns])
    return t


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _retrain(cfg: Config, home: Path | None, as_json: bool) -> dict[str, Any]:
    from pipelines.retrain import run_retrain

    with _progress_bar(not as_json and err.is_terminal):
        return run_retrain(cfg, home)


def _show_retrain(summary: dict[str, Any]) -> None:
    out.print(_table("Masks on test (each task's mask alone on its regime's rows; baseline = class prior)",
                     summary["tasks"], ["task", "n_train", "n_test", "accuracy", "baseline_accuracy",
                                        "log_loss", "baseline_log_loss", "mask_density"]))
    gated = [r for r in summary["forecaster"] if r["segment"] == "test"]
    out.print(_table("Gated forecaster on test", gated,
                     ["market", "mode", "n", "accuracy", "baseline_accuracy", "log_loss", "baseline_log_loss"]))
    reg, p = summary["registered_model"], summary["promotion"]
    out.print(f"registered [bold]{reg['name']}[/bold] v{reg['version']} aliases={reg['aliases']}: {p['reason']}")
    out.print(f"tracking: {summary['tracking_uri']}  run {summary['run_id']}  ({summary['elapsed_s']:.1f} s)")


def _show_forecasts(rows: list[dict[str, Any]]) -> None:
    cols = ["market", "as_of", "target_date", *[k for k in rows[0] if k.startswith("p_")], "signal", "regime",
            "regime_posterior", "masks", "model_version", "source", "stale_days"] if rows else []
    out.print(_table("Forecasts from the champion", rows, cols))


@app.command()
@_fails_cleanly
def demo(as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """Run the whole pipeline offline on the shipped demo data, then forecast from the registry."""
    import time

    from supsup_fin.live import forecast_markets

    _setup_logging(verbose)
    start = time.perf_counter()
    cfg = load_config(demo_config_path())
    summary = _retrain(cfg, home, as_json)
    forecasts = forecast_markets(cfg, Workspace.resolve(home)) if "champion" in summary["registered_model"]["aliases"] else []
    summary["forecasts"] = forecasts
    summary["elapsed_s"] = round(time.perf_counter() - start, 2)
    if as_json:
        _print_json(summary)
        return
    _show_retrain(summary)
    if forecasts:
        _show_forecasts(forecasts)
    else:
        out.print("no champion yet: the new version did not beat the class prior on valid")
    ws = Workspace.resolve(home)
    out.print(f"MLflow UI: mlflow ui --backend-store-uri {summary['tracking_uri']} --default-artifact-root {ws.artifacts_dir}")


@app.command()
@_fails_cleanly
def retrain(config: ConfigOpt, as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """Retrain every market's masks, evaluate, log to MLflow, register and maybe promote."""
    _setup_logging(verbose)
    summary = _retrain(load_config(config), home, as_json)
    _print_json(summary) if as_json else _show_retrain(summary)


@app.command()
@_fails_cleanly
def forecast(
    config: ConfigOpt, market: Annotated[list[str] | None, typer.Option("--market", "-m", help="Only this market (repeatable).")] = None,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Forecast the latest date of each market with the registered champion."""
    from supsup_fin.live import forecast_markets

    _setup_logging(verbose)
    rows = forecast_markets(load_config(config), Workspace.resolve(home), market or None)
    _print_json(rows) if as_json else _show_forecasts(rows)


@app.command()
@_fails_cleanly
def masks(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config naming the registered model.")] = None,
    path: Annotated[Path | None, typer.Option("--path", help="A mask bank or forecaster directory instead of the registry.")] = None,
    version: Annotated[str, typer.Option("--version", help="Registry version number or alias.")] = "champion",
    overlap: Annotated[bool, typer.Option("--overlap", help="Also print the Jaccard overlap matrix.")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Inspect a mask bank: tasks, per-layer densities, storage, overlaps."""
    from supsup_fin.bank_info import describe_bank, open_bank

    _setup_logging(verbose)
    cfg = load_config(config) if config else load_config(demo_config_path())
    bank, source = open_bank(cfg, Workspace.resolve(home), path=path, version=version)
    info = describe_bank(bank, overlap=overlap)
    info["source"] = source
    if as_json:
        _print_json(info)
        return
    layer_cols = [f"layer{i}" for i in range(len(info["tasks"][0]["layer_density"]))] if info["tasks"] else []
    rows = [{**t, **dict(zip(layer_cols, t["layer_density"]))} for t in info["tasks"]]
    out.print(_table(f"Mask bank ({source}); base {info['base_hash'][:12]}, sizes {info['sizes']}", rows,
                     ["task", "method", "n_train", "density", *layer_cols, "bytes"]))
    out.print(f"{len(rows)} masks, {info['bytes_bits']} bytes of mask bits "
              f"(dense float32 copies would take {info['bytes_dense_float32']} bytes)")
    if overlap and info["tasks"]:
        names = info["overlap"]["names"]
        t = Table(title="Jaccard overlap", title_justify="left")
        t.add_column("")
        for n in names:
            t.add_column(n, justify="right")
        for n, row in zip(names, info["overlap"]["matrix"]):
            t.add_row(n, *[f"{v:.2f}" for v in row])
        out.print(t)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
