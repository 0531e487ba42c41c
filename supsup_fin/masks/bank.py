"""A named collection of binary masks over one base network, stored at 1 bit per weight.

On disk a bank is a directory:

- ``masks.safetensors``: for task ``name`` and layer ``l``, key ``f"{name}#layer{l}"`` holds the
  layer's bool mask flattened row-major and packed with ``np.packbits(..., bitorder="little")``
  (weight ``j`` is bit ``j % 8`` of byte ``j // 8``; padding bits are zero), as a uint8 vector
  of ``ceil(out * in / 8)`` bytes. Task names may contain any character ("/", "@", ...).
- ``bank.json``: ``format_version``, ``bit_order``, ``architecture.sizes``, ``seed``, ``base_hash``
  and ``tasks`` (name -> metadata, in insertion order; each holds ``method``, counted per-layer
  ``density`` and ``bits_sha256``, the sha256 of the task's packed bytes, layers in order).
  ``architecture.superfluous`` is present only for nets with superfluous output units.
- ``probs.safetensors`` (optional, only when some task stores keep probabilities, e.g. the
  ``hard_concrete`` form for stochastic inference): key ``f"{name}#layer{l}"`` holds
  ``round(255 · p)`` as uint8 ``[out * in]`` (row-major); the task's metadata then holds
  ``probs_sha256``. Banks without it are byte-for-byte what earlier versions wrote (same
  ``format_version``); files that need it fail to load if it is missing or altered.

No pickle is involved. Loading checks everything against the given network and refuses any
mismatch or corruption with :class:`~supsup_fin.errors.MaskFileError`.

Its ~400 lines are one format: the file layout above, its validation on load and the
bit packing, kept together so the format is defined in one place.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
import torch

from supsup_fin._atomic import atomic_dir, atomic_write_bytes
from supsup_fin.errors import MaskFileError
from supsup_fin.masks.mask import Mask
from supsup_fin.masks.net import FrozenNet

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BIT_ORDER = "little"
BITS_FILE = "masks.safetensors"
META_FILE = "bank.json"
PROBS_FILE = "probs.safetensors"


def quantize_probs(p: torch.Tensor) -> np.ndarray:
    """Keep probabilities ``[out, in]`` in [0, 1] -> uint8 ``round(255 p)`` flattened row-major."""
    q = torch.round(p.detach().to("cpu", torch.float32).clamp(0, 1) * 255).to(torch.uint8)
    return q.reshape(-1).numpy()


def dequantize_probs(q: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`quantize_probs` up to rounding: float32 ``q / 255`` shaped ``[out, in]``."""
    return torch.from_numpy(q.astype(np.float32) / np.float32(255)).reshape(shape)


def _key(name: str, layer: int) -> str:
    return f"{name}#layer{layer}"


def pack_layer(mask: torch.Tensor) -> np.ndarray:
    """Bool ``[out, in]`` -> packed uint8 ``[ceil(out * in / 8)]`` (row-major, little bit order)."""
    return np.packbits(mask.detach().cpu().numpy().astype(bool).ravel(), bitorder=BIT_ORDER)


