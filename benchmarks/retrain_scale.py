"""Retrain time and memory for many synthetic markets (10 years of daily data each, 3 regimes, no BIC
search), in one process (threads) and on a local Dask cluster, and how the cost grows with markets.

    python benchmarks/retrain_scale.py [--markets 25 50 100] [--runners threads dask] [--workers 2]
    python benchmarks/retrain_scale.py --quick          # 2 and 4 markets, 30 steps: a smoke run
    python benchmarks/retrain_scale.py --markets 1000 --runners dask --with benchmarks/results/retrain_scale_100_dask.json

Each size's markets are generated once (market i is the same series whichever the size) and every
run gets a fresh process and workspace (own MLflow store), so each run's peak memory is its own: one
process, its peak RSS; Dask, the driver's (the scheduler runs in it) and each worker's. For Dask the
benchmark starts the Prefect server and a local cluster of ``--workers`` processes x 1 thread and
points ``runtime.dask_address`` at it: ``wall_s`` is the flow alone, ``startup_s`` the server and
cluster; ``prefect_task_run_s`` what an empty task costs on the same server and cluster. Prints a
table, the bytes the Dask tasks move per market (:func:`travel_bytes`), and a linearity summary per
runner (per-market cost at each size, the least-squares slope of wall time against markets, and the
per-market cost at the largest size over the one at 100 markets), with the rows of the ``--with``
files counted in; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("ingest", "features_regimes", "train_masks", "evaluate", "log_register")
"""The retrain's timed stages (its summary's ``timings_s``)."""


def market_files(n: int, root: Path, seed: int = 0) -> list[dict]:
    """``n`` synthetic markets (``easy`` and ``hard`` presets, half each), 2009-2018 business days, as
    CSV files. Market ``easy_i`` / ``hard_i`` is the same series at every ``n``."""
    from supsup_fin.data.synthetic import generate_synthetic

    markets = []
    for preset, count in (("easy", (n + 1) // 2), ("hard", n // 2)):
        if not count:
            continue
        draw = generate_synthetic(preset, n_markets=count, seed=seed, start="2009-01-01", end="2018-12-31")
        for name, frame in draw.prices.items():
            path = root / f"{name}.csv"
            frame.reset_index().to_csv(path, index=False)
            markets.append({"name": name, "source": "file", "path": str(path), "asset_class": "synthetic"})
    return markets


def bench_config(markets: list[dict], runner: str, workers: int, steps: int | None, threads: int = 1,
                 groups: str = "all") -> dict:
    tree = {
        "name": "bench", "markets": markets,
        "segments": {"train": [None, "2014-12-31"], "valid": ["2015-01-01", "2016-12-31"], "test": ["2017-01-01", None]},
        "regimes": {"n_states": 3, "n_restarts": 1},
        "tracking": {"experiment": "bench", "model_name": "bench", "carry_over": False},
        "runtime": {"threads": threads, "task_runner": runner, "n_workers": workers, "threads_per_worker": 1,
                    "max_workers": 2, "training_groups": groups},
    }
    if steps:
        tree["training"] = {"steps": steps}
    return tree


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(markets: list[dict], runner: str, workers: int, steps: int | None, threads: int = 1,
        groups: str = "all", probe: int = 0) -> dict:
    """One retrain of ``markets`` in a fresh workspace, in this process; its row of the table."""
    from pipelines import prefect_defaults

    prefect_defaults()  # before anything imports Prefect (it reads its settings then)
    from pipelines.retrain import run_retrain
    from supsup_fin.config import config_from_dict

    tree = bench_config(markets, runner, workers, steps, threads, groups)
    memory: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        t0 = time.perf_counter()
        if runner == "threads":
            summary = run_retrain(config_from_dict(tree), ws)
            wall, startup = time.perf_counter() - t0, 0.0
        else:
            summary, wall, startup, memory = _on_local_cluster(tree, ws, workers, probe)
    n = len(markets)
    return {"markets": n, "runner": runner, "workers": workers if runner == "dask" else 1,
            "torch_threads": threads, "groups": "market" if runner == "dask" else groups,
            "tasks": len(summary["tasks"]), "wall_s": round(wall, 1), "startup_s": round(startup, 1),
            "per_market_s": round(wall / n, 3), **{f"{k}_s": v for k, v in summary["timings_s"].items()},
            "peak_rss_mb": peak_rss_mb(), **memory}


def _on_local_cluster(tree: dict, ws: Path, workers: int, probe: int) -> tuple[dict, float, float, dict]:
    """The retrain on a Prefect server and a local cluster this function starts (so that it can read
    each worker's peak RSS before the cluster stops): summary, flow wall, start-up time, and memory
    (with ``probe`` > 0 also the seconds per task run of ``probe`` empty tasks after it)."""
    from dask.distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines._server import prefect_server
    from pipelines.retrain import run_retrain
    from supsup_fin.config import config_from_dict
    from supsup_fin.workspace import Workspace

    t0 = time.perf_counter()
    with prefect_server(Workspace.resolve(ws), _free_port()) as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # the workers inherit it
        try:
            with (LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None) as cluster, Client(cluster) as client,
                  temporary_settings(updates={PREFECT_API_URL: api_url})):
                tree["runtime"]["dask_address"] = cluster.scheduler_address
                t1 = time.perf_counter()
                summary = run_retrain(config_from_dict(tree), ws)
                wall = time.perf_counter() - t1
                per_worker = client.run(peak_rss_mb)
                extra = {"prefect_task_run_s": prefect_task_run_s(probe, cluster.scheduler_address)} if probe else {}
                logging.getLogger("distributed").setLevel(logging.ERROR)  # the cluster's goodbyes
        finally:
            del os.environ["PREFECT_API_URL"]
    return summary, wall, time.perf_counter() - t0 - wall, {"worker_peak_rss_mb": sorted(per_worker.values()), **extra}


def prefect_task_run_s(k: int, address: str) -> float:
    """Wall seconds per task run of a flow of ``k`` empty tasks on the Dask scheduler at ``address``:
    what the Prefect server (task-run records, state changes) and the runner cost a task, an upper
    bound of the server's serial share."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    @task(cache_policy=NO_CACHE)
    def empty(i: int) -> int:
        return i

    @flow(task_runner=DaskTaskRunner(address=address))
    def probe() -> list[int]:
        return [f.result() for f in [empty.submit(i) for i in range(k)]]

    t0 = time.perf_counter()
    probe()
    return round((time.perf_counter() - t0) / k, 4)


def travel_bytes(market: dict) -> dict:
    """Pickled bytes of what the Dask tasks send and return for one market (``pickle`` protocol 5, as
    Dask's), against what a worker's results need to be: the HMM's parameters (JSON) and the masks
    packed one bit per weight. Masks trained for 10 steps (their size does not depend on it)."""
    import pickle

    from supsup_fin.config import config_from_dict
    from supsup_fin.data import load_prices
    from supsup_fin.forecaster.mask_tasks import make_tasks
    from supsup_fin.forecaster.prepare import build_features, fit_regimes
    from supsup_fin.forecaster.training import to_bits, train_group

    cfg = config_from_dict(bench_config([market], "dask", 1, 10))
    with tempfile.TemporaryDirectory() as tmp:
        lp = load_prices(cfg.markets[0], cfg.data, Path(tmp))
    fs = build_features(lp.market, lp.frame, cfg)
    rf = fit_regimes(lp.market, lp.frame, cfg.regimes, cfg.segments)
    tasks = make_tasks({lp.market: fs}, {lp.market: rf}, cfg)
    bank = train_group(tasks, cfg)
    size = {"prices (ingest result; features and regimes arguments)": lp, "features (result)": fs,
            "regime fit (result)": rf, "training group (argument)": tasks, "masks (training result)": to_bits(bank)}
    return {**{k: len(pickle.dumps(v, protocol=5)) for k, v in size.items()},
            "needed: HMM parameters (JSON)": len(json.dumps(rf.model.to_dict())),
            "needed: mask bits (packed)": bank.nbytes_bits()}


def _renamed(mm, name: str, base: str):
    """``mm`` as market ``name``: its masks and their calibration maps renamed from ``base``'s."""
    def swap(key: str) -> str:
        return key.replace(f"{base}/", f"{name}/")

    return dataclasses.replace(mm, name=name, masks={r: swap(t) for r, t in mm.masks.items()}, all_mask=swap(mm.all_mask),
                               calibrators={swap(k): c for k, c in mm.calibrators.items()})


def _cloned(table, names: dict[str, str]):
    """``table``'s rows of each base market, once per clone (``names``: clone -> base), renamed."""
    import pandas as pd

    parts = []
    for m, b in names.items():
        part = table[table["market"] == b].assign(market=m)
        if "task" in part:
            part = part.assign(task=part["task"].str.replace(f"{b}/", f"{m}/", regex=False))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def logging_probe(sizes: list[int], root: Path) -> list[dict]:
    """The log+register stage alone (:func:`~supsup_fin.tracking.log_retrain`) for each of ``sizes``
    markets, cloned from two real ones (prices, HMM, masks, calibration, scores, renamed ``m00000``..):
    the MLflow store's share of a retrain at sizes a full retrain cannot reach here. ``report_files_s``:
    the report files alone, written once more beforehand. In one process, sizes ascending:
    ``peak_rss_mb`` is the peak so far."""
    import copy

    from supsup_fin.config import config_from_dict
    from supsup_fin.data import load_prices
    from supsup_fin.forecaster.evaluate import Evaluation, evaluate
    from supsup_fin.forecaster.mask_tasks import make_tasks
    from supsup_fin.forecaster.prepare import build_features, fit_regimes
    from supsup_fin.forecaster.training import build_forecaster, train_tasks
    from supsup_fin.masks import MaskBank
    from supsup_fin.monitor.reference import attach_references
    from supsup_fin.tracking import log_retrain
    from supsup_fin.tracking.report import figure_markets, write_report
    from supsup_fin.workspace import Workspace

    base = market_files(2, root)
    cfg = config_from_dict(bench_config(base, "threads", 1, 10))
    loaded = {m.name: load_prices(m, cfg.data, root) for m in cfg.markets}
    prices = {n: lp.frame for n, lp in loaded.items()}
    fs = {n: build_features(n, lp.frame, cfg) for n, lp in loaded.items()}
    rf = {n: fit_regimes(n, lp.frame, cfg.regimes, cfg.segments) for n, lp in loaded.items()}
    net, bank = train_tasks(make_tasks(fs, rf, cfg), cfg)
    fc = build_forecaster(fs, rf, net, bank, cfg)
    attach_references(fc, fs, rf, prices, cfg)
    ev = evaluate(fc, fs, rf, prices)
    rows = []
    for n in sizes:
        names = {f"m{i:05d}": base[i % 2]["name"] for i in range(n)}
        tree = bench_config([{**base[i % 2], "name": m} for i, m in enumerate(names)], "threads", 1, 10)
        big = copy.copy(fc)
        big.markets = {m: _renamed(fc.markets[b], m, b) for m, b in names.items()}
        big.bank = MaskBank(net).extended({t.replace(f"{b}/", f"{m}/"): (bank[t], {**bank.meta(t), "market": m})
                                          for m, b in names.items() for t in bank.names if t.startswith(f"{b}/")})

        inputs = {"loaded": {m: dataclasses.replace(loaded[b], market=m) for m, b in names.items()},
                  "regimes": {m: dataclasses.replace(rf[b], market=m) for m, b in names.items()},
                  "evaluation": Evaluation(_cloned(ev.tasks, names), _cloned(ev.markets, names)), "forecaster": big}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_report(Path(tmp), **inputs, plotted=figure_markets(inputs["regimes"]))
        t1 = time.perf_counter()
        log_retrain(config_from_dict(tree), Workspace.resolve(root / f"ws{n}"), **inputs)
        wall = time.perf_counter() - t1
        stored = sum(f.stat().st_size for f in (root / f"ws{n}").rglob("*") if f.is_file())
        rows.append({"markets": n, "log_register_s": round(wall, 1), "per_market_s": round(wall / n, 4),
                     "report_files_s": round(t1 - t0, 1), "workspace_mb": round(stored / 2**20, 1),
                     "peak_rss_mb": peak_rss_mb()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _in_subprocess(data: Path, runner: str, a: argparse.Namespace) -> dict:
    """:func:`one` in a fresh interpreter (its own peak memory), on the markets listed in ``data``."""
    cmd = [sys.executable, __file__, "--row", str(data), runner, "--workers", str(a.workers),
           "--threads", str(a.threads if runner == "threads" else 1), "--groups", a.groups,
           "--prefect-probe", str(a.prefect_probe)]
    if a.steps:
        cmd += ["--steps", str(a.steps)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the {runner} run on {data} failed (exit {done.returncode}); its errors are above")
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))


def line_fit(sizes: list[int], values: list[float]) -> dict:
    """Least-squares ``value = intercept + slope * markets``; one size (or a missing value): slope =
    the last value per market, intercept 0."""
    n, y = np.array(sizes, dtype=float), np.array(values, dtype=float)
    if len(n) == 1 or np.isnan(y).any():
        return {"slope": round(float(y[-1] / n[-1]), 4), "intercept": 0.0}
    slope, intercept = np.polyfit(n, y, 1)
    return {"slope": round(float(slope), 4), "intercept": round(float(intercept), 2)}


def linearity(rows: list[dict]) -> dict:
    """Per runner: per-market cost at each size, :func:`line_fit` of wall time (and of each stage and
    of the driver's peak memory) against markets, and the per-market cost at the largest size over
    the one at 100 markets (or at the smallest size). The last row of a runner and size counts."""
    out = {}
    for runner in sorted({r["runner"] for r in rows}):
        by_size = {r["markets"]: r for r in rows if r["runner"] == runner}
        sizes = sorted(by_size)
        per_market = {s: by_size[s]["wall_s"] / s for s in sizes}
        ref = 100 if 100 in per_market else sizes[0]
        column = {key: [by_size[s].get(key, np.nan) for s in sizes]
                  for key in ("wall_s", "peak_rss_mb", *(f"{k}_s" for k in STAGES))}
        out[runner] = {"sizes": sizes, "workers": by_size[sizes[-1]]["workers"],
                       "per_market_s": [round(per_market[s], 3) for s in sizes], **line_fit(sizes, column["wall_s"]),
                       "reference_size": ref,
                       "ratio_largest_to_reference": round(per_market[sizes[-1]] / per_market[ref], 3),
                       "stages": {k: line_fit(sizes, column[f"{k}_s"]) for k in STAGES},
                       "driver_peak_rss_mb": line_fit(sizes, column["peak_rss_mb"])}
    return out


def _table(rows: list[dict]) -> str:
    cols = ["markets", "runner", "workers", "torch_threads", "tasks", "wall_s", "startup_s", "per_market_s",
            *(f"{k}_s" for k in STAGES), "peak_rss_mb", "worker_peak_rss_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the runs' subprocesses inherit them
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markets", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--runners", nargs="+", default=["threads", "dask"], choices=["threads", "dask"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's 300)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (runtime.threads; Dask workers always use 1 each)")
    ap.add_argument("--groups", choices=["all", "market"], default="all",
                    help="one process: one batched training group, or one per market (Dask: always market)")
    ap.add_argument("--prefect-probe", type=int, default=200,
                    help="Dask: after the retrain, time this many empty tasks (seconds per task run; 0: skip)")
    ap.add_argument("--quick", action="store_true", help="2 and 4 markets, 30 steps")
    ap.add_argument("--logging-only", type=int, nargs="+", metavar="MARKETS",
                    help="time log+register alone for these many cloned markets (no retrain; see logging_probe)")
    ap.add_argument("--with", dest="earlier", type=Path, nargs="*", default=[],
                    help="earlier result files whose rows join the linearity summary")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/retrain_scale.json"))
    ap.add_argument("--row", nargs=2, metavar=("MARKETS_JSON", "RUNNER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.row:
        print(json.dumps(one(json.loads(Path(a.row[0]).read_text()), a.row[1], a.workers, a.steps, a.threads,
                             a.groups, a.prefect_probe)), flush=True)
        return
    if a.logging_only:
        with tempfile.TemporaryDirectory() as tmp:
            probe = logging_probe(sorted(a.logging_only), Path(tmp))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                     "args": {"logging_only": a.logging_only}, "logging_probe": probe}, indent=1))
        return
    if a.quick:
        a.markets, a.steps = [2, 4], 30
    rows, travel = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.markets:
            root = Path(tmp) / str(n)
            root.mkdir()
            t0 = time.perf_counter()
            markets = market_files(n, root)
            (root / "markets.json").write_text(json.dumps(markets))
            print(f"{n} markets generated in {time.perf_counter() - t0:.1f} s", flush=True)
            travel = travel or travel_bytes(markets[0])
            for runner in a.runners:
                rows.append(_in_subprocess(root / "markets.json", runner, a))
                print(json.dumps(rows[-1]), flush=True)
    earlier = [r for f in a.earlier for r in json.loads(f.read_text())["rows"]]
    lin = linearity(earlier + rows)
    print(_table(rows))
    print("bytes per market:", json.dumps(travel))
    for runner, s in lin.items():
        print(f"{runner}: sizes {s['sizes']}, per-market wall {s['per_market_s']} s, slope {s['slope']} "
              f"s/market + {s['intercept']} s; per market at {s['sizes'][-1]} / at {s['reference_size']}: "
              f"{s['ratio_largest_to_reference']}")
    import torch

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "python": sys.version.split()[0], "args": {k: v for k, v in vars(a).items() if k != "row"}
        | {"out": str(a.out), "earlier": [str(f) for f in a.earlier]},
        "rows": rows, "linearity": lin, "travel_bytes_per_market": travel}, indent=1))


if __name__ == "__main__":
    main()
