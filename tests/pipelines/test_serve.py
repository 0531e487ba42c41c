"""A real HTTP round trip through ``supsup-fin serve --workers 2`` on 127.0.0.1: equal to
in-process, regime posterior and masks as JSON objects; 400s that say why in one short line, 413
over the size limit, flagged inputs far outside training; SIGTERM stops the server and its workers;
a damaged champion stops ``supsup-fin serve`` before the port opens, naming the file."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from conftest import free_port, session_processes, small_config_dict

from supsup_fin.errors import RegistryError
from supsup_fin.tracking import forecasts_from_payload, log_retrain, payload
from supsup_fin.tracking.model import MAX_ROWS_PER_MARKET, predict_payload
from supsup_fin.tracking.serve import (
    MAX_BODY_BYTES,
    MAX_REASON_CHARS,
    load_served_model,
    serve_command,
    serving_example,
)
from supsup_fin.workspace import Workspace

STARTUP_S = 180
WORKERS = 2


def _post(url: str, body: dict | bytes) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _split(frame: pd.DataFrame) -> dict:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def _register(p: dict, root: Path) -> Workspace:
    ws = Workspace.resolve(root)
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri exports the URI: drop an earlier test's
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                          forecaster=p["forecaster"])
    assert "champion" in run.aliases, run.decision.reason
    return ws


def _wait_up(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"model server did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def _cli_serve(ws: Workspace, *args: str, **popen) -> subprocess.Popen:
    """``supsup-fin serve`` on the small config and workspace ``ws``, in its own session."""
    config = ws.root / "config.yaml"
    config.write_text(yaml.safe_dump(small_config_dict()))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the workspace's store, not a leaked one
    return subprocess.Popen([sys.executable, "-m", "supsup_fin.cli", "serve", "--config", str(config),
                             "--home", str(ws.root), *args], env=env, start_new_session=True, **popen)


@pytest.fixture(scope="module")
def server(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory):
    """``supsup-fin serve --workers 2`` on the small model's champion."""
    from pipelines._server import stop_process_group

    ws = _register(small_pipeline, tmp_path_factory.mktemp("serve"))
    port = free_port()
    log_path = ws.root / "serve.log"
    log = log_path.open("wb")
    proc = _cli_serve(ws, "--port", str(port), "--workers", str(WORKERS), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base, proc, log_path)
        yield {"url": f"{base}/invocations", "base": base, "port": port, "proc": proc, "ws": ws, **small_pipeline}
    finally:
        stop_process_group(proc)
        log.close()


def test_http_answers_equal_the_in_process_forecaster(server: dict) -> None:
    fc, prices = server["forecaster"], server["prices"]
    example = serving_example(server["cfg"].tracking, server["ws"])
    assert set(example) == {"dataframe_split"}  # the documented payload is the logged input example
    status, body = _post(server["url"], example)
    assert status == 200, body
    frame = pd.concat([payload(m, prices[m], fc.min_rows) for m in ("syn_a", "syn_b")])
    status, body = _post(server["url"], _split(frame))
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    local = forecasts_from_payload(fc, frame)
    assert list(served["market"]) == ["syn_a", "syn_b"]
    assert list(served["out_of_distribution"]) == ["", ""]
    for c in local.columns:
        if c.startswith(("p_", "prior_")) or c in ("signal", "expected_return", "position"):
            np.testing.assert_allclose(served[c], local[c], atol=1e-6)
        elif c in ("regime_posterior", "masks"):  # JSON objects, not JSON text inside JSON
            for a, b in zip(served[c], local[c]):
                assert isinstance(a, dict) and a == pytest.approx(b, abs=1e-6)
        else:
            assert list(served[c].astype(str)) == list(local[c].astype(str)), c
    posterior = body["predictions"][1]["regime_posterior"]
    assert set(posterior) == set(fc.markets["syn_b"].regime.names_) and sum(posterior.values()) == pytest.approx(1)
    (served_dir,) = (server["ws"].root / "serving").iterdir()  # the copy the workers load
    model = load_served_model(served_dir, "served")
    mlflow.models.validate_schema(served, model.metadata.signature.outputs)  # the logged signature holds
    in_process = predict_payload(model, frame)
    for c in ("regime_posterior", "masks"):
        assert [dict(d) for d in in_process[c]] == [pytest.approx(d, abs=1e-6) for d in served[c]]


def test_other_endpoints_answer(server: dict) -> None:
    for path, expected in (("/ping", b"\n"), ("/health", b"\n"), ("/version", None)):
        with urllib.request.urlopen(server["base"] + path, timeout=10) as r:
            assert r.status == 200
            assert expected is None or r.read() == expected


