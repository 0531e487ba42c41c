"""Shared pieces of the ``supsup-fin`` command line: the app, consoles, options, tables.

Command modules (``cli/__init__.py``, ``cli/data.py``, ``cli/deploy.py``, ``cli/backtest.py``) register on :data:`app`.
Errors end a command with a non-zero exit and a one-line reason on stderr.
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
from supsup_fin.errors import SupsupError

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


def setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    logging.basicConfig(level=level, format="%(name)s: %(message)s", force=True,
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def fails_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
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
def progress_bar(enabled: bool) -> Iterator[None]:
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


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c in ("task", "market", "regime", "mode", "as_of", "masks") else "right")
    for r in rows:
        t.add_row(*[fmt(r.get(c)) for c in columns])
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


