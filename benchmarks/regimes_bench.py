"""Regime benchmarks: recovery vs the true-parameter oracle, peer check vs statsmodels, refit stability.

    python benchmarks/regimes_bench.py recovery [--markets 3] [--seed 0]
    python benchmarks/regimes_bench.py peer [--seeds 5]
    python benchmarks/regimes_bench.py stability [--step 250]
    python benchmarks/regimes_bench.py all

Each sub-command prints a table and writes ``benchmarks/results/regimes_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from hmmlearn.hmm import GaussianHMM
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from supsup_fin.data import generate_synthetic
from supsup_fin.data.oracle import oracle_filter, oracle_smooth
from supsup_fin.regimes import RegimeModel, _forward

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_END = "2012-12-31"


def _aligned_accuracy(pred: np.ndarray, truth: np.ndarray, k_true: int) -> float:
    """Share of days whose label equals the truth after the best one-to-one relabelling."""
    k = max(int(pred.max()) + 1, k_true)
    conf = np.zeros((k, k))
    np.add.at(conf, (pred, truth), 1)
    rows, cols = linear_sum_assignment(-conf)
    return float(conf[rows, cols].sum() / len(pred))


def _write(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "python": platform.python_version(), **payload}
    (RESULTS / f"regimes_{name}.json").write_text(json.dumps(payload, indent=2))


def _print(rows: list[dict], columns: list[str]) -> None:
    frame = pd.DataFrame(rows)[columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def em_from_truth(prices: pd.DataFrame, params: dict, index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Filtered and smoothed argmax labels on ``index`` of a returns HMM whose EM starts at the
    generator's true parameters (drift, vol, transitions; the small AR term dropped) and runs to
    convergence on the train segment: the maximum-likelihood optimum nearest the truth, i.e.
    what a perfect optimiser reaches on this sample."""
    r = np.log(prices["close"]).diff().dropna()
    scale = float(r.loc[:TRAIN_END].std())
    x = (r.to_numpy() / scale)[:, None]
    hmm = GaussianHMM(3, "full", n_iter=500, tol=1e-4, init_params="", random_state=0)
    hmm.startprob_ = np.full(3, 1 / 3)
    hmm.transmat_ = np.asarray(params["transition"], dtype=float)
    hmm.means_ = (np.asarray(params["drift"], dtype=float) / scale)[:, None]
    hmm.covars_ = ((np.asarray(params["vol"], dtype=float) / scale) ** 2)[:, None, None]
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("hmmlearn").setLevel(logging.ERROR)
        hmm.fit(x[: len(r.loc[:TRAIN_END])])
    log_b = _forward.gaussian_log_densities(x, hmm.means_, hmm.covars_)
    log_a = _forward.log_transmat(hmm.transmat_)
    log_alpha, _ = _forward.forward(log_b, _forward.log_transmat(hmm.startprob_), log_a)  # log, 0 -> -inf
    gamma = _forward.smooth(log_alpha, _forward.backward(log_b, log_a))
    pos = r.index.get_indexer(index)
    return log_alpha[pos].argmax(1), gamma[pos].argmax(1)


