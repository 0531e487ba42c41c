"""Stochastic vs deterministic masks, after calibration, in the same walk-forward.

    python benchmarks/stochastic_bench.py --config configs/synthetic.yaml [--samples 16]

Runs the config's walk-forward three times with the same selection slice, calibration and
gate modes, changing only the masks: the config's own (edge-popup bits, the default),
hard-concrete masks answered by their bits (``p > 0.5``), and the same hard-concrete masks
answered by the mean over S masks sampled from their keep probabilities (the seed's
"stochastic approach may provide better calibration"). Prints, per market and gate mode,
log-loss, its gap to the class prior, ECE and accuracy side by side, and writes
``benchmarks/results/stochastic_<config name>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from supsup_fin.backtest import metrics as mx
from supsup_fin.backtest.engine import run_walk_forward
from supsup_fin.config import config_from_dict, load_config
from supsup_fin.data import load_prices
from supsup_fin.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("auto", "soft", "hard", "market")


def _variant(cfg, masks: dict, label: str):
    tree = cfg.model_dump(mode="json")
    tree["masks"] = {**tree["masks"], **masks}
    tree["backtest"] = {**tree["backtest"], "baselines": ["class_prior"], "modes": list(MODES)}
    tree["gating"] = {**tree["gating"], "mode": "auto"}
    tree["training"] = {**tree["training"], "holdout_fraction": tree["training"]["holdout_fraction"] or 0.2}
    return label, config_from_dict(tree)


def _scores(rows: pd.DataFrame, classes: list[str]) -> list[dict]:
    out = []
    pcols = [f"p_{c}" for c in classes]
    for (market, strategy), g in rows.groupby(["market", "strategy"]):
        probs, y = g[pcols].to_numpy(), g["y"].to_numpy()
        ok = np.isfinite(probs).all(axis=1) & (y >= 0)
        m = mx.forecast_metrics(probs[ok], y[ok])
        out.append({"market": market, "strategy": strategy, "log_loss": m["log_loss"], "accuracy": m["accuracy"],
                    "ece": mx.expected_calibration_error(probs[ok], y[ok]), "n": int(ok.sum())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/synthetic.yaml")
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config)
    ws = Workspace.resolve(None)
    prices = {m.name: load_prices(m, cfg.data, ws.cache_dir).frame for m in cfg.markets}
    hc = {"method": "hard_concrete", "store_probabilities": True, "init_p": 0.6}
    variants = [
        _variant(cfg, {}, f"{cfg.masks.method} bits"),
        _variant(cfg, {**hc, "inference": "deterministic"}, "hard_concrete bits"),
        _variant(cfg, {**hc, "inference": "stochastic", "stochastic_samples": args.samples},
                 f"hard_concrete mean of {args.samples} sampled"),
    ]
    records, seconds = [], {}
    for label, vcfg in variants:
        start = time.perf_counter()
        fc = run_walk_forward(vcfg, prices)
        seconds[label] = round(time.perf_counter() - start, 1)
        records += [{"masks": label, **r} for r in _scores(fc.rows, fc.classes)]
    table = pd.DataFrame(records)
    prior = table[table.strategy == "class_prior"].set_index(["masks", "market"])["log_loss"]
    table = table[table.strategy != "class_prior"]
    table["minus_prior"] = [r.log_loss - prior[(r.masks, r.market)] for r in table.itertuples()]
    wide = table.pivot_table(index=["market", "strategy"], columns="masks",
                             values=["log_loss", "minus_prior", "ece", "accuracy"])
    with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(wide)
    print(f"\nseconds per walk-forward: {seconds}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"stochastic_{cfg.name}.json"
    out.write_text(json.dumps({
        "benchmark": "stochastic", "config": args.config, "samples": args.samples,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(), "seconds": seconds,
        "rows": json.loads(table.to_json(orient="records")),
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
