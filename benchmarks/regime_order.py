"""Regime order benchmark: volatility (calm / normal / turbulent) vs mean (bear / sideways / bull).

    python benchmarks/regime_order.py                          # retrain path, mask seeds 0, 1 and 2
    python benchmarks/regime_order.py --backtest               # also the walk-forward backtest per order

On the demo markets (``configs/demo.yaml``), per ``regimes.order_by`` and mask seed
(``training.seed``), the library's retrain path (build_features, fit_regimes, make_tasks,
train_tasks, build_forecaster, evaluate; no MLflow) gives per market:

- the selection slice (the last ``training.holdout_fraction`` of the training rows,
  ``MarketModel.selection``): the chosen gate mode, its log-loss, hard's, soft's and the class
  prior's;
- ``valid``: the chosen (``auto``), hard, soft and market (ALL mask) log-loss and the prior's;
- ``test``: the chosen mode's log-loss, reported only, never used for the choice.

Both orders sort the states of one and the same HMM fit, so they split the training rows alike
(checked: ``same_partition``) and train the same ALL mask (``valid_market`` equal); the regime masks
differ only by their names, which seed their initialisation. The choice reads the selection slice
only (held-out rows of the training era): the log-loss of the mean order minus the volatility
order per (market, mask seed) unit, their mean and standard error, beside the pooled per-row
difference (naive SE: the rows' targets overlap) and each order's spread across mask seeds;
``valid`` and test figures are reported, not used. Rule: the default stays ``volatility`` (a
change restarts every lineage and retrains the regime masks) unless the mean order is better by
more than one standard error on the selection slice (chosen mode).

``--backtest`` also runs the demo walk-forward (``run_walk_forward``; gate modes and the class
prior only, no dense baselines) per order and reports its held-out log-loss per mode, on the
days before the test segment and on the test segment's days apart.

Prints the tables and writes ``benchmarks/results/regime_order.json``.
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

from supsup_fin.config import Config, load_config
from supsup_fin.data import load_prices
from supsup_fin.forecaster.calibration import row_nll
from supsup_fin.forecaster.evaluate import evaluate
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.mask_tasks import make_tasks
from supsup_fin.forecaster.prepare import FeatureSet, RegimeFit, build_features, fit_regimes
from supsup_fin.forecaster.selection import selection_split
from supsup_fin.forecaster.training import build_forecaster, train_tasks
from supsup_fin.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"
ORDERS = ("volatility", "mean")
MODES = ("hard", "soft", "market")


def with_order(cfg: Config, order_by: str, seed: int) -> Config:
    """``cfg`` with ``regimes.order_by`` and the mask seed ``training.seed`` replaced."""
    return cfg.model_copy(update={
        "regimes": cfg.regimes.model_copy(update={"order_by": order_by}),
        "training": cfg.training.model_copy(update={"seed": seed}),
    })


def segment_nll(fc: RegimeGatedForecaster, fs: FeatureSet, prices: pd.DataFrame, segment: str,
                modes: tuple[str, ...]) -> dict[str, pd.Series]:
    """Per-row log-loss of each mode on ``segment``'s rows that have a forecast (as ``evaluate``)."""
    frames = fc.predict_frames(fs.market, prices, list(modes))
    idx = fs.rows(segment)
    idx = idx[np.isin(fs.dates[idx], frames[modes[0]].index)]
    pcols = [f"p_{c}" for c in fc.classes]
    return {m: pd.Series(row_nll(frames[m].loc[fs.dates[idx], pcols].to_numpy(), fs.y[idx]), index=fs.dates[idx])
            for m in modes}


def selection_nll(fc: RegimeGatedForecaster, fs: FeatureSet, rf: RegimeFit, cfg: Config) -> dict[str, pd.Series]:
    """Per-row log-loss of the gate modes on the selection slice, as the mode choice scored them
    (``chosen``: the mode it chose); their means are ``MarketModel.selection``'s."""
    mm = fc.markets[fs.market]
    hold = selection_split(fs.rows("train"), cfg.training.holdout_fraction,
                           cfg.features.horizon + cfg.features.lookback, fs.market).holdout
    hold = hold[np.isfinite(rf.next_proba[hold]).all(axis=1)]
    post = rf.next_proba[hold]
    out = {m: pd.Series(row_nll(fc.route(mm, fs.X, hold, post, m)[0], fs.y[hold]), index=fs.dates[hold])
           for m in dict.fromkeys((*MODES, mm.mode))}
    for m, v in out.items():
        assert np.isclose(v.mean(), mm.selection["log_loss"][m], rtol=0, atol=1e-9), (fs.market, m)
    out["chosen"] = out[mm.mode]
    return out


