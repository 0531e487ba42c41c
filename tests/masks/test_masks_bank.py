"""MaskBank files: 1-bit storage, atomic save, bit-identical load, refusal of mismatch and corruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_fin.errors import MaskFileError
from supsup_fin.masks import FrozenNet, Mask, MaskBank, train_masks
from supsup_fin.masks import bank as bank_module
from conftest import SEED

SIZES = (16, 60, 30, 3)  # 60*16 and 30*3 are not multiples of 8: padding bits are exercised
NAMES = ["sp500/calm", "sp500/ALL", "x/calm@2015-01-02"]


@pytest.fixture(scope="module")
def net() -> FrozenNet:
    return FrozenNet(SIZES, seed=0)


@pytest.fixture(scope="module")
def bank(net: FrozenNet) -> MaskBank:
    rng = np.random.default_rng(SEED)
    tasks = {n: (rng.normal(size=(100, SIZES[0])).astype(np.float32), rng.integers(0, 3, 100)) for n in NAMES}
    return train_masks(net, tasks, density=0.4, steps=10, batch_size=16, seed=SEED,
                       task_meta={"sp500/calm": {"market": "sp500", "tags": ["a", "b"]}})


@pytest.fixture
def saved(bank: MaskBank, tmp_path: Path) -> Path:
    return bank.save(tmp_path / "bank")


def test_roundtrip_is_bit_identical(bank: MaskBank, net: FrozenNet, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["bank.json", "masks.safetensors"]
    loaded = MaskBank.load(saved, net)
    assert loaded.names == NAMES
    for name in NAMES:
        assert all(torch.equal(a, b) for a, b in zip(bank[name].layers, loaded[name].layers))
        assert loaded[name].layers[0].dtype == torch.bool
        assert loaded.meta(name) == bank.meta(name)
    assert loaded.meta("sp500/calm")["tags"] == ["a", "b"]
    x = torch.randn(8, SIZES[0], generator=torch.Generator().manual_seed(SEED))
    assert torch.equal(net(x, mask=loaded["sp500/ALL"]), net(x, mask=bank["sp500/ALL"]))
    spec = MaskBank.read_spec(saved)
    assert spec == {"sizes": SIZES, "superfluous": 0, "seed": 0, "base_hash": net.weights_hash(), "names": NAMES}


def test_bank_json_layout(net: FrozenNet, saved: Path) -> None:
    doc = json.loads((saved / "bank.json").read_text())
    assert doc["format_version"] == 1 and doc["architecture"] == {"sizes": list(SIZES)}
    assert doc["seed"] == 0 and doc["base_hash"] == net.weights_hash()
    assert list(doc["tasks"]) == NAMES and doc["tasks"]["sp500/ALL"]["method"] == "edge_popup"


def test_storage_is_one_bit_per_weight(bank: MaskBank, saved: Path) -> None:
    per_task = sum(-(-o * i // 8) for o, i in bank.shapes)
    assert bank.nbytes_bits() == len(NAMES) * per_task
    size = (saved / "masks.safetensors").stat().st_size
    assert bank.nbytes_bits() <= size < bank.nbytes_bits() + 2048  # bits + a small header
    assert MaskBank(FrozenNet(SIZES, seed=0)).nbytes_bits() == 0


def test_mapping_interface(bank: MaskBank) -> None:
    assert len(bank) == 3 and "sp500/calm" in bank and "nope" not in bank and list(bank) == NAMES
    with pytest.raises(KeyError, match="nope"):
        bank["nope"]
    sub = bank.subset(["x/calm@2015-01-02", "sp500/calm"])
    assert sub.names == ["x/calm@2015-01-02", "sp500/calm"] and sub["sp500/calm"] is bank["sp500/calm"]
    meta = bank.meta("sp500/calm")
    meta["market"] = "changed"
    assert bank.meta("sp500/calm")["market"] == "sp500"


def test_save_replaces_a_bank_atomically(bank: MaskBank, net: FrozenNet, saved: Path) -> None:
    bank.subset(["sp500/calm"]).save(saved)
    assert MaskBank.load(saved, net).names == ["sp500/calm"]
    assert [p.name for p in saved.parent.iterdir()] == ["bank"]  # no temp or backup dirs left


def test_failed_save_leaves_the_old_bank_and_no_debris(
    bank: MaskBank, net: FrozenNet, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, data: bytes, fsync: bool = False) -> None:
        path.write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(bank_module, "atomic_write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        bank.subset(["sp500/calm"]).save(saved)
    assert MaskBank.load(saved, net).names == NAMES
    assert [p.name for p in saved.parent.iterdir()] == ["bank"]


def test_save_refuses_to_clobber_other_things(bank: MaskBank, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("x")
    for target in ("file", "dir"):
        with pytest.raises(ValueError, match="not a mask bank"):
            bank.save(tmp_path / target)


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) - 5]
    elif how == "flip_last":
        data[-1] ^= 0x01
    elif how == "flip_header":
        data[12] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip_last", "flip_header"])
def test_corrupted_bits_are_refused(net: FrozenNet, saved: Path, how: str) -> None:
    _corrupt(saved / "masks.safetensors", how)
    with pytest.raises(MaskFileError, match="masks.safetensors"):
        MaskBank.load(saved, net)


def test_corrupted_or_foreign_bank_json_is_refused(net: FrozenNet, saved: Path) -> None:
    meta = saved / "bank.json"
    good = meta.read_text()
    for edit, pattern in [
        (lambda d: d.update(format_version=2), "format_version is 2.*reads 1"),
        (lambda d: d["tasks"]["sp500/ALL"].update(bits_sha256="0" * 64), "'sp500/ALL'.*hash"),
        (lambda d: d["tasks"].pop("sp500/ALL"), "tensors do not match"),
    ]:
        doc = json.loads(good)
        edit(doc)
        meta.write_text(json.dumps(doc))
        with pytest.raises(MaskFileError, match=pattern):
            MaskBank.load(saved, net)
    meta.write_text(good[:-10])
    with pytest.raises(MaskFileError, match="bank.json.*not valid JSON"):
        MaskBank.load(saved, net)
    meta.unlink()
    with pytest.raises(MaskFileError, match="bank.json.*missing"):
        MaskBank.load(saved, net)


def test_wrong_base_network_is_refused(saved: Path) -> None:
    with pytest.raises(MaskFileError, match=r"bank.json: seed is 0 but the net has 1"):
        MaskBank.load(saved, FrozenNet(SIZES, seed=1))
    with pytest.raises(MaskFileError, match=r"architecture.sizes"):
        MaskBank.load(saved, FrozenNet((16, 60, 31, 3), seed=0))


def test_banks_hold_only_binary_masks_of_the_net(bank: MaskBank) -> None:
    floats = Mask([torch.ones(o, i) for o, i in bank.shapes])
    with pytest.raises(ValueError, match="must be bool"):
        bank.extended({"f": (floats, {})})
