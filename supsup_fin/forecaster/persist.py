"""Saving and loading a regime-gated forecaster: ``forecaster.json`` and its mask bank in one directory.

A saved forecaster is a directory holding

- ``forecaster.json``: ``format_version``, the base ``network`` (``sizes``, ``seed``,
  ``superfluous``, ``base_hash``), the ``features`` window (``names``, ``lookback``,
  ``horizon``), ``regime_window``, ``mode``, ``infer_window``, ``stochastic_samples``, ``decision``
  (the position rule), ``min_rows``, ``classes`` and the ``markets`` (scaler, class edges, prior,
  HMM, regime -> mask map, ALL mask and, when fitted on a selection slice, class returns,
  calibration maps, the chosen gate mode and its held-out scores). Keys added after format 1's
  first release are optional, so older files load (with no calibration and no class returns);
- ``bank/``: the mask bank (:meth:`supsup_fin.masks.MaskBank.save`);
- ``manifest.json``: the sha256 of every other file. Loading checks each one, so a flipped byte
  or a truncated file anywhere gives an error naming the file instead of a different forecast
  (directories saved before the manifest existed load with a logged note). Its own sha256
  (:func:`manifest_sha256`) is recorded on the registered version.

No weights are stored: loading rebuilds the frozen network from its seed and checks its hash.
Saving is atomic (:func:`supsup_fin._atomic.atomic_dir`): the directory is built beside
``path`` and swapped in, so ``path`` holds the old forecaster or the new one, never a mix; an
existing directory that is not a forecaster is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from supsup_fin._atomic import atomic_dir, atomic_write_bytes
from supsup_fin.decision import DecisionRule
from supsup_fin.errors import MaskFileError, SupsupError
from supsup_fin.forecaster.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION", "MANIFEST_FILE", "SPEC_FILE", "check_manifest", "forecaster_spec", "load_forecaster",
    "manifest_sha256", "save_forecaster",
]

FORMAT_VERSION = 1
SPEC_FILE = "forecaster.json"
BANK_DIR = "bank"
MANIFEST_FILE = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(root: Path) -> bytes:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(root).as_posix(): _sha256(p) for p in files}
    return json.dumps({"algorithm": "sha256", "files": entries}, indent=1).encode("utf-8")


def manifest_sha256(path: str | os.PathLike[str]) -> str | None:
    """The sha256 of the forecaster directory's ``manifest.json`` (None when it has none)."""
    file = Path(path) / MANIFEST_FILE
    return _sha256(file) if file.is_file() else None


