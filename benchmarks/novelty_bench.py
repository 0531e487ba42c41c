"""Novel-regime detection: detection rate and delay, false alarms, and what a new mask buys.

    python benchmarks/novelty_bench.py            # ~3.5 min on 2 cores
    python benchmarks/novelty_bench.py --quick    # ~1 min: fewer, shorter markets
    python benchmarks/novelty_bench.py --seed 1   # other draws (choose thresholds on one seed, report another)

Synthetic markets (``easy`` and ``hard`` presets, :func:`supsup_fin.data.synthetic.generate_switching`)
follow their preset through the training era (2000-2009) and a year after it, then switch on
2011-01-03 into a regime the preset never produces (``KINDS``: 3 times the preset's largest
volatility; 5 times it with a drift of -0.3 % a day; a quarter of its smallest; a drift of
+0.4 % a day; AR(1) coefficient 0.6). Other markets never switch and run four years past
training. The forecaster is trained on the training era of every market at once (the library
path of the tests' ``small_pipeline``, a small net, one batched mask-training call), each market
gets its training references (HMM and novelty), and
:func:`~supsup_fin.monitor.novelty.novelty_series` runs over every row.

Measured:

- detection: an alarm onset (the first date of a run of novel dates) within ``HORIZON_DAYS``
  trading days of the switch (delay 0: on the switch date; an alarm already running on it does
  not count); the delay's median and 90th percentile over the detected markets;
- false alarms per market-year on the markets that never switch: alarm onsets after training;
- the same over the quantile thresholds (``novelty.quantile`` q, ``hmm_quantile`` 1 - q), the
  rule's window, the HMM's window, the detector (rule alone, HMM alone, both) and the rule's shape
  (``supsup``: entropy above its q quantile or score spread below its 1 - q quantile;
  ``two_sided``, the library's: either statistic outside its [1 - q, q] training range);
- forecast log-loss under the library's default check: over the ``LOSS_DAYS`` forecasts from the
  switch with the champion alone and with the new mask
  (:func:`~supsup_fin.monitor.new_mask.new_mask_challenger`, trained on the first date with
  ``min_rows`` matured novel rows of the current run; forecasts made up to that date are the
  champion's in both), and over the ``LOSS_DAYS`` forecasts after the new mask exists (``after_*``:
  champion, challenger, the class prior and the novel rows' class frequencies).

Prints the tables and writes ``benchmarks/results/novelty[_quick][_seed<N>].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from supsup_fin.config import Config, MonitorConfig, NoveltyConfig, config_from_dict
from supsup_fin.data.synthetic import (
    SYNTHETIC_PRESETS,
    NewRegime,
    SyntheticPreset,
    generate_switching,
    generate_synthetic,
)
from supsup_fin.features import classify, forward_returns
from supsup_fin.forecaster.calibration import row_nll
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.mask_tasks import make_tasks
from supsup_fin.forecaster.prepare import build_features, fit_regimes, train_slice
from supsup_fin.forecaster.training import build_forecaster, train_tasks
from supsup_fin.monitor.hmm import loglik_reference, loglik_series, reference_quantile
from supsup_fin.monitor.new_mask import new_mask_challenger
from supsup_fin.monitor.novelty import detect_novelty, novelty_reference, novelty_series
from supsup_fin.monitor.reference import attach_references

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_END, SWITCH = "2009-12-31", "2011-01-03"
HORIZON_DAYS, LOSS_DAYS = 40, 60
QUANTILES = (0.95, 0.98, 0.99, 0.995)
RULE_WINDOWS = (10, 20, 40)
HMM_WINDOWS = (20, 60)
SHAPES = ("supsup", "two_sided")
DETECTORS = ("rule", "hmm", "both")

KINDS: dict[str, Callable[[SyntheticPreset], NewRegime]] = {
    "vol_x3": lambda p: NewRegime(0.0, 3 * max(p.vol), name="vol_x3"),
    "vol_x5_drift": lambda p: NewRegime(-3e-3, 5 * max(p.vol), name="vol_x5_drift"),
    "calm_x0.25": lambda p: NewRegime(2e-4, 0.25 * min(p.vol), name="calm_x0.25"),
    "drift": lambda p: NewRegime(4e-3, p.vol[1], name="drift"),
    "ar_0.6": lambda p: NewRegime(0.0, p.vol[1], ar=0.6, name="ar_0.6"),
}
"""The unseen regimes, from a preset's parameters."""