def unpack_layer(bits: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack_layer`: packed uint8 bytes -> bool ``[out, in]``."""
    n = shape[0] * shape[1]
    flat = np.unpackbits(bits, count=n, bitorder=BIT_ORDER).astype(bool)
    return torch.from_numpy(flat.reshape(shape))


def _bits_sha256(packed: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for layer in packed:
        h.update(layer.tobytes())
    return h.hexdigest()


class MaskBank(Mapping[str, Mask]):
    """Read-only mapping ``task name -> Mask`` (insertion order) bound to one base network.

    Build one with :func:`~supsup_fin.masks.train_masks`, :meth:`load` or :meth:`subset`;
    ``MaskBank(net)`` is an empty bank for ``net``.

    Parameters
    ----------
    net : FrozenNet
        The base network whose sizes, seed and weights hash the bank records.
    """

    def __init__(self, net: FrozenNet) -> None:
        self.sizes: tuple[int, ...] = net.sizes
        self.seed: int = net.seed
        self.superfluous: int = net.superfluous
        self.base_hash: str = net.weights_hash()
        self._masks: dict[str, Mask] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._probs: dict[str, tuple[np.ndarray, ...]] = {}

    # -- mapping -------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Mask:
        try:
            return self._masks[name]
        except KeyError:
            raise KeyError(f"no mask named {name!r}; the bank holds {self.names}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"MaskBank(sizes={self.sizes}, seed={self.seed}, tasks={self.names})"

    @property
    def names(self) -> list[str]:
        """Task names in insertion order."""
        return list(self._masks)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Layer shapes ``((out, in), ...)`` of the base network (superfluous units included)."""
        outs = [*self.sizes[1:-1], self.sizes[-1] + self.superfluous]
        return tuple((outs[i], self.sizes[i]) for i in range(len(self.sizes) - 1))

    def meta(self, name: str) -> dict[str, Any]:
        """A copy of task ``name``'s metadata (method, per-layer density, n_train, bits_sha256, ...)."""
        self[name]
        return copy.deepcopy(self._meta[name])

    def nbytes_bits(self) -> int:
        """Bytes of packed mask bits: ``Σ_tasks Σ_layers ceil(out * in / 8)``."""
        return len(self) * sum((o * i + 7) // 8 for o, i in self.shapes)

    def nbytes_probs(self) -> int:
        """Bytes of stored uint8 keep probabilities (1 byte per weight per task that has them)."""
        return len(self._probs) * sum(o * i for o, i in self.shapes)

    def has_probabilities(self, name: str) -> bool:
        """True when task ``name`` stores keep probabilities (stochastic inference possible)."""
        self[name]
        return name in self._probs

    def probabilities(self, name: str) -> list[torch.Tensor]:
        """Task ``name``'s keep probabilities per layer, float32 ``[out, in]`` (quantised to 1/255)."""
        self[name]
        if name not in self._probs:
            method = self._meta[name].get("method")
            raise ValueError(
                f"task {name!r} ({method}) stores no keep probabilities; train a hard_concrete "
                "mask with store_probabilities=True for stochastic inference"
            )
        return [dequantize_probs(q, s) for q, s in zip(self._probs[name], self.shapes)]

    def matches(self, net: FrozenNet) -> bool:
        """True when ``net`` is the base network this bank was built on."""
        return (
            net.sizes == self.sizes and net.seed == self.seed and net.superfluous == self.superfluous
            and net.weights_hash() == self.base_hash
        )

    def subset(self, names: Iterable[str]) -> MaskBank:
        """A new bank with only ``names`` (in the given order), masks and metadata shared."""
        out = self._empty_like()
        for name in names:
            out._masks[name] = self[name]
            out._meta[name] = copy.deepcopy(self._meta[name])
            if name in self._probs:
                out._probs[name] = self._probs[name]
        return out

    def merged(self, *others: MaskBank) -> MaskBank:
        """A new bank: this bank's tasks, then each of ``others``' in order, with their metadata
        and stored keep probabilities (the bits and probabilities are the same objects).

        Every bank must be built on this bank's base network; a task name may appear only once.
        """
        out = self.subset(self.names)
        for other in others:
            if (other.sizes, other.seed, other.superfluous, other.base_hash) != (
                    self.sizes, self.seed, self.superfluous, self.base_hash):
                raise ValueError(f"cannot merge a bank built on sizes={other.sizes}, seed={other.seed} "
                                 f"into one built on sizes={self.sizes}, seed={self.seed}")
            for name in other.names:
                if name in out._masks:
                    raise ValueError(f"both banks hold a mask named {name!r}")
                out._masks[name] = other._masks[name]
                out._meta[name] = copy.deepcopy(other._meta[name])
                if name in other._probs:
                    out._probs[name] = other._probs[name]
        return out

    def _empty_like(self) -> MaskBank:
        out = MaskBank.__new__(MaskBank)
        out.sizes, out.seed, out.base_hash = self.sizes, self.seed, self.base_hash
        out.superfluous = self.superfluous
        out._masks, out._meta, out._probs = {}, {}, {}
        return out

    def extended(self, entries: Mapping[str, tuple[Any, ...]]) -> MaskBank:
        """A new bank with this bank's masks (the same objects) followed by ``entries``.

        Each entry is ``(mask, meta)`` or ``(mask, meta, probs)`` with ``probs`` a list of
        per-layer float keep probabilities (stored as uint8).
        """
        out = self.subset(self.names)
        for name, entry in entries.items():
            mask, meta = entry[0], entry[1]
            probs = entry[2] if len(entry) > 2 else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"task names must be non-empty strings, got {name!r}")
            if name in out._masks:
                raise ValueError(f"the bank already holds a mask named {name!r}")
            if not mask.is_binary or mask.shapes != self.shapes:
                raise ValueError(f"mask {name!r} must be bool with shapes {list(self.shapes)}, got {mask!r}")
            packed = [pack_layer(m) for m in mask.layers]
            full = dict(meta)
            full["density"] = [float(torch.count_nonzero(m)) / m.numel() for m in mask.layers]
            full["bits_sha256"] = _bits_sha256(packed)
            if probs is not None:
                quant = tuple(quantize_probs(p) for p in probs)
                if [q.shape[0] for q in quant] != [o * i for o, i in self.shapes]:
                    raise ValueError(f"probabilities of {name!r} must be shaped like the layers {list(self.shapes)}")
                full["probs_sha256"] = _bits_sha256(quant)
                out._probs[name] = quant
            json.dumps(full)  # fail here, not at save time, on non-JSON metadata
            out._masks[name], out._meta[name] = mask, full
        return out

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bank to directory ``path`` atomically (temp dir beside it, then swapped in).

        An existing bank directory at ``path`` is replaced (see :func:`supsup_fin._atomic.atomic_dir`);
        anything else there is refused. Returns the path.
        """
        path = Path(path)
        with atomic_dir(path, marker=META_FILE, what="mask bank") as tmp:
            tensors = {
                _key(name, i): pack_layer(layer)
                for name, mask in self._masks.items()
                for i, layer in enumerate(mask.layers)
            }
            atomic_write_bytes(tmp / BITS_FILE, safetensors.numpy.save(tensors), fsync=True)
            if self._probs:
                probs = {_key(n, i): q for n, layers in self._probs.items() for i, q in enumerate(layers)}
                atomic_write_bytes(tmp / PROBS_FILE, safetensors.numpy.save(probs), fsync=True)
            atomic_write_bytes(tmp / META_FILE, json.dumps(self._header(), indent=2).encode("utf-8"), fsync=True)
        logger.info("saved %d masks (%d bytes of bits) to %s", len(self), self.nbytes_bits(), path)
        return path

    def _header(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "bit_order": BIT_ORDER,
            "architecture": {"sizes": list(self.sizes), **({"superfluous": self.superfluous} if self.superfluous else {})},
            "seed": self.seed,
            "base_hash": self.base_hash,
            "tasks": copy.deepcopy(self._meta),
        }

    @staticmethod
    def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
        """``{"sizes", "seed", "base_hash", "names"}`` of the bank at ``path``, to rebuild its net."""
        doc = _read_header(Path(path))
        return {
            "sizes": tuple(doc["architecture"]["sizes"]),
            "superfluous": int(doc["architecture"].get("superfluous", 0)),
            "seed": doc["seed"],
            "base_hash": doc["base_hash"],
            "names": list(doc["tasks"]),
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str], net: FrozenNet) -> MaskBank:
        """Load the bank at ``path`` built on ``net``.

        Raises :class:`MaskFileError`, naming the file and what was expected vs found, on another
        format version, another base network (sizes, seed or weights hash) or corrupted bits.
        """
        path = Path(path)
        doc = _read_header(path)
        meta_file = path / META_FILE
        bank = MaskBank(net)
        for field, found, expected in (
            ("architecture.sizes", tuple(doc["architecture"]["sizes"]), bank.sizes),
            ("architecture.superfluous", doc["architecture"].get("superfluous", 0), bank.superfluous),
            ("seed", doc["seed"], bank.seed),
            ("base_hash", doc["base_hash"], bank.base_hash),
        ):
            if found != expected:
                raise MaskFileError(f"{meta_file}: {field} is {found!r} but the net has {expected!r}")
        packed = _read_bits(path / BITS_FILE, list(doc["tasks"]), bank.shapes)
        for name, meta in doc["tasks"].items():
            found = _bits_sha256(packed[name])
            expected = meta.get("bits_sha256") if isinstance(meta, dict) else None
            if found != expected:
                raise MaskFileError(
                    f"{path / BITS_FILE}: bits of task {name!r} hash to {found}, {META_FILE} expects {expected}"
                )
            bank._masks[name] = Mask([unpack_layer(b, s) for b, s in zip(packed[name], bank.shapes)])
            bank._meta[name] = meta
        with_probs = [n for n, m in doc["tasks"].items() if isinstance(m, dict) and "probs_sha256" in m]
        if with_probs:
            quant = _read_probs(path / PROBS_FILE, with_probs, bank.shapes)
            for name in with_probs:
                found = _bits_sha256(quant[name])
                if found != doc["tasks"][name]["probs_sha256"]:
                    raise MaskFileError(
                        f"{path / PROBS_FILE}: probabilities of task {name!r} hash to {found}, "
                        f"{META_FILE} expects {doc['tasks'][name]['probs_sha256']}"
                    )
                bank._probs[name] = tuple(quant[name])
        logger.info("loaded %d masks from %s", len(bank), path)
        return bank


def _read_bits(
    bits_file: Path, names: list[str], shapes: tuple[tuple[int, int], ...]
) -> dict[str, list[np.ndarray]]:
    """Packed layers of each task from ``bits_file``, checked for presence, dtype and length."""
    if not bits_file.is_file():
        raise MaskFileError(f"{bits_file}: missing; a mask bank needs {BITS_FILE} beside {META_FILE}")
    try:
        arrays = safetensors.numpy.load(bits_file.read_bytes())
    except (safetensors.SafetensorError, ValueError) as exc:
        raise MaskFileError(f"{bits_file}: not a readable safetensors file ({exc})") from exc
    expected_keys = {_key(name, i) for name in names for i in range(len(shapes))}
    if set(arrays) != expected_keys:
        missing, extra = sorted(expected_keys - set(arrays)), sorted(set(arrays) - expected_keys)
        raise MaskFileError(
            f"{bits_file}: tensors do not match {META_FILE} (missing {missing[:5]}, extra {extra[:5]})"
        )
    packed: dict[str, list[np.ndarray]] = {}
    for name in names:
        packed[name] = []
        for i, (out_f, in_f) in enumerate(shapes):
            bits, n_bytes = arrays[_key(name, i)], (out_f * in_f + 7) // 8
            if bits.dtype != np.uint8 or bits.shape != (n_bytes,):
                raise MaskFileError(
                    f"{bits_file}: {_key(name, i)!r} should be uint8 [{n_bytes}], "
                    f"found {bits.dtype} {list(bits.shape)}"
                )
            packed[name].append(bits)
    return packed


def _read_probs(
    probs_file: Path, names: list[str], shapes: tuple[tuple[int, int], ...]
) -> dict[str, list[np.ndarray]]:
    """uint8 keep probabilities of ``names`` from ``probs_file``, checked for presence and length."""
    if not probs_file.is_file():
        raise MaskFileError(f"{probs_file}: missing; {META_FILE} says tasks {names[:5]} store probabilities")
    try:
        arrays = safetensors.numpy.load(probs_file.read_bytes())
    except (safetensors.SafetensorError, ValueError) as exc:
        raise MaskFileError(f"{probs_file}: not a readable safetensors file ({exc})") from exc
    out: dict[str, list[np.ndarray]] = {}
    for name in names:
        out[name] = []
        for i, (out_f, in_f) in enumerate(shapes):
            q = arrays.get(_key(name, i))
            if q is None or q.dtype != np.uint8 or q.shape != (out_f * in_f,):
                found = "nothing" if q is None else f"{q.dtype} {list(q.shape)}"
                raise MaskFileError(f"{probs_file}: {_key(name, i)!r} should be uint8 [{out_f * in_f}], found {found}")
            out[name].append(q)
    return out


def _read_header(path: Path) -> dict[str, Any]:
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise MaskFileError(f"{meta_file}: missing; a mask bank directory holds {META_FILE} and {BITS_FILE}")
    try:
        doc = json.loads(meta_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaskFileError(f"{meta_file}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise MaskFileError(f"{meta_file}: expected a JSON object, found {type(doc).__name__}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise MaskFileError(f"{meta_file}: format_version is {version!r}, this code reads {FORMAT_VERSION}")
    if doc.get("bit_order") != BIT_ORDER:
        raise MaskFileError(f"{meta_file}: bit_order is {doc.get('bit_order')!r}, expected {BIT_ORDER!r}")
    sizes = doc.get("architecture", {}).get("sizes") if isinstance(doc.get("architecture"), dict) else None
    extra = doc.get("architecture", {}).get("superfluous", 0) if isinstance(doc.get("architecture"), dict) else 0
    if type(extra) is not int or extra < 0:
        raise MaskFileError(f"{meta_file}: architecture.superfluous should be a non-negative int, found {extra!r}")
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(type(s) is int and s > 0 for s in sizes):
        raise MaskFileError(f"{meta_file}: architecture.sizes should list positive ints, found {sizes!r}")
    if type(doc.get("seed")) is not int or not isinstance(doc.get("base_hash"), str):
        raise MaskFileError(f"{meta_file}: expected an int seed and a string base_hash")
    if not isinstance(doc.get("tasks"), dict):
        raise MaskFileError(f"{meta_file}: expected a 'tasks' object, found {type(doc.get('tasks')).__name__}")
    return doc