def check_manifest(path: str | os.PathLike[str], expected_sha256: str | None = None) -> bool:
    """Check every file of the forecaster directory ``path`` against its ``manifest.json``.

    With ``expected_sha256`` (recorded at registration) the manifest itself is checked first.
    Returns False when the directory has no manifest (saved before manifests existed); raises
    :class:`~supsup_fin.errors.MaskFileError` naming the first file that is missing, unlisted,
    or whose content changed.
    """
    root = Path(path)
    file = root / MANIFEST_FILE
    if not file.is_file():
        if expected_sha256:
            raise MaskFileError(f"{file}: missing (the registered version recorded manifest sha256 {expected_sha256[:12]}...)")
        return False
    if expected_sha256 and _sha256(file) != expected_sha256:
        raise MaskFileError(f"{file}: sha256 {_sha256(file)[:12]}... differs from the one recorded at "
                            f"registration ({expected_sha256[:12]}...): the model files were changed")
    try:
        listed = json.loads(file.read_text())["files"]
        listed = {str(k): str(v) for k, v in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MaskFileError(f"{file}: unreadable manifest ({type(err).__name__}: {err})") from None
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    for rel in sorted(set(listed) | present):
        if rel not in present:
            raise MaskFileError(f"{root / rel}: missing (listed in {MANIFEST_FILE})")
        if rel not in listed:
            raise MaskFileError(f"{root / rel}: not listed in {MANIFEST_FILE} (a file was added)")
        actual = _sha256(root / rel)
        if actual != listed[rel]:
            raise MaskFileError(f"{root / rel}: content changed since it was saved (sha256 {actual[:12]}..., "
                                f"{MANIFEST_FILE} says {listed[rel][:12]}...)")
    return True


def forecaster_spec(fc: RegimeGatedForecaster) -> dict[str, Any]:
    """The JSON-able content of ``forecaster.json`` for ``fc``."""
    return {
        "format_version": FORMAT_VERSION,
        "network": {"sizes": list(fc.net.sizes), "seed": fc.net.seed, "superfluous": fc.net.superfluous,
                    "base_hash": fc.net.weights_hash()},
        "features": {"names": list(fc.feature_names), "lookback": fc.lookback, "horizon": fc.horizon},
        "regime_window": fc.regime_window, "mode": fc.mode, "infer_window": fc.infer_window,
        "stochastic_samples": fc.stochastic_samples, "decision": fc.decision.to_dict(),
        "min_rows": fc.min_rows,
        "classes": fc.classes,
        "markets": {name: m.to_dict() for name, m in fc.markets.items()},
    }


def save_forecaster(fc: RegimeGatedForecaster, path: str | os.PathLike[str]) -> Path:
    """Write ``forecaster.json`` and the mask bank of ``fc`` to directory ``path``, atomically.

    An existing forecaster directory (or an empty directory) at ``path`` is replaced; anything
    else there raises :class:`~supsup_fin.errors.SupsupError` naming ``path``. Returns the path.
    """
    path = Path(path)
    spec = json.dumps(forecaster_spec(fc), indent=1).encode("utf-8")
    with atomic_dir(path, marker=SPEC_FILE, what="forecaster") as tmp:
        fc.bank.save(tmp / BANK_DIR)
        atomic_write_bytes(tmp / SPEC_FILE, spec, fsync=True)
        atomic_write_bytes(tmp / MANIFEST_FILE, _manifest(tmp), fsync=True)
    log.info("saved the forecaster (%d markets, %d masks) to %s", len(fc.markets), len(fc.bank), path)
    return path


def load_forecaster(path: str | os.PathLike[str], expected_sha256: str | None = None) -> RegimeGatedForecaster:
    """Rebuild the forecaster saved at ``path``: the base network from its seed, the masks from the bank.

    Every file is checked against ``manifest.json`` first (:func:`check_manifest`; with
    ``expected_sha256``, the manifest against the registration's record), then the parameters'
    sanity (stochastic rows, positive scales, finite values). Raises
    :class:`~supsup_fin.errors.MaskFileError` naming the file when a file changed or is
    unreadable, when ``forecaster.json`` is of another format version, holds a parameter out of
    range, or names a network whose rebuilt weights do not match its hash.
    """
    path = Path(path)
    if not check_manifest(path, expected_sha256):
        log.info("%s has no %s (saved by an earlier version): its files are not checked", path, MANIFEST_FILE)
    spec_file = path / SPEC_FILE
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskFileError(f"{spec_file}: cannot read forecaster spec: {err}") from None
    if not isinstance(spec, dict):
        raise MaskFileError(f"{spec_file}: expected a JSON object, got {type(spec).__name__}")
    if spec.get("format_version") != FORMAT_VERSION:
        raise MaskFileError(
            f"{spec_file}: format_version {spec.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    try:
        return _from_spec(spec, path, spec_file)
    except MaskFileError:
        raise
    except SupsupError as err:
        raise MaskFileError(f"{spec_file}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MaskFileError(f"{spec_file}: malformed forecaster spec ({type(err).__name__}: {err})") from None


def _from_spec(spec: dict[str, Any], path: Path, spec_file: Path) -> RegimeGatedForecaster:
    net = FrozenNet(sizes=tuple(spec["network"]["sizes"]), seed=spec["network"]["seed"],
                    superfluous=spec["network"].get("superfluous", 0))
    if net.weights_hash() != spec["network"]["base_hash"]:
        raise MaskFileError(
            f"{spec_file}: base network hash {spec['network']['base_hash'][:12]}... does not match "
            f"the network rebuilt from seed {spec['network']['seed']} ({net.weights_hash()[:12]}...)"
        )
    bank = MaskBank.load(path / BANK_DIR, net)
    f = spec["features"]
    markets = {n: MarketModel.from_dict(n, d) for n, d in spec["markets"].items()}
    return RegimeGatedForecaster(
        markets, net, bank, feature_names=tuple(f["names"]), lookback=f["lookback"],
        horizon=f["horizon"], regime_window=spec["regime_window"], mode=spec["mode"],
        infer_window=spec.get("infer_window", 16), stochastic_samples=spec.get("stochastic_samples", 0),
        decision=DecisionRule.from_dict(spec["decision"]) if "decision" in spec else None,
    )
