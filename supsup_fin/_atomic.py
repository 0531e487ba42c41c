"""Atomic writes: a file or a directory is replaced whole, so a crash leaves the old one or the new one.

- :func:`atomic_file` / :func:`atomic_write_bytes`: the new file is written to a temporary file
  in the same folder, then ``os.replace``-d over ``path``;
- :func:`atomic_dir`: the new directory is built in a temporary directory beside ``path``, then
  swapped in by :func:`replace_dir`: the old directory is renamed aside
  (``.<name>.old-<time>-<id>``), the new one renamed in, the old one deleted. A crash between the
  two renames leaves the old directory complete in its aside name; the next :func:`atomic_dir`
  on ``path`` (or :func:`recover_dir`) renames it back first, and removes aside directories a
  crash after the swap left behind.

Temporary names carry the writer's pid (``.<name>.<pid>-<id>.tmp``): a writer killed mid-write
(``kill -9``) leaves its temporary behind, and the next write to the same path removes every
temporary whose process is gone (:func:`sweep_stale`).

One writer per path at a time: these functions make a crash safe, not concurrent writers.
Temporary files and directories get the permissions a plain ``open`` / ``mkdir`` would (umask).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from supsup_fin.errors import SupsupError

__all__ = ["atomic_dir", "atomic_file", "atomic_write_bytes", "pid_alive", "recover_dir", "replace_dir",
           "stale_temporaries", "sweep_stale"]

_ASIDE = ".old-"


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly it replaces ``path``.

    The block writes the new content to the yielded path (which exists, empty). If the block
    raises, the temporary file is removed and ``path`` is left as it was. With ``fsync`` the new
    file's data and then its folder's entry are flushed to disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = _temporary(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Replace ``path`` by a file holding ``data``, atomically (see :func:`atomic_file`); returns the path."""
    with atomic_file(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, marker: str, what: str) -> Iterator[Path]:
    """Yield a new empty directory beside ``path``; when the block ends cleanly it replaces ``path``.

    ``path`` may be absent, an empty directory or a directory holding the file ``marker`` (a
    ``what`` directory written before); anything else raises :class:`~supsup_fin.errors.SupsupError`
    (a ``ValueError``) naming it, before anything is written. If the block (or the swap) raises,
    the new directory is removed and the old one stays at ``path``.
    """
    path = Path(path)
    recover_dir(path)
    if path.exists() and not (path.is_dir() and ((path / marker).is_file() or not any(path.iterdir()))):
        raise SupsupError(f"{path} exists and is not a {what} directory (no {marker}); refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = _temporary(path)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Temporaries beside ``path`` left by writers whose process no longer exists."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix, stale = f".{path.name}.", []
    for p in path.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        pid = p.name[len(prefix):-len(".tmp")].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.append(p)
    return sorted(stale)


def sweep_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Remove what :func:`stale_temporaries` finds beside ``path``; returns what was removed."""
    removed = stale_temporaries(path)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename directory ``src`` to ``dst``; an existing ``dst`` is renamed aside first and deleted after.

    If renaming ``src`` in fails, the old ``dst`` is renamed back before the error propagates.
    """
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.rename(src, dst)
        _fsync_dir(dst.parent)
        return
    aside = dst.with_name(f".{dst.name}{_ASIDE}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")
    os.rename(dst, aside)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(aside, dst)
        raise
    _fsync_dir(dst.parent)
    shutil.rmtree(aside, ignore_errors=True)


def recover_dir(path: str | os.PathLike[str]) -> Path | None:
    """Undo what a crash inside :func:`replace_dir` left beside directory ``path``.

    If ``path`` is missing and an aside copy of it exists (a crash between the two renames), the
    newest one is renamed back to ``path``. Every other aside copy is deleted. Returns ``path``
    when it was restored, ``None`` otherwise.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return None
    prefix = f".{path.name}{_ASIDE}"
    asides = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
    restored = None
    if asides and not os.path.lexists(path):
        os.rename(asides.pop(), path)
        restored = path
    for p in asides:
        shutil.rmtree(p, ignore_errors=True)
    return restored


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
