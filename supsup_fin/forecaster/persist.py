"""Saving and loading a regime-gated forecaster: ``forecaster.json`` and its mask bank in one directory.

A saved forecaster is a directory holding

- ``forecaster.json``: ``format_version``, the base ``network`` (``sizes``, ``seed``,
  ``superfluous``, ``base_hash``), the ``features`` window (``names``, ``lookback``,
  ``horizon``), ``regime_window``, ``mode``, ``infer_window``, ``stochastic_samples``, ``decision``
  (the position rule), ``min_rows``, ``classes`` and the ``markets`` (scaler, class edges, prior,
  HMM, regime -> mask map, ALL mask and, when fitted on a selection slice, class returns,
  calibration maps, the chosen gate mode and its held-out scores). Keys added after format 1's
  first release are optional, so older files load (with no calibration and no class returns);
- ``bank/``: the mask bank (:meth:`supsup_fin.masks.MaskBank.save`).

No weights are stored: loading rebuilds the frozen network from its seed and checks its hash.
Saving is atomic (:func:`supsup_fin._atomic.atomic_dir`): the directory is built beside
``path`` and swapped in, so ``path`` holds the old forecaster or the new one, never a mix; an
existing directory that is not a forecaster is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from supsup_fin._atomic import atomic_dir, atomic_write_bytes
from supsup_fin.decision import DecisionRule
from supsup_fin.errors import MaskFileError
from supsup_fin.forecaster.gating import MarketModel, RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "SPEC_FILE", "forecaster_spec", "load_forecaster", "save_forecaster"]

FORMAT_VERSION = 1
SPEC_FILE = "forecaster.json"
BANK_DIR = "bank"


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
    log.info("saved the forecaster (%d markets, %d masks) to %s", len(fc.markets), len(fc.bank), path)
    return path


def load_forecaster(path: str | os.PathLike[str]) -> RegimeGatedForecaster:
    """Rebuild the forecaster saved at ``path``: the base network from its seed, the masks from the bank.

    Raises :class:`~supsup_fin.errors.MaskFileError` when ``forecaster.json`` is unreadable, of
    another format version, or names a network whose rebuilt weights do not match its hash.
    """
    path = Path(path)
    spec_file = path / SPEC_FILE
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MaskFileError(f"{spec_file}: cannot read forecaster spec: {err}") from None
    if spec.get("format_version") != FORMAT_VERSION:
        raise MaskFileError(
            f"{spec_file}: format_version {spec.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
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
