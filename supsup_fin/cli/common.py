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
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from supsup_fin import progress as _progress
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
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also print library, Prefect and MLflow logs and "
                                          "tracebacks (always written to <home>/logs/supsup-fin.log).")]


_THIRD_PARTY_QUIET = {
    "MLFLOW_CONFIGURE_LOGGING": "false",  # MLflow's records (and its event lines) reach the handlers below
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no "Downloading artifacts" bars on stderr
    "PREFECT_LOGGING_LEVEL": "INFO",  # flow and task states: into the log file
}
_LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_OWN_LOGGERS = ("supsup_fin", "pipelines")
_CHATTY = ("httpx", "httpcore", "alembic", "urllib3", "asyncio")
"""Loggers whose INFO is one line per request or migration: warnings only, even in the log file."""


@dataclass
class _Session:
    log_file: Path | None = None
    verbose: bool = False
    stdout: TextIO | None = None  # the real stdout while --json sends the rest to stderr


_session = _Session()


class _OwnRecords(logging.Filter):
    """The terminal's filter without ``--verbose``: the project's own records only (the handler's
    level keeps them to warnings and errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in _OWN_LOGGERS


class _Terminal(logging.Handler):
    """One line per record on stderr: ``warning: <message>`` (``--verbose``: ``<level> <logger>: <message>``)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.INFO if verbose else logging.WARNING)
        self.verbose = verbose
        self.setFormatter(logging.Formatter("%(message)s"))  # a formatter marks it as the user's: Prefect keeps it

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):
            return
        try:
            text = escape(" ".join(self.format(record).split()) if not self.verbose else self.format(record))
            style = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}.get(record.levelno)
            level = record.levelname.lower()
            label = f"[{style}]{level}:[/{style}]" if style else f"{level}:"
            err.print(f"{label} {record.name}: {text}" if self.verbose else f"{label} {text}",
                      highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def setup_logging(verbose: bool, home: Path | None = None) -> Path:
    """Every record to the workspace's log file; on the terminal only the project's warnings, or
    everything from INFO up with ``verbose``. Returns the log file.

    Python warnings are logged too (``py.warnings``). Call before Prefect or MLflow is imported:
    both read the variables set here once.
    """
    log_file = Workspace.resolve(home).log_file
    for name, value in _THIRD_PARTY_QUIET.items():
        os.environ.setdefault(name, value)
    to_file = RotatingFileHandler(log_file, maxBytes=5 * 2**20, backupCount=2, encoding="utf-8", delay=True)
    to_file.setFormatter(logging.Formatter(_LOG_FORMAT))
    to_term = _Terminal(verbose)
    if not verbose:
        to_term.addFilter(_OwnRecords())
    logging.basicConfig(level=logging.INFO, handlers=[to_file, to_term], force=True)
    logging.captureWarnings(True)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "mlflow" in sys.modules:  # imported before the command (a notebook, a test session): its handler too
        from supsup_fin.tracking import mlflow_logs_to_handlers

        mlflow_logs_to_handlers()
    _session.log_file, _session.verbose = log_file, verbose
    return log_file


def one_line(e: BaseException) -> str:
    """An error as one line: the project's own message, else ``Type: message``."""
    text = " ".join(str(e).split())
    if isinstance(e, SupsupError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def fails_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Set up logging from the command's ``verbose`` and ``home``, keep stdout for JSON with
    ``as_json``, and end any error with one line on stderr and exit 1. An unexpected error's
    traceback goes to the log file (named on the next line); ``--verbose`` prints it too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            setup_logging(bool(kwargs.get("verbose")), kwargs.get("home"))
        except OSError as e:
            err.print(f"[red]error:[/red] cannot write the workspace's log file: {escape(one_line(e))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None
        try:
            with _json_only_stdout(bool(kwargs.get("as_json"))):
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:  # the command line's last word on every error
            expected = isinstance(e, SupsupError)
            logging.getLogger("supsup_fin.cli").log(logging.INFO if expected else logging.ERROR, "%s failed",
                                                    fn.__name__, exc_info=True, extra={"file_only": True})
            if _session.verbose and not expected:
                err.print_exception()
            err.print(f"[red]error:[/red] {escape(one_line(e))}", highlight=False, soft_wrap=True)
            if not expected:
                err.print(f"traceback in {_session.log_file}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@contextmanager
def _json_only_stdout(as_json: bool) -> Iterator[None]:
    """With ``--json``, whatever a library prints goes to stderr; :func:`print_json` still reaches stdout."""
    if not as_json:
        yield
        return
    _session.stdout = sys.stdout
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _session.stdout = None


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
    """A table that wraps what does not fit, never cutting it or leaving a column out: headers at
    their words (``log_loss`` shows as ``log loss``; ``--json`` keeps the names), cells folded."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c.replace("_", " "), overflow="fold",
                     justify="left" if c in ("task", "market", "regime", "mode", "as_of", "masks") else "right")
    for r in rows:
        t.add_row(*[fmt(r.get(c)) for c in columns])
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def print_json(obj: Any, *, one_line: bool = False) -> None:
    """One JSON document on the real stdout (also inside :func:`fails_cleanly`'s ``--json`` redirect);
    ``one_line`` for a long-running command's status, readable line by line by a supervising process."""
    stdout = _session.stdout or sys.stdout
    stdout.write(json.dumps(obj, default=str) if one_line else json.dumps(obj, indent=2, default=str))
    stdout.write("\n")
    stdout.flush()


