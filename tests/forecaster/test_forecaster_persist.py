"""Saving a forecaster: the directory at ``path`` is the old forecaster or the new one at every step of
a save, crashes included, and a directory that is not a forecaster is never overwritten."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from supsup_fin import _atomic
from supsup_fin.errors import MaskFileError
from supsup_fin.forecaster import persist
from supsup_fin.forecaster.gating import RegimeGatedForecaster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_window(fc: RegimeGatedForecaster, infer_window: int) -> RegimeGatedForecaster:
    """The same forecaster with another infer window (what tells two saves apart)."""
    return RegimeGatedForecaster(
        fc.markets, fc.net, fc.bank, feature_names=fc.feature_names, lookback=fc.lookback,
        horizon=fc.horizon, regime_window=fc.regime_window, mode=fc.mode, infer_window=infer_window,
    )


@pytest.fixture
def old_and_new(small_pipeline: dict, tmp_path: Path) -> tuple[Path, RegimeGatedForecaster]:
    """A forecaster with infer_window 5 saved at ``tmp_path/f``, and one with window 9 to save over it."""
    fc = small_pipeline["forecaster"]
    path = with_window(fc, 5).save(tmp_path / "f")
    return path, with_window(fc, 9)


def rename_failing(monkeypatch: pytest.MonkeyPatch, fail: set[int]) -> list[tuple[str, str]]:
    """Make the directory renames of the forecaster's swap numbered in ``fail`` (from 1) raise."""
    real, calls = os.rename, []

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "bank":  # the bank swapped into the new directory: let it through
            return real(src, dst)
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) in fail:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(_atomic.os, "rename", rename)
    return calls


def test_save_replaces_the_forecaster_and_leaves_nothing_beside_it(old_and_new) -> None:
    path, new = old_and_new
    assert RegimeGatedForecaster.load(path).infer_window == 5
    assert new.save(path) == path
    assert RegimeGatedForecaster.load(path).infer_window == 9
    assert sorted(p.name for p in path.parent.iterdir()) == ["f"]
    assert sorted(p.name for p in path.iterdir()) == ["bank", "forecaster.json", "manifest.json"]


def test_save_is_the_persist_module(old_and_new) -> None:
    path, new = old_and_new
    persist.save_forecaster(new, path)
    back = persist.load_forecaster(path)
    assert isinstance(back, RegimeGatedForecaster) and back.infer_window == 9
    assert back.to_dict() == persist.forecaster_spec(new)


def test_a_failed_swap_keeps_the_previous_forecaster(old_and_new, monkeypatch: pytest.MonkeyPatch) -> None:
    path, new = old_and_new
    calls = rename_failing(monkeypatch, {2})  # old moved aside, then renaming the new one in fails
    with pytest.raises(OSError, match="simulated crash"):
        new.save(path)
    aside = calls[0][1]
    assert calls == [("f", aside), (calls[1][0], "f"), (aside, "f")]  # aside, (failed) in, back
    monkeypatch.undo()
    assert RegimeGatedForecaster.load(path).infer_window == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["f"]  # no temp or aside dirs


def test_a_failed_write_keeps_the_previous_forecaster(old_and_new, monkeypatch: pytest.MonkeyPatch) -> None:
    path, new = old_and_new

    def broken(target: Path, data: bytes, fsync: bool = False) -> None:
        target.write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(persist, "atomic_write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    assert RegimeGatedForecaster.load(path).infer_window == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["f"]


def test_a_crash_between_the_renames_is_recovered(old_and_new, monkeypatch: pytest.MonkeyPatch) -> None:
    path, new = old_and_new
    rename_failing(monkeypatch, {2, 3})  # the rename back fails too: as if the process died there
    with pytest.raises(OSError, match="simulated crash"):
        new.save(path)
    monkeypatch.undo()
    (aside,) = path.parent.iterdir()  # nothing at path, the old forecaster complete beside it
    assert aside.name.startswith(".f.old-") and not path.exists()
    with pytest.raises(MaskFileError, match="forecaster.json"):
        RegimeGatedForecaster.load(path)
    assert _atomic.recover_dir(path) == path
    assert RegimeGatedForecaster.load(path).infer_window == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["f"]


def test_the_next_save_recovers_and_cleans_up_after_a_crash(old_and_new, monkeypatch: pytest.MonkeyPatch) -> None:
    path, new = old_and_new
    rename_failing(monkeypatch, {2, 3})
    with pytest.raises(OSError):
        new.save(path)
    monkeypatch.undo()
    stale = path.parent / ".f.old-00000000000000000001-deadbeef"  # a crash after a swap, before the delete
    (stale / "bank").mkdir(parents=True)
    new.save(path)
    assert RegimeGatedForecaster.load(path).infer_window == 9
    assert sorted(p.name for p in path.parent.iterdir()) == ["f"]


def test_save_refuses_to_overwrite_what_is_not_a_forecaster(small_pipeline: dict, tmp_path: Path) -> None:
    fc = small_pipeline["forecaster"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    bank = fc.bank.save(tmp_path / "bank")  # a mask bank is not a forecaster either
    (tmp_path / "file").write_text("x")
    for target in (notes, bank, tmp_path / "file"):
        with pytest.raises(ValueError, match=re.escape(f"{target} exists and is not a forecaster directory")):
            fc.save(target)
    assert (notes / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "file", "notes"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RegimeGatedForecaster.load(fc.save(empty)).infer_window == fc.infer_window