def recovery(n_markets: int, seed: int, obs: str, restarts: int, sticky: float = 0.0) -> list[dict]:
    """Fit on the train segment, score filtered/smoothed labels on every day after the warm-up."""
    rows = []
    for preset in ("easy", "hard"):
        draw = generate_synthetic(preset, n_markets, seed=seed)
        for market, prices in draw.prices.items():
            truth = draw.regimes[market]
            start = time.perf_counter()
            model = RegimeModel(3, n_restarts=restarts, random_state=seed, observations=obs,
                                sticky=sticky).fit(prices.loc[:TRAIN_END])
            fit_s = time.perf_counter() - start
            chosen = RegimeModel((2, 4), random_state=seed, observations=obs).fit(prices.loc[:TRAIN_END]).n_states_
            filt = model.filter_proba(prices)
            smooth = model.smooth_proba(prices)
            idx = filt.index
            z = truth.loc[idx].to_numpy()
            o_filt = oracle_filter(prices, draw.params).loc[idx].to_numpy().argmax(1)
            o_smooth = oracle_smooth(prices, draw.params).loc[idx].to_numpy().argmax(1)
            m_filt, m_smooth = filt.to_numpy().argmax(1), smooth.to_numpy().argmax(1)
            t_filt, t_smooth = em_from_truth(prices, draw.params, idx)
            test = idx > pd.Timestamp(TRAIN_END)
            row = {"observations": obs, "sticky": sticky, "preset": preset, "market": market,
                   "bic_states": chosen, "fit_s": fit_s}
            for tag, sel in (("all", slice(None)), ("test", test)):
                acc_f = _aligned_accuracy(m_filt[sel], z[sel], 3)
                acc_of = float((o_filt[sel] == z[sel]).mean())
                acc_s = _aligned_accuracy(m_smooth[sel], z[sel], 3)
                acc_os = float((o_smooth[sel] == z[sel]).mean())
                row |= {f"{tag}_filt": acc_f, f"{tag}_oracle_filt": acc_of, f"{tag}_filt_ratio": acc_f / acc_of,
                        f"{tag}_smooth": acc_s, f"{tag}_oracle_smooth": acc_os,
                        f"{tag}_smooth_ratio": acc_s / acc_os,
                        f"{tag}_ari_filt": adjusted_rand_score(z[sel], m_filt[sel]),
                        f"{tag}_ari_oracle_filt": adjusted_rand_score(z[sel], o_filt[sel]),
                        f"{tag}_ari_smooth": adjusted_rand_score(z[sel], m_smooth[sel]),
                        f"{tag}_em_truth_filt_ratio": _aligned_accuracy(t_filt[sel], z[sel], 3) / acc_of,
                        f"{tag}_em_truth_smooth_ratio": _aligned_accuracy(t_smooth[sel], z[sel], 3) / acc_os}
            rows.append(row)
    return rows


def peer(n_seeds: int) -> list[dict]:
    """Two-state Gaussian HMM on returns: our filter vs statsmodels MarkovRegression's."""
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    rows = []
    sigmas, transmat = np.array([0.005, 0.03]), np.array([[0.99, 0.01], [0.03, 0.97]])
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        z = np.zeros(1000, dtype=int)
        for t in range(1, 1000):
            z[t] = rng.choice(2, p=transmat[z[t - 1]])
        r = rng.normal(0.0, sigmas[z])
        index = pd.bdate_range("2001-01-02", periods=1000, name="date")
        prices = pd.DataFrame({"close": 100.0 * np.exp(np.cumsum(r))}, index=index)
        returns = np.log(prices["close"]).diff().iloc[1:] * 100.0
        res = MarkovRegression(returns.to_numpy(), k_regimes=2, switching_variance=True).fit()
        turb = int(np.argmax(np.asarray(res.params)[-2:]))
        peer_all = pd.Series(np.asarray(res.filtered_marginal_probabilities)[:, turb], index=returns.index)
        for obs in ("return", "return_vol"):
            ours = RegimeModel(2, random_state=seed, observations=obs).fit(prices).filter_proba(prices)["turbulent"]
            peer_p = peer_all.loc[ours.index]
            truth = z[-len(ours):]
            rows.append({"observations": obs, "seed": seed,
                         "argmax_agreement": float(((ours > 0.5) == (peer_p > 0.5)).mean()),
                         "corr": float(np.corrcoef(ours, peer_p)[0, 1]),
                         "mean_abs_diff": float(np.abs(ours - peer_p).mean()),
                         "ours_acc": float(((ours > 0.5).to_numpy() == truth).mean()),
                         "statsmodels_acc": float(((peer_p > 0.5).to_numpy() == truth).mean())})
    return rows


def _stability_series(name: str) -> pd.DataFrame:
    if name in ("easy", "hard"):
        return next(iter(generate_synthetic(name, 1, seed=0).prices.values()))
    from supsup_fin.config import DataConfig, MarketConfig
    from supsup_fin.data import load_prices

    lp = load_prices(MarketConfig(name=name, source="bundled", dataset=name), DataConfig(), Path("/tmp"))
    return lp.frame