def retrain(cfg: Config, prices: dict[str, pd.DataFrame], fs: dict[str, FeatureSet]) -> dict:
    """One retrain on the library path: per market its scores and per-row log-losses."""
    rf = {n: fit_regimes(n, p, cfg.regimes, cfg.segments) for n, p in prices.items()}
    tasks = make_tasks(fs, rf, cfg)
    net, bank = train_tasks(tasks, cfg)
    fc = build_forecaster(fs, rf, net, bank, cfg)
    ev = evaluate(fc, fs, rf, prices)
    out = {}
    for market in sorted(prices):
        mm, m = fc.markets[market], ev.markets[ev.markets.market == market]
        score = {(r.segment, r.mode): r.log_loss for r in m.itertuples()}
        prior = {r.segment: r.baseline_log_loss for r in m.itertuples()}
        sel = mm.selection
        out[market] = {
            "names": list(rf[market].names), "labels": rf[market].train_labels,
            "row": {
                "chosen": sel["chosen"], "sel_chosen": sel["log_loss"][sel["chosen"]],
                "sel_hard": sel["log_loss"]["hard"], "sel_soft": sel["log_loss"]["soft"],
                "sel_prior": sel["prior_log_loss"],
                "valid_auto": score["valid", "auto"], "valid_hard": score["valid", "hard"],
                "valid_soft": score["valid", "soft"], "valid_market": score["valid", "market"],
                "valid_prior": prior["valid"], "test_auto": score["test", "auto"], "test_prior": prior["test"],
            },
            "nll": {"sel": selection_nll(fc, fs[market], rf[market], cfg),
                    "valid": segment_nll(fc, fs[market], prices[market], "valid", ("auto", *MODES))},
        }
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays split the rows alike (equal up to renaming the labels)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def paired(diffs: list[pd.Series]) -> dict[str, float]:
    """Mean and naive standard error of pooled per-row differences (rows overlap by the horizon, so
    this understates the noise)."""
    d = pd.concat(diffs).to_numpy()
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))), "n": int(len(d))}


FIGURES = {"sel_chosen": ("sel", "chosen"), "sel_hard": ("sel", "hard"), "sel_soft": ("sel", "soft"),
           "valid_auto": ("valid", "auto"), "valid_hard": ("valid", "hard"), "valid_soft": ("valid", "soft"),
           "valid_market": ("valid", "market")}
"""Compared figures: (part, mode) of the per-row log-losses of :func:`retrain`."""


def compare(runs: dict[tuple[str, int], dict], seeds: list[int]) -> dict[str, dict]:
    """Per figure, mean order minus volatility order: over (market, seed) units (each a market's
    log-loss under one mask seed; the standard error the choice uses) and over pooled rows; and the
    seed noise: the standard deviation of a market's log-loss across mask seeds, per order."""
    out = {}
    markets = sorted(runs["volatility", seeds[0]])
    for name, (part, mode) in FIGURES.items():
        nll = {k: {m: runs[k][m]["nll"][part][mode] for m in markets} for k in runs}
        units = np.array([nll["mean", s][m].mean() - nll["volatility", s][m].mean() for m in markets for s in seeds])
        se = float(units.std(ddof=1) / np.sqrt(len(units))) if len(units) > 1 else float("nan")
        rec = {"units": {"mean": float(units.mean()), "se": se, "n": int(len(units))},
               "rows": paired([nll["mean", s][m] - nll["volatility", s][m] for m in markets for s in seeds])}
        if len(seeds) > 1:
            rec["seed_sd"] = {o: float(np.mean([np.std([nll[o, s][m].mean() for s in seeds], ddof=1)
                                                for m in markets])) for o in ORDERS}
        out[name] = rec
    return out


def decide(comparison: dict[str, dict]) -> dict:
    """The rule: volatility (the current default) unless the mean order's log-loss is lower by more
    than one standard error (over (market, seed) units) on the selection slice (chosen mode)."""
    unit = comparison["sel_chosen"]["units"]
    mean_better = bool(-unit["mean"] > unit["se"])
    return {"rule": "volatility (the current default) unless mean's log-loss is lower by more than 1 SE (over "
                    "market x mask-seed units) on the selection slice (chosen mode); valid and test are reported only",
            "mean_better_by_more_than_1se": mean_better,
            "default": "mean" if mean_better else "volatility"}


