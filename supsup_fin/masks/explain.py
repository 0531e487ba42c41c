"""What each mask uses: the inputs its first layer reads, and how much it shares with other masks.

The network's input is a window of ``lookback`` feature rows flattened oldest first
(:func:`~supsup_fin.features.input_windows`): input ``j`` is feature ``j % F`` of row
``t - (lookback - 1 - j // F)``. A mask's input layer ``[hidden, lookback * F]`` keeps some of
the ``hidden`` weights leaving each input; the kept fraction per input, read as a
``features x lags`` table, says which inputs the first layer reads. Edge-popup keeps an exact
top-k of the whole layer, so these fractions move freely around the layer's density, whose
binomial noise for ``hidden`` weights per input is ``sqrt(d (1 - d) / hidden)``.
:func:`explain_bank` also compares each regime mask with its market's ALL mask and with other
markets' masks, layer by layer, next to the overlap independent masks would have by chance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from supsup_fin.forecaster.mask_tasks import ALL
from supsup_fin.masks.analysis import jaccard_chance, jaccard_from_counts, overlap_counts
from supsup_fin.masks.mask import Mask

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOTAL = "all"
"""Label of the margins of :func:`input_usage` (a feature over all lags, a lag over all features)."""
GROUPS = ("ALL", "same_market", "same_regime", "unrelated")
"""What :func:`compare_masks` compares a regime mask with: its market's ALL mask, the market's
other regime masks, other markets' masks of the same regime name, every other mask of other markets."""


def lag_label(lag: int) -> str:
    """``t`` for lag 0, ``t-k`` for lag k."""
    return "t" if lag == 0 else f"t-{lag}"


def input_usage(mask: Mask, feature_names: Sequence[str], lookback: int) -> pd.DataFrame:
    """Kept fraction of the input layer's weights leaving each input (feature, lag).

    Parameters
    ----------
    mask : Mask whose first layer is ``[hidden, lookback * F]``.
    feature_names : the F feature names, in the order of the network's input.
    lookback : rows in the input window.

    Returns
    -------
    DataFrame ``[F + 1, lookback + 1]``: rows the features then ``all``, columns the lags
    ``t, t-1, ..`` then ``all``. Cell (f, k): fraction of the weights from feature f at row t-k
    that the mask keeps; the ``all`` column is a feature over its lags, the ``all`` row a lag
    over the features, the corner the layer's density.
    """
    names, first = list(feature_names), mask.layers[0]
    if first.shape[1] != len(names) * lookback:
        raise ValueError(f"input_usage: {len(names)} features x lookback {lookback} = {len(names) * lookback} "
                         f"inputs expected, the mask's input layer has {first.shape[1]}")
    hidden = first.shape[0]
    kept = (first != 0).sum(dim=0).numpy().reshape(lookback, len(names))[::-1].T  # [F, lookback], lag 0 first
    grid = np.zeros((len(names) + 1, lookback + 1))
    grid[:-1, :-1] = kept / hidden
    grid[:-1, -1] = kept.sum(axis=1) / (hidden * lookback)
    grid[-1, :-1] = kept.sum(axis=0) / (hidden * len(names))
    grid[-1, -1] = kept.sum() / kept.size / hidden
    return pd.DataFrame(grid, index=pd.Index([*names, TOTAL], name="feature"),
                        columns=[*(lag_label(k) for k in range(lookback)), TOTAL])


def task_groups(bank: Mapping[str, Mask]) -> dict[str, tuple[str, str]]:
    """Task -> (market, regime) from each mask's metadata, else from its ``market/regime`` name.

    Masks with neither are left out.
    """
    out = {}
    for name in bank:
        meta = bank.meta(name) if hasattr(bank, "meta") else {}
        if "market" in meta and "regime" in meta:
            out[name] = (str(meta["market"]), str(meta["regime"]))
        elif "/" in name:
            market, _, regime = name.rpartition("/")
            out[name] = (market, regime)
    return out


_OVERLAP_COLUMNS = ["task", "market", "regime", "layer", "group", "n", "jaccard", "chance", "chance_sd"]