def bench_config() -> Config:
    """A small net and short training; train 2000-2009, valid 2010, test from 2011."""
    return config_from_dict({
        "name": "novelty-bench",
        "markets": [{"name": "bench", "source": "synthetic", "dataset": "easy"}],
        "segments": {"train": [None, TRAIN_END], "valid": ["2010-01-01", "2010-12-31"], "test": ["2011-01-01", None]},
        "regimes": {"n_states": 3, "n_restarts": 1, "regime_window": 100},
        "network": {"hidden": [32, 32], "seed": 0},
        "training": {"steps": 60, "batch_size": 64},
        "runtime": {"threads": 2},
    })


def draw_markets(seed: int, quick: bool) -> tuple[dict[str, pd.DataFrame], dict[str, str | None]]:
    """Prices of every market and its kind (None: never switches). Seeds ``1000 * seed + i``."""
    per_kind, steady = (1, 2) if quick else (4, 8)
    prices, kinds = {}, {}
    presets = ("easy", "hard")
    i = 0
    for kind, make in KINDS.items():
        for j in range(per_kind):
            preset = presets[j % 2]
            draw = generate_switching(preset, make(SYNTHETIC_PRESETS[preset]), SWITCH, seed=1000 * seed + i,
                                      end="2011-09-30" if quick else "2011-12-30")
            name = f"{kind}_{preset}_{j}"
            prices[name], kinds[name] = next(iter(draw.prices.values())), kind
            i += 1
    for j in range(steady):
        preset = presets[j % 2]
        draw = generate_synthetic(preset, seed=1000 * seed + i, end="2011-12-30" if quick else "2013-12-31")
        name = f"steady_{preset}_{j}"
        prices[name], kinds[name] = next(iter(draw.prices.values())), None
        i += 1
    return prices, kinds


def build(cfg: Config, prices: dict[str, pd.DataFrame]) -> tuple[RegimeGatedForecaster, dict]:
    """The library's retrain path on every market (one mask-training call), with references."""
    fs = {n: build_features(n, p, cfg) for n, p in prices.items()}
    rf = {n: fit_regimes(n, p, cfg.regimes, cfg.segments) for n, p in prices.items()}
    net, bank = train_tasks(make_tasks(fs, rf, cfg), cfg)
    fc = build_forecaster(fs, rf, net, bank, cfg)
    attach_references(fc, fs, rf, prices, cfg)
    return fc, fs


def with_novelty(fc: RegimeGatedForecaster, market: str, X_train: np.ndarray, window: int,
                 hmm: dict[str, Any]) -> dict[str, Any]:
    """The market's reference with a novelty range for ``window`` and the HMM range ``hmm``."""
    return {**fc.markets[market].reference, "hmm": hmm,
            "novelty": novelty_reference(fc, market, X_train, NoveltyConfig(window=window))}


def flags(series: pd.DataFrame, reference: dict[str, Any], q: float, shape: str, detector: str) -> np.ndarray:
    """Per date, whether the variant says novel (thresholds read off the stored training ranges)."""
    ref = reference["novelty"]

    def cut(stat: str, p: float) -> float:
        return reference_quantile({"grid": ref["grid"], "quantiles": ref[stat]}, p)

    ent, flat = series["entropy"].to_numpy(), series["flatness"].to_numpy()
    with np.errstate(invalid="ignore"):
        rule = (ent > cut("entropy", q)) | (flat < cut("flatness", 1 - q))
        if shape == "two_sided":
            rule |= (ent < cut("entropy", 1 - q)) | (flat > cut("flatness", q))
        hmm = series["log_likelihood"].to_numpy() < reference_quantile(reference["hmm"], 1 - q)
    return {"rule": rule, "hmm": hmm, "both": rule & hmm}[detector]


def delay(flag: np.ndarray, dates: pd.DatetimeIndex) -> int | None:
    """Trading days from the switch to the first alarm onset on or after it, if within ``HORIZON_DAYS``
    (an alarm already running on the switch date is no detection)."""
    at = int(dates.searchsorted(pd.Timestamp(SWITCH)))
    onset = flag[at : at + HORIZON_DAYS + 1] & ~flag[at - 1 : at + HORIZON_DAYS]
    hit = np.flatnonzero(onset)
    return int(hit[0]) if len(hit) else None


def onsets(flag: np.ndarray) -> int:
    """Runs of flagged dates."""
    f = flag.astype(int)
    return int(f[0] + (np.diff(f) == 1).sum()) if len(f) else 0


