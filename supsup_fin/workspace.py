"""Where supsup-fin keeps its state: the workspace directory.

``$SUPSUP_FIN_HOME`` or ``./.supsup_fin``: the MLflow sqlite store and artifacts, the price
cache, the forecasts table and the backtests' artifacts live under it.

Writers that must not overlap take a named lock in the workspace (:meth:`Workspace.lock`): one
retrain at a time (``retrain``), and the store's creation on first use (``store``). A lock is a
file lock (released by the operating system when its holder dies, ``kill -9`` included); who
holds it is written beside it, so a waiting or refused command can say so.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from supsup_fin._atomic import pid_alive
from supsup_fin.errors import SupsupError

log = logging.getLogger(__name__)


class WorkspaceBusy(SupsupError):
    """Another process holds a workspace lock for longer than this one would wait."""


def process_tags() -> dict[str, str]:
    """Who is running: the pid and host, recorded on runs so a killed process's leftovers can be found."""
    return {"supsup_fin.pid": str(os.getpid()), "supsup_fin.host": socket.gethostname()}


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process named by :func:`process_tags` still runs (None: unknown, e.g. another host)."""
    pid, host = tags.get("supsup_fin.pid"), tags.get("supsup_fin.host")
    if not pid or not pid.isdigit() or host != socket.gethostname():
        return None
    return pid_alive(int(pid))


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace; directories are created on first use."""

    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> Workspace:
        """``root``, else ``$SUPSUP_FIN_HOME``, else ``./.supsup_fin``."""
        chosen = root or os.environ.get("SUPSUP_FIN_HOME") or ".supsup_fin"
        return cls(Path(chosen).expanduser().resolve())

    def _dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def cache_dir(self) -> Path:
        return self._dir("cache")

    @property
    def artifacts_dir(self) -> Path:
        return self._dir("mlartifacts")

    @property
    def forecasts_dir(self) -> Path:
        return self._dir("forecasts")

    @property
    def monitor_dir(self) -> Path:
        """The monitoring pass's state: the alerts table."""
        return self._dir("monitor")

    @property
    def backtests_dir(self) -> Path:
        """One folder per backtest's artifacts (tables, plots, tearsheet)."""
        return self._dir("backtests")

    @property
    def log_file(self) -> Path:
        """The command line's log: every library, Prefect and MLflow record, and each error's traceback."""
        return self._dir("logs") / "supsup-fin.log"

    @contextmanager
    def lock(self, name: str, *, timeout: float, what: str = "") -> Iterator[None]:
        """Hold the workspace's ``name`` lock for the block, waiting up to ``timeout`` seconds.

        Raises :class:`WorkspaceBusy` naming the holder (pid, host, since, what) when it is not
        free in time. ``what`` describes this holder to the others.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.lock"
        holder = path.with_suffix(".lock.json")
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("waiting up to %.0f s for the workspace's %s lock (%s)", timeout, name, _holder(holder))
            try:
                lock.acquire(timeout=timeout)
            except Timeout:
                raise WorkspaceBusy(f"workspace {self.root} is busy: its {name} lock is held by "
                                    f"{_holder(holder)}; waited {timeout:.0f} s") from None
        try:
            holder.write_text(json.dumps({**process_tags(), "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                          "what": what}))
            yield
        finally:
            holder.unlink(missing_ok=True)
            lock.release()

    @property
    def mlflow_db(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / "mlflow.db"


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['supsup_fin.pid']} on {h['supsup_fin.host']} since {h['since']} ({h.get('what') or 'unknown'})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
