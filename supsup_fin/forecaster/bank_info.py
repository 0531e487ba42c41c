"""What a mask bank holds: tasks, per-layer densities, storage, overlaps."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from supsup_fin.config import Config
from supsup_fin.errors import MaskFileError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank, jaccard_chance, jaccard_matrix, layer_densities
from supsup_fin.workspace import Workspace


def open_bank(cfg: Config, workspace: Workspace, *, path: Path | None = None, version: str = "champion") -> tuple[MaskBank, str]:
    """The bank in ``path`` (a forecaster or bank directory), else the registered ``version``'s."""
    if path is None:
        from supsup_fin.tracking import connect
        from supsup_fin.tracking.registry import download_forecaster

        connect(cfg.tracking, workspace)
        tmp = tempfile.mkdtemp(prefix="supsup-bank-")
        path = Path(download_forecaster(cfg.tracking.model_name, version, tmp))
        source = f"models:/{cfg.tracking.model_name} {version}"
    else:
        source = str(path)
    if (path / "forecaster.json").is_file():
        return RegimeGatedForecaster.load(path).bank, source
    if (path / "bank.json").is_file():
        spec = json.loads((path / "bank.json").read_text())
        net = FrozenNet(sizes=tuple(spec["architecture"]["sizes"]), seed=spec["seed"],
                        superfluous=spec["architecture"].get("superfluous", 0))
        return MaskBank.load(path, net), source
    raise MaskFileError(f"{path}: neither a forecaster directory (forecaster.json) nor a mask bank (bank.json)")


def describe_bank(bank: MaskBank, overlap: bool = False) -> dict[str, Any]:
    """JSON-able description: one entry per task, storage figures, optionally the Jaccard matrix."""
    tasks = []
    for name in bank.names:
        meta = bank.meta(name)
        mask = bank[name]
        tasks.append({
            "task": name, "method": meta.get("method"), "n_train": meta.get("n_train"),
            "density": float(mask.density()), "layer_density": [round(d, 4) for d in layer_densities(mask)],
            "bytes": sum((layer.numel() + 7) // 8 for layer in mask.layers),
        })
    info: dict[str, Any] = {
        "sizes": list(bank.sizes), "seed": bank.seed, "base_hash": bank.base_hash, "tasks": tasks,
        "bytes_bits": bank.nbytes_bits(),
        "bytes_dense_float32": 4 * sum(layer.numel() for name in bank.names for layer in bank[name].layers),
    }
    if overlap and bank.names:
        names, matrix = jaccard_matrix(bank)
        chance = jaccard_chance([t["density"] for t in tasks])
        info["overlap"] = {"names": list(names), "matrix": matrix.round(4).tolist(), "chance": chance.round(4).tolist()}
    return info