def new_mask_losses(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, series: pd.DataFrame,
                    cfg: Config) -> dict[str, Any]:
    """Log-loss of the ``LOSS_DAYS`` forecasts from the switch (champion; with the new mask from the
    day after it is trained; class prior), and of the ``LOSS_DAYS`` forecasts after the new mask exists."""
    mm, nov = fc.markets[market], cfg.monitor.novelty
    at = int(prices.index.searchsorted(pd.Timestamp(SWITCH)))
    novel = series["novel"].to_numpy()
    trained, result = None, None
    for t in np.flatnonzero(novel[at:-1]) + at:
        start = t + 1 - int(np.argmin(novel[: t + 1][::-1])) if not novel[: t + 1].all() else 0
        if t - fc.horizon - start + 1 >= nov.min_rows:
            verdict = detect_novelty(fc, market, prices.iloc[: t + 1], cfg.monitor)
            result = new_mask_challenger(fc, market, prices.iloc[: t + 1], verdict, cfg)
            if result.status == "trained":
                trained = int(t)
                break
    y = classify(forward_returns(prices, fc.horizon).to_numpy(), mm.class_edges)
    cols = [f"p_{c}" for c in fc.classes]
    champ = fc.predict_frame(market, prices).reindex(prices.index)[cols].to_numpy()
    probs = champ.copy()
    if trained is not None:
        probs[trained + 1 :] = result.forecaster.predict_frame(market, prices).reindex(prices.index)[cols].to_numpy()[
            trained + 1 :]

    def loss(p: np.ndarray, rows: slice) -> float | None:
        yy, pp = y[rows], p[rows]
        ok = (yy >= 0) & np.isfinite(pp).all(axis=1)
        return float(row_nll(pp[ok], yy[ok]).mean()) if ok.any() else None

    prior = np.broadcast_to(mm.prior, champ.shape)
    first = slice(at, at + LOSS_DAYS)
    out = {"champion": loss(champ, first), "with_new_mask": loss(probs, first), "prior": loss(prior, first),
           "mask_trained_on": None, "days_with_new_mask": 0}
    if trained is not None:
        after = slice(trained + 1, trained + 1 + LOSS_DAYS)
        out |= {"mask_trained_on": str(prices.index[trained].date()), "mask_day": trained - at,
                "days_with_new_mask": int(max(0, at + LOSS_DAYS - trained - 1)),
                "after_n": int((y[after] >= 0).sum()), "after_champion": loss(champ, after),
                "after_new_mask": loss(probs, after), "after_prior": loss(prior, after),
                "after_novel_prior": loss(np.broadcast_to(result.forecaster.markets[market].prior, champ.shape), after),
                "calibration_weight": result.forecaster.markets[market].calibrators[result.task].weight}
    return out


