"""HTTP latency of ``supsup-fin serve`` serving the champion on 127.0.0.1 (one market per request).

    python benchmarks/serve_latency.py [--requests 400] [--clients 8] [--workers 1]
    python benchmarks/serve_latency.py --quick          # 60 requests

Builds and registers a 2-market synthetic model in a temporary workspace, starts the server with
``supsup-fin serve``, and times POST /invocations sequentially and with --clients concurrent
clients. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from forecast_latency import build, pct

from pipelines._server import stop_process_group
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.workspace import Workspace


def registered_model(root: Path) -> tuple[Path, Workspace, RegimeGatedForecaster, dict[str, pd.DataFrame]]:
    """A 2-market synthetic model registered as champion in ``root/ws``: its config file, the
    workspace, the forecaster and its prices."""
    from retrain_scale import bench_config, market_files

    from supsup_fin.config import config_from_dict
    from supsup_fin.data import load_prices
    from supsup_fin.forecaster.evaluate import evaluate
    from supsup_fin.forecaster.prepare import build_features, fit_regimes
    from supsup_fin.tracking import connect, log_retrain
    from supsup_fin.tracking.versions import promote

    fc, prices = build(2, root)
    tree = bench_config(market_files(2, root), "threads", 1, steps=20)
    cfg = config_from_dict(tree)
    loaded = {m.name: load_prices(m, cfg.data, root) for m in cfg.markets}
    fs = {k: build_features(k, lp.frame, cfg) for k, lp in loaded.items()}
    rf = {k: fit_regimes(k, lp.frame, cfg.regimes, cfg.segments) for k, lp in loaded.items()}
    ws = Workspace.resolve(root / "ws")
    log_retrain(cfg, ws, loaded=loaded, regimes=rf, evaluation=evaluate(fc, fs, rf, prices), forecaster=fc)
    client = connect(cfg.tracking, ws)
    if "champion" not in client.get_model_version("bench", "1").aliases:
        promote(client, "bench", 1, "benchmark")
    config = root / "bench.yaml"
    config.write_text(yaml.safe_dump(tree))
    return config, ws, fc, prices


def start_server(config: Path, ws: Workspace, workers: int, log: Path, timeout_s: float = 180.0) -> tuple[subprocess.Popen, int]:
    """``supsup-fin serve --workers workers`` on a free port of 127.0.0.1, once GET /ping answers.

    The server runs in its own session (stop it with ``stop_process_group``); its output goes to ``log``.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "supsup_fin.cli", "serve", "--config", str(config), "--home", str(ws.root),
            "--port", str(port), "--workers", str(workers)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_process_group(proc)
                raise SystemExit(f"model server did not start; see {log}") from None
            time.sleep(0.5)


def split_body(frame: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()


def post(url: str, body: bytes) -> float:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t0


def main() -> None:
    from supsup_fin.tracking import payload

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of the model server")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_latency.json"))
    a = ap.parse_args()
    if a.quick:
        a.requests = 60
    with tempfile.TemporaryDirectory() as tmp:
        config, ws, fc, prices = registered_model(Path(tmp))
        proc, port = start_server(config, ws, a.workers, Path(tmp) / "serve.log")
        try:
            m = min(prices)
            body = split_body(payload(m, prices[m], fc.min_rows))
            url = f"http://127.0.0.1:{port}/invocations"
            for _ in range(10):
                post(url, body)
            seq = [post(url, body) for _ in range(a.requests)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(a.clients) as pool:
                conc = list(pool.map(lambda _: post(url, body), range(a.requests)))
            conc_wall = time.perf_counter() - t0
        finally:
            stop_process_group(proc)
    rows = [{"case": "sequential", "clients": 1, **pct(seq), "req_per_s": round(len(seq) / float(np.sum(seq)), 1)},
            {"case": "concurrent", "clients": a.clients, **pct(conc), "req_per_s": round(len(conc) / conc_wall, 1)}]
    for r in rows:
        print(json.dumps(r))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows_per_request": fc.min_rows, "server_workers": a.workers,
                                 "args": vars(a) | {"out": str(a.out)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
