"""The atomic-write helpers: a failed write leaves the old file (or directory) whole and no debris."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from supsup_fin import _atomic
from supsup_fin._atomic import atomic_dir, atomic_file, atomic_write_bytes, recover_dir, replace_dir


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_write_bytes_writes_and_replaces(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "sub" / "f.bin"
    assert atomic_write_bytes(path, b"old", fsync=fsync) == path
    atomic_write_bytes(path, b"new", fsync=fsync)
    assert path.read_bytes() == b"new"
    assert names(path.parent) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # what a plain open() gives


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_directories_get_the_mode_a_plain_open_gives(tmp_path: Path, umask: int) -> None:
    """Not the 0600 of a ``mkstemp`` temporary: a PNG or table written here is readable as any file the user writes."""
    from matplotlib.figure import Figure

    from supsup_fin._figures import save_png

    old = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
        plain_dir = tmp_path / "plain_dir"
        plain_dir.mkdir()
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        with atomic_file(tmp_path / "table.parquet") as tmp:
            tmp.write_bytes(b"x")
        save_png(Figure(figsize=(1, 1)), tmp_path / "plot.png")
        with atomic_dir(tmp_path / "d", marker="spec.json", what="thing") as tmp:
            (tmp / "spec.json").write_text("{}")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode["plain"] == 0o666 & ~umask and mode["plain_dir"] == 0o777 & ~umask
    assert {n: mode[n] for n in ("f.bin", "table.parquet", "plot.png")} == dict.fromkeys(
        ("f.bin", "table.parquet", "plot.png"), mode["plain"])
    assert mode["d"] == mode["plain_dir"]


def test_a_failed_replace_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def broken(src: str, dst: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(_atomic.os, "replace", broken)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert names(tmp_path) == ["f.json"]


def test_a_failing_writer_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half way"), atomic_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp.exists() and tmp != path
        tmp.write_bytes(b"half")
        raise RuntimeError("half way")
    assert path.read_bytes() == b"old"
    assert names(tmp_path) == ["table.parquet"]


def test_atomic_dir_swaps_whole_directories_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "d"
    for content in ("one", "two"):
        with atomic_dir(path, marker="spec.json", what="thing") as tmp:
            (tmp / "spec.json").write_text(content)
            assert not (path / "spec.json").exists() or (path / "spec.json").read_text() != content
    assert (path / "spec.json").read_text() == "two" and names(tmp_path) == ["d"]

    with pytest.raises(KeyError), atomic_dir(path, marker="spec.json", what="thing") as tmp:
        (tmp / "spec.json").write_text("three")
        raise KeyError("failed build")
    assert (path / "spec.json").read_text() == "two" and names(tmp_path) == ["d"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=re.escape(f"{other} exists and is not a thing directory (no spec.json)")):
        with atomic_dir(other, marker="spec.json", what="thing"):
            pytest.fail("the block must not run")
    assert names(other) == ["keep.txt"] and names(tmp_path) == ["d", "other"]


def test_replace_dir_puts_the_old_directory_back_when_the_new_one_cannot_go_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / "d", tmp_path / "new"
    old.mkdir()
    (old / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    real = os.rename

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == new:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(_atomic.os, "rename", rename)
    with pytest.raises(OSError, match="simulated crash"):
        replace_dir(new, old)
    assert (old / "v").read_text() == "old" and names(tmp_path) == ["d", "new"]


def test_recover_dir_restores_the_newest_aside_copy_and_removes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "d"
    for stamp, content in ((1, "older"), (2, "newest")):
        aside = tmp_path / f".d.old-{stamp:020d}-abcd"
        aside.mkdir()
        (aside / "v").write_text(content)
    (tmp_path / ".dd.old-00000000000000000003-abcd").mkdir()  # another directory's: left alone
    assert recover_dir(path) == path
    assert (path / "v").read_text() == "newest"
    assert names(tmp_path) == [".dd.old-00000000000000000003-abcd", "d"]
    stale = tmp_path / ".d.old-00000000000000000009-abcd"
    stale.mkdir()
    assert recover_dir(path) is None  # d exists: a crash after the swap; the aside copy goes
    assert (path / "v").read_text() == "newest" and not stale.exists()
    assert recover_dir(tmp_path / "missing" / "x") is None


def test_a_killed_writers_temporary_is_swept_by_the_next_write(tmp_path: Path) -> None:
    """``kill -9`` mid-write leaves ``.<name>.<pid>-<id>.tmp``: the next write removes it (its
    process is gone), and keeps a live writer's."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    target = tmp_path / "table.parquet"
    dead = tmp_path / f".table.parquet.{proc.pid}-0123456789ab.tmp"
    dead.write_bytes(b"half")
    dead_dir = tmp_path / f".table.parquet.{proc.pid}-ba9876543210.tmp"
    dead_dir.mkdir()
    live = tmp_path / f".table.parquet.{os.getpid()}-0123456789ab.tmp"
    live.write_bytes(b"writing")
    assert _atomic.stale_temporaries(target) == sorted([dead, dead_dir])
    _atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not dead.exists() and not dead_dir.exists() and live.exists()