def backtest(cfg: Config, prices: dict[str, pd.DataFrame], test_start: pd.Timestamp) -> dict:
    """The walk-forward per order: each gate mode's and the prior's held-out log-loss, before and
    from the test segment's start, and the per-row log-losses of the days before it."""
    from supsup_fin.backtest.engine import run_walk_forward

    bt = cfg.model_copy(update={"backtest": cfg.backtest.model_copy(update={"baselines": ("class_prior",)})})
    start = time.perf_counter()
    fc = run_walk_forward(bt, prices)
    rows = fc.rows[fc.rows["y"] >= 0]
    pcols = [f"p_{c}" for c in fc.classes]
    rows = rows[np.isfinite(rows[pcols].to_numpy()).all(axis=1)]
    nll = pd.Series(row_nll(rows[pcols].to_numpy(), rows["y"].to_numpy().astype(int)), index=rows.index)
    rows = rows.assign(nll=nll, period=np.where(pd.to_datetime(rows["date"]) < test_start, "pre_test", "test"))
    table = pd.concat([rows, rows.assign(market="all")]).groupby(["market", "strategy", "period"])["nll"].mean()
    table = table.unstack()
    pre = rows[rows.period == "pre_test"].set_index(["market", "strategy", "date"])["nll"]
    return {"seconds": round(time.perf_counter() - start, 1), "log_loss": table, "pre_test_nll": pre}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mask seeds (training.seed)")
    ap.add_argument("--backtest", action="store_true", help="also run the walk-forward backtest per order")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config)
    prices = {m.name: load_prices(m, cfg.data, Workspace.resolve(None).cache_dir).frame for m in cfg.markets}
    fs = {n: build_features(n, p, cfg) for n, p in prices.items()}
    start = time.perf_counter()
    runs = {(o, s): retrain(with_order(cfg, o, s), prices, fs) for o in ORDERS for s in args.seeds}
    elapsed = time.perf_counter() - start
    markets = sorted(prices)
    table = pd.DataFrame([{"market": m, "order_by": o, "seed": s, **runs[o, s][m]["row"]}
                          for m in markets for o in ORDERS for s in args.seeds]).set_index(["market", "order_by", "seed"])
    partitions = {m: all(same_partition(runs["volatility", s][m]["labels"], runs["mean", s][m]["labels"])
                         for s in args.seeds) for m in markets}
    names = {m: {o: runs[o, args.seeds[0]][m]["names"] for o in ORDERS} for m in markets}
    comparison = compare(runs, args.seeds)
    decision = decide(comparison)
    with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print("== per market, order and mask seed: log-loss (sel_*: selection slice; test: reported only)")
        print(table)
        print("\n== regimes per order; same training partition under both orders:")
        for m in markets:
            print(f"  {m}: {names[m]['volatility']} / {names[m]['mean']}: {partitions[m]}")
        print("\n== mean order minus volatility order (negative: mean better): over market x seed units, "
              "over pooled rows (naive SE), and each order's SD of a market's log-loss across mask seeds")
        print(pd.DataFrame({f: {**{f"units_{k}": v for k, v in c["units"].items()},
                                **{f"rows_{k}": v for k, v in c["rows"].items()},
                                **{f"seed_sd_{o}": v for o, v in c.get("seed_sd", {}).items()}}
                            for f, c in comparison.items()}).T)
        print(f"\n== decision: {decision['default']} ({decision['rule']}; "
              f"mean better: {decision['mean_better_by_more_than_1se']})")
    payload = {
        "benchmark": "regime_order", "config": args.config, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "seeds": args.seeds, "retrain_elapsed_s": round(elapsed, 1),
        "table": json.loads(table.reset_index().to_json(orient="records")), "names": names,
        "same_partition": partitions, "comparison": comparison, "decision": decision,
    }
    save(payload)
    if args.backtest:
        test_start = pd.Timestamp(cfg.segments.test[0])
        bts = {o: backtest(with_order(cfg, o, args.seeds[0]), prices, test_start) for o in ORDERS}
        bt_table = pd.concat({o: b["log_loss"] for o, b in bts.items()}, names=["order_by"])
        pre = {o: b["pre_test_nll"] for o, b in bts.items()}
        strategies = sorted(set(pre["mean"].index.get_level_values("strategy")))
        bt_diff = {s: paired([pre["mean"].xs(s, level="strategy") - pre["volatility"].xs(s, level="strategy")])
                   for s in strategies}
        with pd.option_context("display.width", 220, "display.float_format", "{:.4f}".format):
            print("\n== walk-forward backtest: held-out log-loss per order, strategy and period")
            print(bt_table.unstack("order_by"))
            print("\n== walk-forward, days before the test segment: mean order minus volatility order")
            print(pd.DataFrame(bt_diff).T)
        payload["backtest"] = {
            "seconds": {o: b["seconds"] for o, b in bts.items()}, "baselines": ["class_prior"],
            "log_loss": json.loads(bt_table.reset_index().to_json(orient="records")),
            "pre_test_mean_minus_volatility": bt_diff,
        }
        save(payload)


def save(payload: dict) -> None:
    """Write ``payload`` to ``benchmarks/results/regime_order.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "regime_order.json"
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
