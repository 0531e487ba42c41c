"""Corrupted model files: a flipped byte, a truncated file or an insane parameter anywhere in a saved
forecaster gives an error naming the file at load, never a different forecast."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_fin.errors import MaskFileError
from supsup_fin.forecaster import persist
from supsup_fin.forecaster.gating import RegimeGatedForecaster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_pipeline["forecaster"].save(tmp_path_factory.mktemp("saved") / "f")


def model_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_every_file_is_in_the_manifest(saved: Path) -> None:
    listed = json.loads((saved / persist.MANIFEST_FILE).read_text())["files"]
    assert sorted(listed) == [f for f in model_files(saved) if f != persist.MANIFEST_FILE]
    assert persist.check_manifest(saved, persist.manifest_sha256(saved))


def flip_and_load(saved: Path, work: Path, rel: str, position: float, bit: int) -> None:
    """Copy ``saved``, flip one bit of file ``rel`` and load: must raise naming the file."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(saved, work)
    target = work / rel
    data = bytearray(target.read_bytes())
    i = min(int(position * len(data)), len(data) - 1)
    data[i] ^= 1 << bit
    target.write_bytes(bytes(data))
    with pytest.raises(MaskFileError) as err:
        RegimeGatedForecaster.load(work)
    assert str(target) in str(err.value) or (rel == persist.MANIFEST_FILE and persist.MANIFEST_FILE in str(err.value))


def flips(n: int):  # noqa: ANN201 - a hypothesis decorator
    return settings(max_examples=n)(given(
        file_index=st.integers(0, 100), position=st.floats(0, 1), bit=st.integers(0, 7),
    ))


def _flip(saved: Path, tmp_path: Path, file_index: int, position: float, bit: int) -> None:
    files = model_files(saved)
    flip_and_load(saved, tmp_path / "w", files[file_index % len(files)], position, bit)


@flips(FUZZ_EXAMPLES // 3)
def test_a_flipped_bit_anywhere_is_named(saved: Path, tmp_path: Path, file_index: int, position: float, bit: int) -> None:
    _flip(saved, tmp_path, file_index, position, bit)


@pytest.mark.slow
@flips(FUZZ_EXAMPLES_SLOW)
def test_a_flipped_bit_anywhere_is_named_slow(saved: Path, tmp_path: Path, file_index: int, position: float, bit: int) -> None:
    _flip(saved, tmp_path, file_index, position, bit)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_spec_is_named(saved: Path, tmp_path: Path, keep: float) -> None:
    work = shutil.copytree(saved, tmp_path / "w")
    spec = work / persist.SPEC_FILE
    spec.write_bytes(spec.read_bytes()[: int(keep * spec.stat().st_size)])
    with pytest.raises(MaskFileError, match=str(spec)):
        RegimeGatedForecaster.load(work)


def rewrite_spec(saved: Path, work: Path, edit) -> Path:  # noqa: ANN001
    """A copy of ``saved`` whose spec was edited and re-manifested (a consistent but insane model)."""
    shutil.copytree(saved, work)
    spec = json.loads((work / persist.SPEC_FILE).read_text())
    edit(spec)
    (work / persist.SPEC_FILE).write_text(json.dumps(spec))
    (work / persist.MANIFEST_FILE).write_bytes(persist._manifest(work))
    return work


def first_market(spec: dict) -> dict:
    return next(iter(spec["markets"].values()))


@pytest.mark.parametrize(("field", "edit"), [
    ("transmat", lambda s: first_market(s)["regime"]["transmat"].__setitem__(0, [5.0, -4.0] + [0.0] * (len(first_market(s)["regime"]["transmat"][0]) - 2))),
    ("scaler.std", lambda s: first_market(s)["scaler"]["std"].__setitem__(0, -1.0)),
    ("scaler.mean", lambda s: first_market(s)["scaler"]["mean"].__setitem__(0, float("nan"))),
    ("prior", lambda s: first_market(s)["prior"].__setitem__(0, 0.9)),
    ("class_edges", lambda s: first_market(s)["class_edges"].reverse()),
])
def test_insane_parameters_are_refused(saved: Path, tmp_path: Path, field: str, edit) -> None:  # noqa: ANN001
    work = rewrite_spec(saved, tmp_path / "w", edit)
    with pytest.raises(MaskFileError) as err:
        RegimeGatedForecaster.load(work)
    assert str(work / persist.SPEC_FILE) in str(err.value)
    assert field in str(err.value)


def test_a_manifest_other_than_the_registered_one_is_refused(saved: Path, tmp_path: Path) -> None:
    """Files rewritten consistently (manifest included) still differ from the registration's record."""
    recorded = persist.manifest_sha256(saved)
    work = rewrite_spec(saved, tmp_path / "w", lambda s: first_market(s)["scaler"]["mean"].__setitem__(0, 0.125))
    assert RegimeGatedForecaster.load(work) is not None  # consistent on its own
    with pytest.raises(MaskFileError, match="recorded at registration"):
        persist.load_forecaster(work, expected_sha256=recorded)


def test_a_forecaster_without_manifest_still_loads(saved: Path, tmp_path: Path) -> None:
    work = shutil.copytree(saved, tmp_path / "w")
    (work / persist.MANIFEST_FILE).unlink()
    assert persist.check_manifest(work) is False
    assert RegimeGatedForecaster.load(work).horizon == RegimeGatedForecaster.load(saved).horizon