def _rows(server: dict, market: str = "syn_a", rows: int | None = None) -> pd.DataFrame:
    return payload(market, server["prices"][market], rows or server["forecaster"].min_rows)


def _last(frame: pd.DataFrame, value: float) -> pd.DataFrame:
    return frame.assign(close=[*frame["close"].iloc[:-1], value])


def _text_at(frame: pd.DataFrame, i: int, column: str, value: str) -> pd.DataFrame:
    return frame.assign(**{column: frame[column].astype(object).where(np.arange(len(frame)) != i, value)})


BAD = {
    "unknown market": (lambda f: f.assign(market="nope"), r"unknown market 'nope'"),
    "too few rows": (lambda f: f.iloc[5:], r"min_rows"),
    "no close": (lambda f: f.drop(columns=["close"]), r"missing \['close'\] \(got \['market', 'date'\]\)"),
    "no date": (lambda f: f.drop(columns=["date"]), r"missing \['date'\]"),
    "non-numeric close": (lambda f: _text_at(f, 7, "close", "12,5"),
                          r"^market 'syn_a': column 'close' expected a number; row 7 \(date {day7}\) has '12,5'$"),
    "non-positive price": (lambda f: f.assign(close=f["close"].where(f.index != f.index[-3], -1.0)), r"close.*> 0"),
    "unsorted dates": (lambda f: f.iloc[::-1], r"sorted|increasing|order"),
    "duplicated dates": (lambda f: f.assign(date=[*f["date"].iloc[:-1], f["date"].iloc[-2]]), r"duplicate"),
    "integer dates": (lambda f: f.assign(date=np.arange(len(f))), r"'date'.*row 0"),
    # inputs no training row resembles: refused, naming market, column and date
    "last close 1e300": (lambda f: _last(f, 1e300), r"'syn_a'.*'close' on {last}"),
    "last close 1e-300": (lambda f: _last(f, 1e-300), r"'syn_a'.*'close' on {last}"),
    "constant closes": (lambda f: f.assign(close=100.0), r"'syn_a'.*'close'.*\.\.{last}.*zero volatility"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_payloads_get_a_400_that_says_why_and_the_server_keeps_serving(server: dict, case: str) -> None:
    """One short line naming market, column and date or row: no dump of the input, no traceback."""
    mutate, pattern = BAD[case]
    rows = _rows(server)
    status, body = _post(server["url"], _split(mutate(rows)))
    assert status == 400, body
    assert set(body) == {"error_code", "message"}, body
    message = body["message"]
    assert len(message) <= MAX_REASON_CHARS and "\n" not in message, message
    expected = pattern.format(last=rows["date"].iloc[-1], day7=rows["date"].iloc[7])
    assert re.search(expected, message, re.IGNORECASE), body
    assert server["proc"].poll() is None
    ok, _ = _post(server["url"], _split(_rows(server)))
    assert ok == 200


def test_a_move_far_outside_training_is_served_flagged(server: dict) -> None:
    """+25 % in a day is ~16 training standard deviations of syn_a's daily return: a forecast, flagged."""
    rows = _rows(server)
    status, body = _post(server["url"], _split(_last(rows, rows["close"].iloc[-1] * 1.25)))
    assert status == 200, body
    flag = body["predictions"][0]["out_of_distribution"]
    assert f"'close' on {rows['date'].iloc[-1]}" in flag and "ret_1" in flag and "beyond 10" in flag, flag


def test_rows_over_the_cap_get_a_400_stating_the_limit(server: dict) -> None:
    rows = _rows(server, rows=MAX_ROWS_PER_MARKET + 1)
    assert len(rows) == MAX_ROWS_PER_MARKET + 1
    status, body = _post(server["url"], _split(rows))
    assert status == 400, body
    assert f"'syn_a': payload has {MAX_ROWS_PER_MARKET + 1} rows, at most {MAX_ROWS_PER_MARKET} per market" in body["message"]
    status, _ = _post(server["url"], _split(rows.iloc[1:]))
    assert status == 200


def test_a_body_over_the_limit_gets_a_413_before_it_is_parsed(server: dict) -> None:
    """The 200,000-row payload (as ``Content-Length`` and chunked): 413 stating the limit, then a 200."""
    rows = _rows(server)
    big = pd.concat([rows] * (200_000 // len(rows) + 1)).iloc[:200_000]
    body = json.dumps(_split(big)).encode()
    assert len(body) > 3 * MAX_BODY_BYTES
    t0 = time.perf_counter()
    status, answer = _post(server["url"], body)
    assert status == 413, answer
    assert f"request body is {len(body)} bytes; this server accepts at most {MAX_BODY_BYTES} bytes" in answer["message"]
    assert time.perf_counter() - t0 < 10
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    conn.request("POST", "/invocations", body=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    reply = conn.getresponse()
    assert reply.status == 413 and f"at most {MAX_BODY_BYTES} bytes" in json.loads(reply.read())["message"]
    conn.close()
    assert _post(server["url"], _split(rows))[0] == 200


def test_workers_serve_concurrent_clients_on_loopback_only(server: dict) -> None:
    proc = psutil.Process(server["proc"].pid)
    workers = [c for c in proc.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == WORKERS, [c.cmdline() for c in proc.children(recursive=True)]
    listening = [c.laddr for p in (proc, *workers) for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"} and {a.port for a in listening} == {server["port"]}
    body = _split(_rows(server))
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: _post(server["url"], body)[0], range(32)))
    assert statuses == [200] * 32


def test_sigterm_stops_the_server_and_its_workers(server: dict) -> None:
    """Runs last on the module's server: SIGTERM to the command's pid ends it, its workers and
    anything else of its session, and frees the port."""
    proc = server["proc"]
    assert len(session_processes(proc.pid)) > WORKERS
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == []
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server["port"]))  # free again


# -- start-up checks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spare_registry(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A second registry whose champion's files the tests below damage (and restore)."""
    return {"ws": _register(small_pipeline, tmp_path_factory.mktemp("corrupt")), "cfg": small_pipeline["cfg"]}


def _model_file(ws: Workspace, name: str) -> Path:
    (path,) = [p for p in ws.root.rglob(name) if "models" in p.parts]
    return path


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_at(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


def _flip(data: bytes) -> bytes:
    return _flip_at(data, len(data) // 2)


def _flip_first_colon(data: bytes) -> bytes:
    """MLmodel's first ``key:`` becomes ``key;``: its YAML no longer parses."""
    return _flip_at(data, data.index(b":"))


def _flip_signature_key(data: bytes) -> bytes:
    """The signature's first ``"required"`` becomes ``"requiree"``: YAML and JSON parse, MLflow's schema does not."""
    return _flip_at(data, data.index(b'"required"') + 8)


@pytest.mark.parametrize(("name", "damage"), [
    ("forecaster.json", _truncate), ("forecaster.json", _flip), ("masks.safetensors", _flip),
    ("bank.json", _truncate), ("MLmodel", _truncate), ("MLmodel", _flip_first_colon),
    ("MLmodel", _flip_signature_key), ("_pyfunc_model.py", _truncate),
])
def test_a_damaged_champion_fails_to_load_naming_the_file(spare_registry: dict, name: str, damage) -> None:
    file = _model_file(spare_registry["ws"], name)
    original = file.read_bytes()
    file.write_bytes(damage(original))
    try:
        with pytest.raises(RegistryError) as err:
            serve_command(spare_registry["cfg"].tracking, spare_registry["ws"], free_port())
    finally:
        file.write_bytes(original)
    message = str(err.value)
    assert "\n" not in message and message.startswith("models:/small-model/1 cannot be served: ")
    assert name in message, message


def test_files_rewritten_with_a_matching_manifest_are_refused(spare_registry: dict) -> None:
    """A changed forecaster.json whose manifest.json was updated to match: only the manifest hash
    recorded at registration tells."""
    spec, manifest = _model_file(spare_registry["ws"], "forecaster.json"), _model_file(spare_registry["ws"], "manifest.json")
    originals = {f: f.read_bytes() for f in (spec, manifest)}
    changed = originals[spec].replace(b'"horizon": 5', b'"horizon": 6')
    listed = json.loads(originals[manifest])
    listed["files"]["forecaster.json"] = hashlib.sha256(changed).hexdigest()
    spec.write_bytes(changed)
    manifest.write_text(json.dumps(listed))
    try:
        with pytest.raises(RegistryError, match=r"^models:/small-model/1 cannot be served: .*manifest\.json: sha256 .*registration"):
            serve_command(spare_registry["cfg"].tracking, spare_registry["ws"], free_port())
    finally:
        for f, data in originals.items():
            f.write_bytes(data)


def test_serve_stops_before_the_port_opens_when_the_champion_is_damaged(spare_registry: dict) -> None:
    file = _model_file(spare_registry["ws"], "forecaster.json")
    original = file.read_bytes()
    file.write_bytes(_truncate(original))
    port = free_port()
    proc = _cli_serve(spare_registry["ws"], "--port", str(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    opened = False
    try:
        deadline = time.monotonic() + STARTUP_S
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                opened |= s.connect_ex(("127.0.0.1", port)) == 0
            time.sleep(0.2)
    finally:
        from pipelines._server import stop_process_group

        stop_process_group(proc)
        file.write_bytes(original)
    stderr = proc.communicate()[1].decode()
    assert proc.returncode == 1 and not opened, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "forecaster.json" in lines[0] and "cannot be served" in lines[0], stderr
