"""The served champion under load: concurrent clients on loopback for a fixed time, some payloads malformed.

    python benchmarks/serve_load.py [--seconds 60] [--clients 8] [--workers 1 2] [--bad 0.1]
    python benchmarks/serve_load.py --quick             # 10 s, --workers 1

Builds and registers a 2-market synthetic model in a temporary workspace; for each --workers
value starts ``supsup-fin serve --workers N`` (a real server process), warms it up, and runs
--clients threads, each on its own keep-alive connection, posting for --seconds: valid payloads
(one market, its last ``min_rows`` rows up to a random date) and, with probability --bad,
malformed ones (unknown market, missing close, absurd close, unsorted dates, too few rows, not
JSON) that must get a 400. Records per-kind counts, errors (a valid request without a 200, a
malformed one without a 400, a dropped connection), p50/p99 latency, throughput, and the RSS of
the server's processes after warm-up, half-way and at the end, and the CPU the server got (cores:
its CPU seconds per second; on a shared machine, what else runs shows here and in the load
average). Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from forecast_latency import pct
from serve_latency import registered_model, split_body, start_server

from pipelines._server import stop_process_group
from supsup_fin.tracking import payload

MALFORMED = {
    "unknown market": lambda f: f.assign(market="nope"),
    "missing close": lambda f: f.assign(close=[*f["close"].iloc[:-1], None]),
    "absurd close": lambda f: f.assign(close=[*f["close"].iloc[:-1], 1e300]),
    "unsorted dates": lambda f: f.iloc[::-1],
    "too few rows": lambda f: f.iloc[-10:],
}


def bodies(prices: dict[str, pd.DataFrame], rows: int, n: int, seed: int) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """``n`` valid payloads (a market's ``rows`` rows up to a random date) and the malformed kinds of each."""
    rng = random.Random(seed)
    valid, bad = [], []
    for _ in range(n):
        market = rng.choice(sorted(prices))
        end = rng.randrange(rows, len(prices[market]) + 1)
        frame = payload(market, prices[market].iloc[:end], rows)
        valid.append(split_body(frame))
        bad += [(kind, split_body(mutate(frame))) for kind, mutate in MALFORMED.items()]
    bad.append(("not json", valid[0][:-7]))
    return valid, bad


def usage(proc: psutil.Process) -> tuple[float, float]:
    """Resident memory (MB) and CPU time so far (s) of ``proc`` and its descendants (uvicorn and its workers)."""
    rss = cpu = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            rss, cpu = rss + p.memory_info().rss, cpu + sum(p.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return round(rss / 2**20, 1), cpu


def client(port: int, stop: float, valid: list[bytes], bad: list[tuple[str, bytes]], p_bad: float, seed: int,
           out: list[tuple[str, int, float]]) -> None:
    """Post until ``stop`` (monotonic) on one keep-alive connection; append ``(kind, status, seconds)``
    (status 0: the connection failed)."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while time.monotonic() < stop:
        kind, body = rng.choice(bad) if rng.random() < p_bad else ("valid", rng.choice(valid))
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            status = reply.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = 0
        out.append((kind, status, time.perf_counter() - t0))
    conn.close()


def run(config: Path, ws, workers: int, valid: list[bytes], bad: list[tuple[str, bytes]], a: argparse.Namespace,
        log: Path) -> dict:
    proc, port = start_server(config, ws, workers, log)
    try:
        server = psutil.Process(proc.pid)
        warm: list = []
        client(port, time.monotonic() + 5, valid, bad, a.bad, 0, warm)
        rss_start, cpu_start = usage(server)
        load_start = os.getloadavg()[0]
        results: list[list] = [[] for _ in range(a.clients)]
        stop = time.monotonic() + a.seconds
        threads = [threading.Thread(target=client, args=(port, stop, valid, bad, a.bad, i + 1, results[i]))
                   for i in range(a.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(a.seconds / 2)
        rss_mid = usage(server)[0]
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_end, cpu_end = usage(server)
        after: list = []
        client(port, time.monotonic() + 1, valid, [], 0.0, 0, after)
        processes = 1 + len(server.children(recursive=True))
    finally:
        stop_process_group(proc)
    done = [r for rs in results for r in rs]
    ok = [s for k, s, _ in done if k == "valid"]
    bad_done = [(k, s) for k, s, _ in done if k != "valid"]
    errors = sum(s != 200 for s in ok) + sum(s != 400 for _, s in bad_done)
    return {
        "workers": workers, "clients": a.clients, "seconds": round(wall, 1), "requests": len(done),
        "valid": len(ok), "malformed": len(bad_done), "errors": errors,
        "error_rate": round(errors / max(len(done), 1), 5),
        "malformed_400": sum(s == 400 for _, s in bad_done),
        "req_per_s": round(len(done) / wall, 1), "valid_per_s": round(len(ok) / wall, 1),
        **{f"valid_{k}": v for k, v in pct([t for k, _, t in done if k == "valid"]).items()},
        **{f"malformed_{k}": v for k, v in pct([t for k, _, t in done if k != "valid"] or [0.0]).items()},
        "rss_start_mb": rss_start, "rss_mid_mb": rss_mid, "rss_end_mb": rss_end, "processes": processes,
        "server_cores": round((cpu_end - cpu_start) / wall, 2),  # CPU seconds the server got per second
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "served_after": bool(after) and all(s == 200 for _, s, _ in after),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn workers, one run each")
    ap.add_argument("--bad", type=float, default=0.1, help="share of malformed payloads")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.workers = 10.0, [1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config, ws, fc, prices = registered_model(root)
        valid, bad = bodies(prices, fc.min_rows, 50, seed=0)
        rows = []
        for w in a.workers:
            rows.append(run(config, ws, w, valid, bad, a, root / f"serve-{w}.log"))
            print(json.dumps(rows[-1]), flush=True)
    cols = ["workers", "clients", "seconds", "requests", "errors", "malformed", "malformed_400", "req_per_s",
            "valid_p50_ms", "valid_p99_ms", "malformed_p50_ms", "rss_start_mb", "rss_mid_mb", "rss_end_mb", "processes",
            "server_cores", "load_avg_1m", "served_after"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "rows_per_request": fc.min_rows,
        "args": vars(a) | {"out": str(a.out)}, "rows": rows,
    }, indent=1))
    return rows


if __name__ == "__main__":
    main()