def stability(step: int, n_refits: int, sticky: float = 0.0) -> list[dict]:
    """Expanding windows, refit each with previous=: label agreement on the shared days."""
    rows = []
    for name in ("sp500", "nasdaq", "wti", "easy", "hard"):
        prices = _stability_series(name)
        first = len(prices) - step * n_refits
        previous = None
        for i in range(n_refits + 1):
            train = prices.iloc[: first + i * step]
            model = RegimeModel(3, random_state=0, sticky=sticky).fit(train, previous=previous)
            if previous is not None:
                shared = prices.iloc[: first + (i - 1) * step]
                same_f = (model.filter_proba(shared).to_numpy().argmax(1)
                          == previous.filter_proba(shared).to_numpy().argmax(1)).mean()
                same_s = (model.smooth_proba(shared).to_numpy().argmax(1)
                          == previous.smooth_proba(shared).to_numpy().argmax(1)).mean()
                rows.append({"series": name, "refit": i, "train_end": str(train.index[-1].date()),
                             "permutation": str(model.permutation_), "filtered_same": float(same_f),
                             "smoothed_same": float(same_s)})
            previous = model
    return rows


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["recovery", "peer", "stability", "all"])
    ap.add_argument("--markets", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--step", type=int, default=250)
    ap.add_argument("--refits", type=int, default=4)
    ap.add_argument("--restarts", type=int, default=3, help="EM restarts of the recovery fits")
    ap.add_argument("--observations", nargs="+", default=["return_vol", "return"], choices=["return_vol", "return"])
    ap.add_argument("--sticky", nargs="+", type=float, default=[0.0],
                    help="self-transition pseudo-counts of the recovery fits (one run each)")
    args = ap.parse_args()
    if args.what in ("recovery", "all"):
        t = time.perf_counter()
        rows = [r for obs in args.observations for k in args.sticky
                for r in recovery(args.markets, args.seed, obs, args.restarts, k)]
        keys = ["observations", "sticky", "preset", "market"]
        print("Regime recovery vs the true-parameter oracle (share of days right, after alignment)")
        _print(rows, [*keys, "bic_states", "all_filt", "all_oracle_filt", "all_filt_ratio",
                      "all_smooth", "all_oracle_smooth", "all_smooth_ratio", "all_ari_filt",
                      "all_ari_oracle_filt", "all_ari_smooth", "all_em_truth_filt_ratio", "all_em_truth_smooth_ratio"])
        print("test segment only")
        _print(rows, [*keys, "test_filt", "test_oracle_filt", "test_filt_ratio", "test_smooth",
                      "test_oracle_smooth", "test_smooth_ratio", "test_ari_filt"])
        summary = pd.DataFrame(rows).groupby(["observations", "sticky", "preset"])[
            ["all_filt_ratio", "all_smooth_ratio", "test_filt_ratio", "test_smooth_ratio",
             "all_em_truth_filt_ratio", "all_em_truth_smooth_ratio"]].mean()
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
        _write("recovery", {"seed": args.seed, "restarts": args.restarts, "markets": args.markets,
                            "sticky": args.sticky, "train_end": TRAIN_END, "rows": rows,
                            "mean_by_preset": summary.reset_index().to_dict("records"),
                            "elapsed_s": time.perf_counter() - t})
    if args.what in ("peer", "all"):
        rows = peer(args.seeds)
        print("Peer check: filtered P(turbulent), ours vs statsmodels MarkovRegression (2 states)")
        _print(rows, ["observations", "seed", "argmax_agreement", "corr", "mean_abs_diff", "ours_acc",
                      "statsmodels_acc"])
        print(pd.DataFrame(rows).groupby("observations")[["argmax_agreement", "corr", "mean_abs_diff"]].mean()
              .to_string(float_format=lambda v: f"{v:.4f}"))
        _write("peer", {"rows": rows})
    if args.what in ("stability", "all"):
        rows = stability(args.step, args.refits, args.sticky[0])
        print(f"Refit stability: expanding windows, +{args.step} rows per refit, aligned with previous=")
        _print(rows, ["series", "refit", "train_end", "permutation", "filtered_same", "smoothed_same"])
        _write("stability", {"step": args.step, "refits": args.refits, "sticky": args.sticky[0], "rows": rows,
                             "min_filtered_same": min(r["filtered_same"] for r in rows),
                             "min_smoothed_same": min(r["smoothed_same"] for r in rows)})


if __name__ == "__main__":
    main()