def summarise(delays: list[int | None], alarms: int, years: float) -> dict[str, Any]:
    found = [d for d in delays if d is not None]
    return {"detected": len(found), "markets": len(delays), "detection_rate": len(found) / max(len(delays), 1),
            "delay_median": float(np.median(found)) if found else None,
            "delay_p90": float(np.percentile(found, 90)) if found else None,
            "false_alarms": alarms, "market_years": round(years, 2),
            "false_alarms_per_year": alarms / years if years else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter markets (~1 min)")
    ap.add_argument("--seed", type=int, default=0, help="draws use seeds 1000 * seed + i")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    started = time.perf_counter()
    cfg = bench_config()
    prices, kinds = draw_markets(args.seed, args.quick)
    fc, fs = build(cfg, prices)
    built = time.perf_counter() - started
    mon: MonitorConfig = cfg.monitor
    after = {m: p.index > pd.Timestamp(TRAIN_END) for m, p in prices.items()}
    train_X = {m: fs[m].X[fs[m].rows("train")] for m in prices}
    hmm_refs = {w: {m: _hmm_reference(fc, m, prices[m], cfg, w) for m in prices} for w in HMM_WINDOWS}

    refs = {w: {m: with_novelty(fc, m, train_X[m], w, hmm_refs[mon.drift_window][m]) for m in prices}
            for w in RULE_WINDOWS}
    series = {w: {m: novelty_series(fc, m, prices[m], refs[w][m], mon) for m in prices} for w in RULE_WINDOWS}
    loglik = {hw: {m: loglik_series(fc.markets[m].regime, prices[m], hw).reindex(prices[m].index) for m in prices}
              for hw in HMM_WINDOWS}
    default = series[mon.novelty.window]
    checked = time.perf_counter() - started - built
    for m, s in default.items():  # the library's rule is the two-sided one at the configured quantile
        assert (s["rule_novel"].to_numpy() == flags(s, refs[mon.novelty.window][m], mon.novelty.quantile,
                                                    "two_sided", "rule")).all(), m
    curve, detail = [], []
    for w in RULE_WINDOWS:
        for hw in HMM_WINDOWS:
            for q in QUANTILES:
                for shape in SHAPES:
                    for det in DETECTORS:
                        delays, alarms, years = [], 0, 0.0
                        for m in prices:
                            s = series[w][m].assign(log_likelihood=loglik[hw][m])
                            f = flags(s, {**refs[w][m], "hmm": hmm_refs[hw][m]}, q, shape, det)
                            if kinds[m] is None:
                                alarms += onsets(f[after[m]])
                                years += after[m].sum() / 252
                            else:
                                delays.append(delay(f, prices[m].index))
                                if (w, hw, q, shape, det) == (mon.novelty.window, mon.drift_window,
                                                              mon.novelty.quantile, "two_sided", "both"):
                                    detail.append({"market": m, "kind": kinds[m], "delay": delays[-1]})
                        curve.append({"rule_window": w, "hmm_window": hw, "quantile": q, "shape": shape,
                                      "detector": det, **summarise(delays, alarms, years)})
    by_kind = []
    for kind in KINDS:
        ms = [m for m in prices if kinds[m] == kind]
        for shape in SHAPES:
            for det in DETECTORS:
                ds = [delay(flags(default[m], refs[mon.novelty.window][m], mon.novelty.quantile, shape, det),
                            prices[m].index) for m in ms]
                by_kind.append({"kind": kind, "shape": shape, "detector": det, **summarise(ds, 0, 0.0)})
    losses, losses_start = [], time.perf_counter()
    for m in prices:
        if kinds[m] is not None:
            fc.markets[m] = dataclasses.replace(fc.markets[m], reference=refs[mon.novelty.window][m])
            losses.append({"market": m, "kind": kinds[m], **new_mask_losses(fc, m, prices[m], default[m], cfg)})
    elapsed = time.perf_counter() - started
    _report(curve, by_kind, losses, mon)
    payload = {
        "quick": args.quick, "seed": args.seed, "switch": SWITCH, "train_end": TRAIN_END,
        "horizon_days": HORIZON_DAYS, "loss_days": LOSS_DAYS,
        "kinds": {k: {p: vars(f(SYNTHETIC_PRESETS[p])) for p in ("easy", "hard")} for k, f in KINDS.items()},
        "markets": {m: kinds[m] for m in prices}, "config": {"network": cfg.network.model_dump(mode="json"),
                                                             "training": cfg.training.model_dump(mode="json"),
                                                             "monitor": mon.model_dump(mode="json")},
        "curve": curve, "by_kind": by_kind, "detections": detail, "losses": losses,
        "seconds": {"build": round(built, 1), "novelty_series": round(checked, 1),
                    "new_masks": round(time.perf_counter() - losses_start, 1), "total": round(elapsed, 1)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    name = "novelty" + ("_quick" if args.quick else "") + (f"_seed{args.seed}" if args.seed else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"\n{len(prices)} markets in {elapsed:.0f} s (build {built:.0f} s); wrote benchmarks/results/{name}.json")


def _hmm_reference(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, cfg: Config, window: int) -> dict:
    return loglik_reference(fc.markets[market].regime, train_slice(prices, cfg.segments), window)


def _report(curve: list[dict], by_kind: list[dict], losses: list[dict], mon: MonitorConfig) -> None:
    fmt = {"float_format": lambda v: f"{v:.3f}"}
    cols = ["detector", "shape", "quantile", "detection_rate", "delay_median", "delay_p90", "false_alarms_per_year"]
    frame = pd.DataFrame(curve)
    at = frame[(frame.rule_window == mon.novelty.window) & (frame.hmm_window == mon.drift_window)]
    print(f"Trade-off (rule window {mon.novelty.window}, HMM window {mon.drift_window}; detection within "
          f"{HORIZON_DAYS} trading days; false alarms per market-year on markets that never switch)")
    print(at[cols].to_string(index=False, **fmt))
    print("\nWindows (quantile 0.99, both)")
    print(frame[(frame["quantile"] == 0.99) & (frame.detector == "both")][
        ["shape", "rule_window", "hmm_window", "detection_rate", "delay_median", "delay_p90",
         "false_alarms_per_year"]].to_string(index=False, **fmt))
    print(f"\nBy kind (quantile {mon.novelty.quantile}, defaults)")
    print(pd.DataFrame(by_kind)[["kind", "shape", "detector", "detected", "markets", "delay_median"]]
          .to_string(index=False, **fmt))
    print(f"\nLog-loss over the {LOSS_DAYS} forecasts from the switch (library default check; champion until "
          "the new mask exists)")
    print(pd.DataFrame(losses).reindex(columns=[
        "market", "kind", "prior", "champion", "with_new_mask", "mask_day", "days_with_new_mask", "after_n",
        "after_prior", "after_novel_prior", "after_champion", "after_new_mask", "calibration_weight"]
    ).to_string(index=False, **fmt))


if __name__ == "__main__":
    main()