@dataclass(frozen=True)
class MaskComparison:
    """What :func:`compare_masks` finds.

    ``overlap``: one row per regime mask, layer (``layer0``.., ``all``) and group of
    :data:`GROUPS` that has masks: ``task, market, regime, layer, group, n, jaccard, chance,
    chance_sd`` (means over the group's masks; ``chance_sd``: the std of one pair's overlap
    between independent masks). ``usage_vs_all``: ``[regime masks x features]``, the
    feature's kept fraction in the regime mask minus in its market's ALL mask, in density
    points (percentage points of the input layer's weights).
    """

    overlap: pd.DataFrame
    usage_vs_all: pd.DataFrame


def compare_masks(
    bank: Mapping[str, Mask], feature_names: Sequence[str], lookback: int,
    tasks: Mapping[str, tuple[str, str]] | None = None,
) -> MaskComparison:
    """Each regime mask against its market's ALL mask and the other markets' masks, per layer.

    Parameters
    ----------
    bank : MaskBank or mapping name -> Mask
    feature_names, lookback : the network's input window (see :func:`input_usage`).
    tasks : task -> (market, regime); default :func:`task_groups`. Regime ``ALL`` marks a
        market's ALL mask.
    """
    tasks = task_groups(bank) if tasks is None else dict(tasks)
    names = [n for n in bank if n in tasks]
    if not names:
        return MaskComparison(pd.DataFrame(columns=_OVERLAP_COLUMNS), pd.DataFrame(columns=list(feature_names)))
    inter = overlap_counts(bank, names)[1]  # [layers, k, k]
    sizes = np.array([o * i for o, i in bank[names[0]].shapes])
    kept = np.diagonal(inter, axis1=1, axis2=2).T  # [k, layers]
    matrices = [(f"layer{i}", jaccard_from_counts(inter[i]), jaccard_chance(kept[:, i] / sizes[i]),
                 _chance_sd(kept[:, [i]], sizes[[i]])) for i in range(len(sizes))]
    matrices.append((TOTAL, jaccard_from_counts(inter.sum(axis=0)), jaccard_chance(kept / sizes, sizes),
                     _chance_sd(kept, sizes)))
    pos = {n: i for i, n in enumerate(names)}
    rows, usage_diff = [], {}
    for name in names:
        market, regime = tasks[name]
        if regime == ALL:
            continue
        others = [n for n in names if n != name]
        group = {
            "ALL": [n for n in others if tasks[n] == (market, ALL)],
            "same_market": [n for n in others if tasks[n][0] == market and tasks[n][1] != ALL],
            "same_regime": [n for n in others if tasks[n][0] != market and tasks[n][1] == regime],
            "unrelated": [n for n in others if tasks[n][0] != market and tasks[n][1] != regime],
        }
        for label, matrix, chance, sd in matrices:
            for g in GROUPS:
                idx = [pos[n] for n in group[g]]
                if idx:
                    rows.append({"task": name, "market": market, "regime": regime, "layer": label, "group": g,
                                 "n": len(idx), "jaccard": float(matrix[pos[name], idx].mean()),
                                 "chance": float(chance[pos[name], idx].mean()),
                                 "chance_sd": float(sd[pos[name], idx].mean())})
        if group["ALL"]:
            mine = input_usage(bank[name], feature_names, lookback)[TOTAL]
            base = input_usage(bank[group["ALL"][0]], feature_names, lookback)[TOTAL]
            usage_diff[name] = 100 * (mine - base).drop(TOTAL)
    usage_vs_all = pd.DataFrame(usage_diff).T.reindex(columns=list(feature_names))
    return MaskComparison(pd.DataFrame(rows, columns=_OVERLAP_COLUMNS), usage_vs_all)


