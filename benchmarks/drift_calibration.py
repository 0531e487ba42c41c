"""Drift-check calibration: how often the feature (PSI) and HMM checks fire on undrifted data.

    python benchmarks/drift_calibration.py                # 40 fresh seeds per preset, ~2 min
    python benchmarks/drift_calibration.py --seeds 10     # quicker

The small synthetic pipeline (``easy`` and ``hard`` presets, library path, no MLflow) is trained
once and its references attached (:func:`~supsup_fin.monitor.reference.attach_references`). Its
undrifted continuations are fresh draws of the same generator (seeds 100...): every
non-overlapping window of ``W`` rows is checked as the monitoring pass would check it on its last
date. Per window length ``W`` it reports, per input feature, the share of windows whose PSI is at
or above a fixed threshold (``monitor.psi_threshold``) and above a self-calibrated one (the
``q`` quantile of the feature's rolling ``W``-row PSI over its own training rows), and the share
of windows the HMM check breaches at ``monitor.hmm_quantile``. Power: the same windows with
their log returns multiplied by 3 (the last ``W`` rows' volatility jumps).

A null with nothing to drift: a constant-volatility Gaussian random walk (reference on its
first 3,000 feature rows, windows after them).

Values come from whole-series arrays (features and the HMM filter once per series); the first
windows are checked against :func:`~supsup_fin.monitor.drift.drift_checks` (equal to 1e-6).
Writes ``benchmarks/results/drift_calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import supsup_fin

ROOT = Path(supsup_fin.__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import small_config_dict  # noqa: E402  the tests' small config: two synthetic markets

from supsup_fin.config import config_from_dict  # noqa: E402
from supsup_fin.data import load_prices  # noqa: E402
from supsup_fin.data.synthetic import generate_synthetic  # noqa: E402
from supsup_fin.features import make_features  # noqa: E402
from supsup_fin.forecaster.mask_tasks import make_tasks  # noqa: E402
from supsup_fin.forecaster.prepare import build_features, fit_regimes, train_slice  # noqa: E402
from supsup_fin.forecaster.training import build_forecaster, train_tasks  # noqa: E402
from supsup_fin.monitor.drift import drift_checks, psi  # noqa: E402
from supsup_fin.monitor.hmm import loglik_reference, loglik_series, reference_quantile  # noqa: E402
from supsup_fin.monitor.reference import (  # noqa: E402
    attach_references,
    bin_fractions,
    feature_reference,
    latest_inputs,
    window_psi,
)

PRESETS = {"syn_a": "easy", "syn_b": "hard"}
THRESHOLDS = (0.25, 1.0)
QUANTILES = (0.99, 0.995)


def rolling_psi(col: np.ndarray, ref: dict, window: int) -> np.ndarray:
    """PSI of every ``window``-row run of ``col`` against ``ref`` (the reference's own computation)."""
    return window_psi(col, np.asarray(ref["edges"]), np.asarray(ref["fractions"]), window)


def volatility_jump(prices: pd.DataFrame, rows: int) -> pd.DataFrame:
    r = np.diff(np.log(prices["close"].to_numpy()))
    r[-rows:] *= 3.0
    return pd.DataFrame({"close": prices["close"].iloc[0] * np.exp(np.concatenate([[0.0], np.cumsum(r)]))},
                        index=prices.index)


def window_values(fc, market: str, prices: pd.DataFrame, window: int, feats: dict, end: int) -> tuple[list, float]:
    """Each feature's PSI and the HMM's mean log-likelihood over the ``window`` rows ending at row ``end``."""
    X = latest_inputs(fc.inputs(market, prices), len(fc.feature_names))
    v = [psi(feats[n]["fractions"], bin_fractions(X[end - window + 1:end + 1, j], feats[n]["edges"]))
         for j, n in enumerate(fc.feature_names)]
    return v, float(loglik_series(fc.markets[market].regime, prices, window).loc[prices.index[end]])


def market_rates(fc, market: str, train_prices: pd.DataFrame, cfg, window: int, seeds: range) -> dict:
    names, mm = list(fc.feature_names), fc.markets[market]
    X_train = latest_inputs(fc.inputs(market, train_prices), len(names))
    keep = (train_prices.index <= pd.Timestamp(mm.reference["train_end"])) & np.isfinite(X_train).all(axis=1)
    feats = feature_reference(X_train[keep], names, cfg.monitor.psi_bins)
    rp = np.column_stack([rolling_psi(X_train[keep][:, j], feats[n], window) for j, n in enumerate(names)])
    calibrated = {q: np.quantile(rp, q, axis=0) for q in QUANTILES}
    hmm_threshold = reference_quantile(loglik_reference(mm.regime, train_slice(train_prices, cfg.segments), window),
                                       cfg.monitor.hmm_quantile)
    values, hmm, power, power_hmm = [], [], [], []
    for seed in seeds:
        prices = generate_synthetic(PRESETS[market], seed=seed).prices[f"{PRESETS[market]}_0"]
        X = latest_inputs(fc.inputs(market, prices), len(names))
        ll = loglik_series(mm.regime, prices, window).reindex(prices.index).to_numpy()
        ends = [e for e in range(len(prices) - 1, 0, -window) if e - window + 1 >= 300]
        for e in ends:
            values.append([psi(feats[n]["fractions"], bin_fractions(X[e - window + 1:e + 1, j], feats[n]["edges"]))
                           for j, n in enumerate(names)])
            hmm.append(ll[e] < hmm_threshold)
        for e in ends[:3]:
            v, h = window_values(fc, market, volatility_jump(prices.iloc[:e + 1], window), window, feats, e)
            power.append(v)
            power_hmm.append(h < hmm_threshold)
    values, power = np.array(values), np.array(power)
    per_feature = {n: {**{f"fires_at_{t:g}": float((values[:, j] >= t).mean()) for t in THRESHOLDS},
                       **{f"fires_above_q{q:g}": float((values[:, j] > calibrated[q][j]).mean()) for q in QUANTILES},
                       **{f"threshold_q{q:g}": float(calibrated[q][j]) for q in QUANTILES},
                       "p95": float(np.quantile(values[:, j], 0.95)),
                       "power_x3_at_0.25": float((power[:, j] >= 0.25).mean()),
                       "power_x3_above_q0.99": float((power[:, j] > calibrated[0.99][j]).mean())}
                   for j, n in enumerate(names)}
    return {"windows": len(values), "features": per_feature,
            "any_feature": {**{f"fires_at_{t:g}": float((values >= t).any(axis=1).mean()) for t in THRESHOLDS},
                            **{f"fires_above_q{q:g}": float((values > calibrated[q]).any(axis=1).mean()) for q in QUANTILES}},
            "hmm_fires": float(np.mean(hmm)), "hmm_power_x3": float(np.mean(power_hmm))}


def random_walk_rates(window: int, bins: int, names: list[str]) -> dict:
    values = []
    for seed in range(20):
        r = np.random.default_rng(seed).normal(0.0002, 0.01, 5000)
        prices = pd.DataFrame({"close": 100 * np.exp(np.cumsum(r))}, index=pd.bdate_range("2000-01-03", periods=5000))
        f = make_features(prices, names).to_numpy()[100:]
        ref = feature_reference(f[:3000], names, bins)
        for e in range(3000 + window, len(f), window):
            values.append([psi(ref[n]["fractions"], bin_fractions(f[e - window:e, j], ref[n]["edges"]))
                           for j, n in enumerate(names)])
    v = np.array(values)
    return {"windows": len(v), "fires_at_0.25": dict(zip(names, (v >= 0.25).mean(axis=0).round(3).tolist())),
            "any_feature_at_0.25": float((v >= 0.25).any(axis=1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--windows", type=int, nargs="+", default=[60, 250])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift_calibration.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg = config_from_dict(small_config_dict())
    loaded = {m.name: load_prices(m, cfg.data, tempfile.mkdtemp()) for m in cfg.markets}
    prices = {n: lp.frame for n, lp in loaded.items()}
    fs = {n: build_features(n, p, cfg) for n, p in prices.items()}
    rf = {n: fit_regimes(n, p, cfg.regimes, cfg.segments) for n, p in prices.items()}
    fc = build_forecaster(fs, rf, *train_tasks(make_tasks(fs, rf, cfg), cfg), cfg)
    attach_references(fc, fs, rf, prices, cfg)
    for market, p in prices.items():  # the whole-series arrays equal the monitoring pass's own checks
        for end in (len(p) - 1, len(p) - 61):
            rows = drift_checks(fc, market, p.iloc[:end + 1], cfg.monitor)
            feats = fc.markets[market].reference["features"]
            v, h = window_values(fc, market, p, cfg.monitor.drift_window, feats, end)
            np.testing.assert_allclose([r["value"] for r in rows], [*v, h], atol=1e-6)
    out = {"seeds": args.seeds, "psi_bins": cfg.monitor.psi_bins, "hmm_quantile": cfg.monitor.hmm_quantile,
           "markets": {}, "random_walk": {}}
    for window in args.windows:
        for market in PRESETS:
            res = market_rates(fc, market, prices[market], cfg, window, range(100, 100 + args.seeds))
            out["markets"][f"{market}/W{window}"] = res
            table = pd.DataFrame(res["features"]).T[["fires_at_0.25", "fires_at_1", "p95", "threshold_q0.99",
                                                      "fires_above_q0.99", "fires_above_q0.995",
                                                      "power_x3_at_0.25", "power_x3_above_q0.99"]]
            print(f"\n{market} ({PRESETS[market]}), window {window}: {res['windows']} undrifted windows")
            print(table.round(3).to_string())
            print("any feature:", {k: round(v, 3) for k, v in res["any_feature"].items()},
                  f"| HMM fires {res['hmm_fires']:.3f}, power x3 {res['hmm_power_x3']:.3f}")
        out["random_walk"][f"W{window}"] = rw = random_walk_rates(window, cfg.monitor.psi_bins, list(fc.feature_names))
        print(f"\nrandom walk, window {window}: {rw}")
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\n{out['elapsed_s']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
