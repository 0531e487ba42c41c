"""A real HTTP round trip through ``mlflow models serve`` on 127.0.0.1: equal to in-process, 400s."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from conftest import free_port

from supsup_fin.tracking import forecasts_from_payload, log_retrain, payload
from supsup_fin.tracking.serve import serve_command, serving_example
from supsup_fin.workspace import Workspace

STARTUP_S = 120


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _split(frame: pd.DataFrame) -> dict:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


@pytest.fixture(scope="module")
def server(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory):
    from pipelines._server import stop_process_group

    p = small_pipeline
    ws = Workspace.resolve(tmp_path_factory.mktemp("serve"))
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri exports the URI: drop an earlier test's
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                          forecaster=p["forecaster"])
    assert "champion" in run.aliases, run.decision.reason
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        argv, env, version = serve_command(p["cfg"].tracking, ws, port)
    log = (ws.root / "serve.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"model server did not come up: {(ws.root / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"url": f"{base}/invocations", "proc": proc, "ws": ws, "version": version, **p}
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
    for c in local.columns:
        if c.startswith(("p_", "prior_")) or c in ("signal", "expected_return", "position"):
            np.testing.assert_allclose(served[c], local[c], atol=1e-6)
        elif c in ("regime_posterior", "masks"):
            for a, b in zip(served[c], local[c]):
                assert json.loads(a) == pytest.approx(json.loads(b), abs=1e-6)
        else:
            assert list(served[c].astype(str)) == list(local[c].astype(str)), c


def _rows(server: dict, market: str = "syn_a") -> pd.DataFrame:
    return payload(market, server["prices"][market], server["forecaster"].min_rows)


BAD = {
    "unknown market": (lambda f: f.assign(market="nope"), r"unknown market 'nope'"),
    "too few rows": (lambda f: f.iloc[5:], r"min_rows"),
    "no close": (lambda f: f.drop(columns=["close"]), r"close"),
    "non-positive price": (lambda f: f.assign(close=f["close"].where(f.index != f.index[-3], -1.0)), r"close.*> 0"),
    "unsorted dates": (lambda f: f.iloc[::-1], r"sorted|increasing|order"),
    "duplicated dates": (lambda f: f.assign(date=[*f["date"].iloc[:-1], f["date"].iloc[-2]]), r"duplicate"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_payloads_get_a_400_that_says_why_and_the_server_keeps_serving(server: dict, case: str) -> None:
    mutate, pattern = BAD[case]
    status, body = _post(server["url"], _split(mutate(_rows(server))))
    assert status == 400, body
    assert re.search(pattern, body.get("message", ""), re.IGNORECASE), body
    assert server["proc"].poll() is None
    ok, _ = _post(server["url"], _split(_rows(server)))
    assert ok == 200
