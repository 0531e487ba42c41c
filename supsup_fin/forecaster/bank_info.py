"""What a mask bank holds: tasks, per-layer densities, storage, overlaps, the inputs each mask reads."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supsup_fin.config import Config
from supsup_fin.errors import MaskFileError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.masks import FrozenNet, MaskBank, jaccard_chance, jaccard_matrix, layer_densities
from supsup_fin.masks.explain import TOTAL
from supsup_fin.workspace import Workspace


@dataclass(frozen=True)
class OpenedBank:
    """A mask bank, where it came from, and the input window its network reads: ``feature_names``
    and ``lookback`` from the forecaster, ``None`` for a bare bank directory (inputs by index)."""

    bank: MaskBank
    source: str
    feature_names: tuple[str, ...] | None = None
    lookback: int | None = None


def load_bank(cfg: Config, workspace: Workspace, *, path: Path | None = None, version: str = "champion") -> OpenedBank:
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
        fc = RegimeGatedForecaster.load(path)
        return OpenedBank(fc.bank, source, fc.feature_names, fc.lookback)
    if (path / "bank.json").is_file():
        spec = json.loads((path / "bank.json").read_text())
        net = FrozenNet(sizes=tuple(spec["architecture"]["sizes"]), seed=spec["seed"],
                        superfluous=spec["architecture"].get("superfluous", 0))
        return OpenedBank(MaskBank.load(path, net), source)
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
        chance = jaccard_chance([layer_densities(bank[n]) for n in names], [o * i for o, i in bank.shapes])
        info["overlap"] = {"names": list(names), "matrix": matrix.round(4).tolist(), "chance": chance.round(4).tolist()}
    return info


def explain_tables(explained: dict[str, Any]) -> dict[str, Any]:
    """:func:`~supsup_fin.masks.explain.explain_bank`'s findings as table rows and the noise levels
    to read them against.

    Returns
    -------
    dict with ``usage``: per mask ``task``, input-layer ``density``, each feature's kept fraction over
    the density (1 = uniform; when features are known) and the ``top`` input, ``feature@lag ×r``;
    ``usage_note``: what chance alone gives; ``overlap``: per regime mask, ``vs <group>``:
    ``Jaccard (chance)`` over all layers for each group of :data:`~supsup_fin.masks.explain.GROUPS`,
    and the two features it keeps most more / less of than its market's ALL mask (density points);
    ``overlap_note``: the chance spread of those.
    """
    usage, each = [], explained["masks"]
    for m in each:
        row = {"task": m["task"], "density": round(m["density"], 4)}
        if explained["inputs"] == "features":
            row |= {f: f"{r:.3f}" for f, r in m["relative_feature_usage"].items()}
        top = m["top"]
        where = f"{top['feature']}@{top['lag']}" if top["lag"] else top["feature"]
        usage.append(row | {"top": f"{where} ×{top['relative']:.2f}" if top["relative"] is not None else where})
    relative = max((m["feature_noise"] / m["density"] for m in each if m["density"] > 0), default=0.0)
    usage_note = "chance alone (1 std, binomial): " + (
        f"a feature's value varies by ±{relative:.3f} ({explained['weights_per_input']} weights per input x "
        f"{len(explained['lags'])} lags), " if explained["inputs"] == "features" else "") + (
        f"one input's kept fraction by ±{max(m['noise'] for m in each):.3f} ({explained['weights_per_input']} "
        f"weights); the masks' per-input fractions vary by {min(m['spread'] for m in each):.3f}-"
        f"{max(m['spread'] for m in each):.3f} (std)") if each else ""
    cells: dict[str, dict[str, Any]] = {}
    for r in explained["overlap"]:
        if r["layer"] == TOTAL:
            column = f"vs {r['group'].replace('_', ' ')}"
            cells.setdefault(r["task"], {"task": r["task"]})[column] = f"{r['jaccard']:.3f} ({r['chance']:.3f})"
    for task, diff in explained["usage_vs_all"].items():
        ranked = sorted(diff.items(), key=lambda kv: kv[1])
        cells[task]["more than ALL"] = ", ".join(f"{f} {v:+.1f}" for f, v in ranked[::-1][:2])
        cells[task]["less than ALL"] = ", ".join(f"{f} {v:+.1f}" for f, v in ranked[:2])
    level = max((r["chance_sd"] for r in explained["overlap_summary"] if r["layer"] == TOTAL), default=0.0)
    points = 100 * np.sqrt(2) * max((m["feature_noise"] for m in each), default=0.0)
    overlap_note = (f"one pair's overlap varies by ±{level:.3f} by chance, a feature's difference from ALL "
                    f"by ±{points:.1f} points, 1 std")
    return {"usage": usage, "usage_note": usage_note, "overlap": list(cells.values()), "overlap_note": overlap_note}