def _chance_sd(kept: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Std of the Jaccard overlap of two independent masks keeping exactly ``kept [k, L]`` of the
    ``sizes [L]`` weights of each layer: the shared count is hypergeometric per layer, summed over
    the layers, and carried to ``I / (a + b - I)`` by its derivative at the mean. ``[k, k]``."""
    a, n = kept.astype(np.float64), sizes.astype(np.float64)
    mean = np.einsum("il,jl,l->ij", a, a, 1 / n)
    var = np.einsum("il,jl,l->ij", a * (n - a), a * (n - a), 1 / (n**2 * np.maximum(n - 1, 1)))
    total = a.sum(axis=1)
    both = total[:, None] + total[None, :]
    union = both - mean
    return np.where(union > 0, np.sqrt(var) * both / np.where(union > 0, union, 1.0) ** 2, 0.0)


def explain_bank(bank: Mapping[str, Mask], feature_names: Sequence[str] | None, lookback: int | None) -> dict[str, Any]:
    """What each mask's input layer reads and how the masks overlap, JSON-able.

    Parameters
    ----------
    bank : MaskBank or mapping name -> Mask
    feature_names, lookback : the network's input window; ``None`` (a bare mask bank) reads the
        inputs by index (``in0``, ``in1``, .., one lag each).

    Returns
    -------
    dict with ``inputs`` (``"features"`` or ``"index"``), ``features``, ``lags``,
    ``weights_per_input``, ``masks`` (per mask: ``task``, ``density`` of the input layer,
    ``usage`` ``[F][lags]`` kept fractions, ``feature_usage``, ``lag_usage``,
    ``relative_feature_usage`` (over the density: 1 = uniform), ``top`` and ``bottom`` input,
    ``spread``: the std of the per-input fractions, ``noise``: its binomial level
    ``sqrt(d (1 - d) / weights_per_input)``, and ``feature_noise``: that of a feature over its
    lags, ``sqrt(d (1 - d) / (weights_per_input * lookback))``), ``overlap`` (the rows of
    :func:`compare_masks`), ``overlap_summary`` (per layer and group, the mean over regime masks) and ``usage_vs_all``
    (task -> feature -> density points).
    """
    names = list(bank)
    n_inputs = bank[names[0]].shapes[0][1] if names else 0
    by_index = feature_names is None or lookback is None
    if by_index:
        feature_names, lookback = [f"in{j}" for j in range(n_inputs)], 1
    features = list(feature_names)
    lags = [""] if by_index else [lag_label(k) for k in range(lookback)]  # by index: no lag is known
    masks = [_describe(name, bank[name], features, lookback, lags) for name in names]
    comparison = compare_masks(bank, features, lookback)
    summary = (comparison.overlap.groupby(["layer", "group"], sort=False)[["jaccard", "chance", "chance_sd"]].mean()
               .reset_index().round(4).to_dict("records")) if len(comparison.overlap) else []
    return {
        "inputs": "index" if by_index else "features", "features": features, "lags": lags,
        "weights_per_input": bank[names[0]].shapes[0][0] if names else 0, "masks": masks,
        "overlap": comparison.overlap.round(4).to_dict("records"), "overlap_summary": summary,
        "usage_vs_all": {t: {f: round(float(v), 2) for f, v in row.items()}
                         for t, row in comparison.usage_vs_all.iterrows()},
    }


def _describe(name: str, mask: Mask, features: list[str], lookback: int, lags: list[str]) -> dict[str, Any]:
    """One mask's entry of :func:`explain_bank`."""
    usage = input_usage(mask, features, lookback)
    grid, by_feature, d = usage.iloc[:-1, :-1].to_numpy(), usage.iloc[:-1, -1], float(usage.iat[-1, -1])
    hidden = mask.shapes[0][0]

    def at(flat: int) -> dict[str, Any]:
        f, k = np.unravel_index(flat, grid.shape)
        return {"feature": features[f], "lag": lags[k], "usage": round(float(grid[f, k]), 4),
                "relative": round(float(grid[f, k] / d), 3) if d > 0 else None}

    return {
        "task": name, "density": d, "usage": grid.round(4).tolist(),
        "feature_usage": by_feature.round(4).to_dict(),
        "lag_usage": dict(zip(lags, usage.iloc[-1, :-1].round(4))),
        "relative_feature_usage": (by_feature / d).round(3).to_dict() if d > 0 else {},
        "top": at(int(np.argmax(grid))), "bottom": at(int(np.argmin(grid))),
        "spread": float(grid.std()), "noise": float(np.sqrt(d * (1 - d) / hidden)),
        "feature_noise": float(np.sqrt(d * (1 - d) / (hidden * lookback))),
    }


def usage_frame(explained: Mapping[str, Any]) -> pd.DataFrame:
    """:func:`explain_bank`'s usage as a long table: ``task, feature, lag, kept_fraction, relative``."""
    rows = [{"task": m["task"], "feature": f, "lag": lag, "kept_fraction": m["usage"][i][k],
             "relative": m["usage"][i][k] / m["density"] if m["density"] else float("nan")}
            for m in explained["masks"] for i, f in enumerate(explained["features"])
            for k, lag in enumerate(explained["lags"])]
    return pd.DataFrame(rows, columns=["task", "feature", "lag", "kept_fraction", "relative"])


def explain_figure(explained: Mapping[str, Any], title: str | None = None) -> Figure:
    """One heat map per mask of its input usage over the density (1.0 = uniform), and the overlaps.

    Heat maps are features x lags (inputs x one column for a bare bank), on one diverging scale
    centred on 1; the last panel shows, per layer and group of :data:`GROUPS`, the mean Jaccard
    overlap of the regime masks minus the chance level of independent masks of their densities.

    Parameters
    ----------
    explained : the output of :func:`explain_bank`.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure on an Agg canvas (no pyplot); save it with
    :func:`supsup_fin._figures.save_png`.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    masks, features, lags = explained["masks"], explained["features"], explained["lags"]
    ncols = max(1, min(4, len(masks)))
    nrows = max(1, -(-len(masks) // ncols))
    by_index = explained["inputs"] == "index"
    grids = [np.asarray(m["usage"]).T if by_index else np.asarray(m["usage"]) for m in masks]
    relative = [g / m["density"] if m["density"] > 0 else np.full(g.shape, np.nan) for g, m in zip(grids, masks)]
    floor = 2 * max((m["noise"] / m["density"] for m in masks if m["density"] > 0), default=0.1)
    reach = max([floor, *(float(np.nanmax(np.abs(r - 1), initial=0)) for r in relative)])
    rows, cols = relative[0].shape if relative else (1, 1)
    # every heat map is a tile of one image (NaN gaps between them): one axes draws far faster than many
    mosaic = np.full((nrows * (rows + 1) - 1, ncols * (cols + 1) - 1), np.nan)
    for i, rel in enumerate(relative):
        r, c = (i // ncols) * (rows + 1), (i % ncols) * (cols + 1)
        mosaic[r:r + rows, c:c + cols] = rel
    tiles = (0.4 + 0.16 * rows) * nrows  # inches
    height = tiles + 3.2
    fig = Figure(figsize=(2.4 * ncols + 1.6, height))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=[tiles, 2.2], left=0.1, right=0.88, top=1 - 0.6 / height,
                            bottom=0.3 / height, hspace=0.8 / ((tiles + 2.2) / 2))  # 0.8 inch between
    ax = fig.add_subplot(grid[0])
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=cmap, vmin=1 - reach, vmax=1 + reach, aspect="auto", interpolation="nearest")
    for i, m in enumerate(masks):
        ax.text((i % ncols) * (cols + 1) + (cols - 1) / 2, (i // ncols) * (rows + 1) - 0.6,
                f"{m['task']} (density {m['density']:.2f})", ha="center", va="bottom", fontsize=7)
    if by_index:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xticks([c * (cols + 1) + k for c in range(ncols) for k in range(cols)], lags * ncols, fontsize=6)
        ax.set_yticks([r * (rows + 1) + f for r in range(nrows) for f in range(rows)], features * nrows, fontsize=6)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(image, cax=fig.add_axes((0.9, 0.45, 0.012, 0.45)), label="kept fraction / layer density (1 = uniform)")
    _overlap_panel(fig.add_subplot(grid[1]), explained["overlap_summary"])
    fig.suptitle(title or f"What each mask's input layer reads ({len(masks)} masks; binomial noise of one "
                          f"input ±{floor / 2:.2f} relative)", fontsize=10)
    return fig


def _overlap_panel(ax: Any, summary: Sequence[Mapping[str, Any]]) -> None:
    if not summary:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no regime masks to compare", ha="center", va="center")
        return
    frame = pd.DataFrame(summary)
    layers = list(dict.fromkeys(frame["layer"]))
    groups = [g for g in GROUPS if g in set(frame["group"])]
    width = 0.8 / len(groups)
    for j, g in enumerate(groups):
        rows = frame[frame["group"] == g].set_index("layer").reindex(layers)
        ax.bar(np.arange(len(layers)) + (j - (len(groups) - 1) / 2) * width, rows["jaccard"] - rows["chance"],
               width, yerr=2 * rows["chance_sd"], error_kw={"elinewidth": 0.8, "capsize": 2},
               label=f"vs {g.replace('_', ' ')}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(layers)), layers, fontsize=8)
    ax.set_ylabel("Jaccard − chance", fontsize=8)
    ax.set_title("regime masks' mean overlap minus what independent masks of their densities share "
                 "(bars: ±2 std of one pair's overlap by chance)", fontsize=9)
    ax.legend(fontsize=7, ncols=len(groups))
