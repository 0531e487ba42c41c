"""Walk-forward backtest benchmark: the comparison table after costs, the targets, and the time.

    python benchmarks/backtest_bench.py --config configs/synthetic.yaml
    python benchmarks/backtest_bench.py --config configs/demo.yaml

Runs the library's backtest (no MLflow run), prints per market the comparison table
(strategies x metrics) and the target checks, and writes
``benchmarks/results/backtest_<config name>.json``:

- every market: every gate mode's log-loss vs the class prior's (target: at or below), the
  default (``auto``) forecaster's log-loss and Sharpe vs the single (ALL) mask, the logistic
  baseline and the fine-tuned dense net, and its Sharpe and drawdown vs buy-and-hold;
- synthetic markets: accuracy and log-loss vs the oracle's (targets: within 2 points and 0.02),
  accuracy vs every non-oracle baseline, and the oracle's Sharpe vs every learned strategy's
  under the same decision layer (target: at least, or within 0.1), with turnover;
- the wall time of the whole backtest (demo target: under 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from supsup_fin.backtest.report import PORTFOLIO, run_backtest
from supsup_fin.config import load_config
from supsup_fin.data import load_prices
from supsup_fin.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["sharpe", "sharpe_lo", "sharpe_hi", "dsr", "ann_return", "max_drawdown", "turnover",
           "accuracy", "log_loss", "brier"]


def _checks(table: pd.DataFrame, gated: str, synthetic: set[str]) -> list[dict]:
    rows = []
    for market in sorted({m for m, _ in table.index} - {PORTFOLIO}):
        t = table.xs(market, level="market")
        g = t.loc[gated]
        prior = t.loc["class_prior", "log_loss"] if "class_prior" in t.index else float("nan")
        modes = t[t.index.str.startswith("supsup")]
        rec = {"market": market, "gated_accuracy": g["accuracy"], "gated_log_loss": g["log_loss"],
               "class_prior_log_loss": prior, "gated_sharpe": g["sharpe"], "gated_turnover": g["turnover"],
               "every_mode_log_loss_le_prior": bool((modes["log_loss"] <= prior + 1e-9).all()),
               "worst_mode_minus_prior": float(modes["log_loss"].max() - prior)}
        for ref in ("supsup_market", "logistic", "dense_finetune"):
            if ref in t.index:
                rec[f"log_loss_le_{ref}"] = bool(g["log_loss"] <= t.loc[ref, "log_loss"])
                rec[f"sharpe_ge_{ref}"] = bool(g["sharpe"] >= t.loc[ref, "sharpe"])
        if "buy_and_hold" in t.index:
            bh = t.loc["buy_and_hold"]
            rec["sharpe_ge_buy_and_hold_and_smaller_drawdown"] = bool(
                g["sharpe"] >= bh["sharpe"] and g["max_drawdown"] > bh["max_drawdown"])
        if market in synthetic and "oracle" in t.index:
            o = t.loc["oracle"]
            learned = t.drop(index=["oracle", "buy_and_hold", "hmm_rule", "class_prior"], errors="ignore")
            others = t.drop(index=["oracle", gated]).dropna(subset=["accuracy"])
            others = others[~others.index.str.startswith("supsup")]
            rec["oracle_accuracy"] = o["accuracy"]
            rec["gap_to_oracle_pts"] = 100 * (o["accuracy"] - g["accuracy"])
            rec["within_2pts_of_oracle"] = bool(rec["gap_to_oracle_pts"] <= 2.0)
            rec["log_loss_gap_to_oracle"] = g["log_loss"] - o["log_loss"]
            rec["within_0.02_log_loss_of_oracle"] = bool(rec["log_loss_gap_to_oracle"] <= 0.02)
            rec["best_other_baseline"] = others["accuracy"].idxmax()
            rec["best_other_accuracy"] = others["accuracy"].max()
            rec["at_or_above_every_baseline"] = bool(g["accuracy"] >= others["accuracy"].max())
            rec["oracle_sharpe"] = o["sharpe"]
            rec["best_learned_sharpe"] = learned["sharpe"].max()
            rec["best_learned"] = learned["sharpe"].idxmax()
            rec["oracle_sharpe_ge_learned_minus_0.1"] = bool(o["sharpe"] >= learned["sharpe"].max() - 0.1)
            rec["oracle_turnover"] = o["turnover"]
        rows.append(rec)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compare-sequential", action="store_true",
                    help="also run the walk-forward window by window (backtest.batched false) in the same process "
                         "and compare wall time, stages and every table with the batched run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    ws = Workspace.resolve(None)
    start = time.perf_counter()
    prices = {m.name: load_prices(m, cfg.data, ws.cache_dir).frame for m in cfg.markets}
    res = run_backtest(cfg, prices)
    elapsed = time.perf_counter() - start
    gated = f"supsup_{cfg.gating.mode}"
    synthetic = {m.name for m in cfg.markets if m.source == "synthetic"}
    checks = _checks(res.table, gated, synthetic)
    with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        for market in [*sorted(res.forecasts.closes), PORTFOLIO]:
            print(f"\n== {market} (after {cfg.backtest.cost_bps + cfg.backtest.slippage_bps:g} bps per unit traded)")
            print(res.comparison(market, tuple(COLUMNS)))
        print("\n== continual path (accuracy on each window's days after training vs at the end)")
        print(res.continual)
        print("\n== storage")
        print(res.storage)
        print("\n== target checks")
        print(pd.DataFrame(checks).set_index("market").T)
    print(f"\n{len(res.forecasts.windows)} windows, {elapsed:.1f} s wall; stages {res.forecasts.timings}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"backtest_{cfg.name}.json"
    payload = {
        "benchmark": "backtest", "config": args.config, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "elapsed_s": round(elapsed, 1), "stages_s": res.forecasts.timings,
        "windows": res.windows.to_dict("records"),
        "table": json.loads(res.table.reset_index().to_json(orient="records")),
        "continual": json.loads(res.continual.reset_index().to_json(orient="records")),
        "storage": json.loads(res.storage.reset_index().to_json(orient="records")),
        "checks": json.loads(pd.DataFrame(checks).to_json(orient="records")),
    }
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out}")
    if args.compare_sequential:
        _compare_sequential(cfg, prices, res, elapsed, args.config)


def _compare_sequential(cfg, prices, batched, batched_s: float, config: str) -> None:
    """The same walk-forward window by window: wall time, stages and whether every table matches."""
    one_by_one = cfg.model_copy(update={"backtest": cfg.backtest.model_copy(update={"batched": False})})
    start = time.perf_counter()
    seq = run_backtest(one_by_one, prices)
    seq_s = time.perf_counter() - start
    same = {}
    for name in ("table", "continual", "storage"):
        a, b = getattr(batched, name), getattr(seq, name)
        same[name] = bool(a.equals(b))
        if not same[name] and a.shape == b.shape:
            num = a.select_dtypes("number")
            same[f"{name}_max_abs_diff"] = float((num - b[num.columns]).abs().max().max())
    rows_a, rows_b = batched.forecasts.rows, seq.forecasts.rows
    same["forecast_rows"] = bool(rows_a.equals(rows_b))
    bits = all(all(x.equal(y) for x, y in zip(batched.forecasts.bank[n].layers, seq.forecasts.bank[n].layers))
               for n in batched.forecasts.bank.names) and batched.forecasts.bank.names == seq.forecasts.bank.names
    record = {"benchmark": "backtest_batched_vs_sequential", "config": config, "torch_threads": torch.get_num_threads(),
              "batched_s": round(batched_s, 1), "sequential_s": round(seq_s, 1),
              "speed_up": round(seq_s / batched_s, 2), "batched_stages_s": batched.forecasts.timings,
              "sequential_stages_s": seq.forecasts.timings, "mask_bits_identical": bool(bits), "identical": same}
    print(f"\n== one batched pass vs window by window ({torch.get_num_threads()} torch threads)")
    print(pd.DataFrame({"batched": [record["batched_s"], *batched.forecasts.timings.values()],
                        "window by window": [record["sequential_s"], *seq.forecasts.timings.values()]},
                       index=["wall (s)", *batched.forecasts.timings]).to_string())
    print(f"speed-up {record['speed_up']}x; mask bits identical: {bits}; identical: {same}")
    out = RESULTS / f"backtest_{cfg.name}_batched_vs_sequential.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
