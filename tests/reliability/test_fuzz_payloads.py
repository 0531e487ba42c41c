"""Fuzzed payloads through the real scoring app (MLflow's, behind the size limit) and the real
registered model, in process.

Payloads (``dataframe_split`` JSON unless the fault is the shape) carry one fault each: wrong,
missing or renamed columns, strings in numeric columns, NaN / inf / huge / zero / negative /
constant closes, bad dates (unparseable, missing, integer, duplicated, unsorted, tz-aware, with
times), unknown or missing markets, too few or too many rows, empty data, wrong JSON shapes,
bodies over the size limit; in one or two markets. The only outcomes allowed: a 200 with one
forecast per market, finite probabilities summing to 1 and a finite position; or a 400 (413 over
the size limit) whose message, one line of at most 200 characters, names the market, the column
and the date (or row, or value) where the fault is. Never a 500. Each probe prints its tally:
examples per fault and status.

Reproduce: ``pytest tests/reliability/test_fuzz_payloads.py -q -s`` (``-m slow`` for the 10,000-example twin).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ_EXAMPLES, FUZZ_EXAMPLES_SLOW
from reliability.frames import SPIKE, random_walk_frame
from supsup_fin.tracking import log_retrain
from supsup_fin.tracking.model import MAX_ROWS_PER_MARKET
from supsup_fin.tracking.serve import (
    MAX_BODY_BYTES,
    MAX_REASON_CHARS,
    MODEL_DIR_ENV,
    BodyLimit,
    load_served_model,
    scoring_app,
    serve_command,
)
from supsup_fin.workspace import Workspace

MARKETS = ("syn_a", "syn_b")
FAULTS = (
    "valid", "two-markets", "extra-column", "string-number", "nan-optional", "tz-dates", "time-dates",
    "records-format", "inputs-format",
    "nan", "inf", "-inf", "zero", "negative", "huge", "tiny", "spike", "level-shift", "constant", "string",
    "duplicate-date", "unsorted-date", "missing-date", "unparseable-date", "int-dates", "unknown-market",
    "missing-market", "too-few-rows", "too-many-rows", "empty", "no-close", "no-date", "no-market",
    "renamed-close", "second-market-faulty", "not-json", "not-utf8", "list", "no-format-key", "split-as-list",
    "ragged", "deep", "too-large",
)


class Case(NamedTuple):
    """A request body and what the answer must be."""

    fault: str
    body: bytes
    statuses: frozenset[int]
    needles: tuple[str, ...] = ()  # what a 400's message must name
    markets: tuple[str, ...] = ()  # the forecasts a 200 must hold, in order


class Served:
    """The scoring app in process: ``post(body) -> (status, JSON answer)``."""

    def __init__(self, app) -> None:  # noqa: ANN001 - an ASGI app
        self.app, self.loop = app, asyncio.new_event_loop()

    def post(self, body: bytes) -> tuple[int, dict]:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://serve") as c:
                return await c.post("/invocations", content=body, headers={"Content-Type": "application/json"})

        r = self.loop.run_until_complete(send())
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {"message": r.text}

    def __repr__(self) -> str:
        return "<scoring app>"


@pytest.fixture(scope="module")
def served(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict]]:
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    p = small_pipeline
    ws = Workspace.resolve(tmp_path_factory.mktemp("fuzz-serve"))
    with pytest.MonkeyPatch.context() as mp:  # the scoring app marks the process as serving: undone after
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "true")
        log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                    forecaster=p["forecaster"])
        _, env, version = serve_command(p["cfg"].tracking, ws, 0)
        client = Served(scoring_app(load_served_model(Path(env[MODEL_DIR_ENV]), f"v{version}")))
        fc = p["forecaster"]
        yield client, {"min_rows": fc.min_rows, "lookback": fc.lookback, "span": max(fc._feature_rows, fc.min_rows)}
        client.loop.close()


def _split(frame: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy(object).tolist()}},
                      allow_nan=True).encode()


def _rows(market: str, n: int, seed: int, columns: tuple[str, ...], start: str = "2012-01-02") -> pd.DataFrame:
    base = random_walk_frame(n, seed, start, columns)
    frame = base.reset_index().assign(date=base.index.strftime("%Y-%m-%d"))
    frame.insert(0, "market", market)
    return frame.astype({"market": object, "date": object})


@st.composite
def payloads(draw: st.DrawFn, shape: dict, fault: str) -> Case:
    """One request carrying ``fault`` (``shape``: the model's min_rows, lookback and read span)."""
    m = draw(st.sampled_from(MARKETS))
    n = draw(st.integers(shape["min_rows"], shape["min_rows"] + 80))
    seed = draw(st.integers(0, 2**16))
    columns = tuple(c for c in ("open", "high", "low", "volume") if draw(st.booleans()))
    f = _rows(m, n, seed, columns)
    i = draw(st.integers(1, n - 2))
    day = f["date"].iloc[i]
    ok = frozenset({200})
    bad = frozenset({400})
    read = i >= n - shape["lookback"]  # a row the network's input reads
    unread = i < n - shape["span"]  # a row nothing reads

    def value(v: object) -> pd.DataFrame:
        g = f.astype({"close": object})
        g.loc[i, "close"] = v
        return g

    if fault == "valid":
        return Case(fault, _split(f), ok, markets=(m,))
    if fault == "two-markets":
        other = next(x for x in MARKETS if x != m)
        return Case(fault, _split(pd.concat([f, _rows(other, n, seed + 1, columns)])), ok, markets=(m, other))
    if fault == "extra-column":
        return Case(fault, _split(f.assign(note="x")), ok, markets=(m,))
    if fault == "string-number":
        return Case(fault, _split(f.assign(close=f["close"].map(repr))), ok, markets=(m,))
    if fault == "nan-optional":
        if not columns:
            return Case(fault, _split(f), ok, markets=(m,))
        g = f.copy()
        g.loc[i, columns[0]] = None
        return Case(fault, _split(g), ok, markets=(m,))
    if fault in ("tz-dates", "time-dates"):
        suffix = draw(st.sampled_from(["T00:00:00+05:00", "T00:00:00-04:00", "T09:30:00+09:00"])) \
            if fault == "tz-dates" else "T16:00:00"
        return Case(fault, _split(f.assign(date=f["date"] + suffix)), ok, markets=(m,))
    if fault == "records-format":
        return Case(fault, json.dumps({"dataframe_records": f.to_dict("records")}).encode(), ok, markets=(m,))
    if fault == "inputs-format":
        return Case(fault, json.dumps({"inputs": f.to_dict("list")}).encode(), ok, markets=(m,))
    if fault == "nan":
        return Case(fault, _split(value(None)), ok if unread else bad, (repr(m), "'close'", day), (m,))
    if fault in ("inf", "-inf", "zero", "negative"):
        v = {"inf": math.inf, "-inf": -math.inf, "zero": 0.0, "negative": -f["close"].iloc[i]}[fault]
        return Case(fault, _split(value(v)), bad, (repr(m), "'close'", day))
    if fault in ("huge", "tiny", "spike", "level-shift"):
        g = f.copy()
        if fault == "huge":
            g.loc[i, "close"] = 1e300
        elif fault == "tiny":
            g.loc[i, "close"] = 1e-300
        else:
            factor = draw(st.sampled_from([SPIKE, 1 / SPIKE]))
            rows = slice(i, i) if fault == "spike" else slice(i, None)
            g.loc[rows, "close"] = g.loc[rows, "close"] * factor
        return Case(fault, _split(g), bad if read else ok if unread else ok | bad, (repr(m), "'close'", day), (m,))
    if fault == "constant":
        return Case(fault, _split(f.assign(close=100.0)), bad, (repr(m), "'close'", "zero volatility"))
    if fault == "string":
        token = draw(st.sampled_from(["abc", "#N/A", "1,234.5", "--", "12.3.4"]))
        return Case(fault, _split(value(token)), bad, (repr(m), "'close'", f"row {i} (date {day})", repr(token)))
    if fault == "duplicate-date":
        g = f.copy()
        g.loc[i, "date"] = f["date"].iloc[i - 1]
        return Case(fault, _split(g), bad, (repr(m), "'date'", f["date"].iloc[i - 1]))
    if fault == "unsorted-date":
        g = f.copy()
        g.loc[[i, i + 1], "date"] = [f["date"].iloc[i + 1], day]
        return Case(fault, _split(g), bad, (repr(m), "'date'", day))
    if fault == "missing-date":
        g = f.copy()
        g.loc[i, "date"] = None
        return Case(fault, _split(g), bad, (repr(m), "'date'", f"row {i}"))
    if fault == "unparseable-date":
        token = draw(st.sampled_from(["2019-13-45", "yesterday", "01/02/2019x", "2019-02-30"]))
        g = f.copy()
        g.loc[i, "date"] = token
        return Case(fault, _split(g), bad, (repr(m), "'date'", token))
    if fault == "int-dates":
        return Case(fault, _split(f.assign(date=np.arange(n))), bad, (repr(m), "'date'", "row 0"))
    if fault == "unknown-market":
        name = draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12))
        if name in MARKETS:
            return Case(fault, _split(f), ok, markets=(m,))
        return Case(fault, _split(f.assign(market=name)), bad, (f"unknown market {name!r}",))
    if fault == "missing-market":
        g = f.copy()
        g.loc[i, "market"] = draw(st.sampled_from([None, 7, ""]))
        return Case(fault, _split(g), bad, ("'market'", f"row {i}"))
    if fault == "too-few-rows":
        return Case(fault, _split(f.iloc[-draw(st.integers(1, shape["min_rows"] - 1)):]), bad, (repr(m), "min_rows"))
    if fault == "too-many-rows":
        g = _rows(m, MAX_ROWS_PER_MARKET + draw(st.integers(1, 50)), seed, ())
        return Case(fault, _split(g), bad, (repr(m), f"at most {MAX_ROWS_PER_MARKET} per market"))
    if fault == "empty":
        return Case(fault, _split(f.iloc[:0]), bad, ("no rows",))
    if fault in ("no-close", "no-date", "no-market"):
        column = fault[3:]
        return Case(fault, _split(f.drop(columns=[column])), bad, (column,))
    if fault == "renamed-close":
        return Case(fault, _split(f.rename(columns={"close": "Close"})), bad, ("close",))
    if fault == "second-market-faulty":
        other = next(x for x in MARKETS if x != m)
        g = _rows(other, n, seed + 1, columns)
        g.loc[i, "close"] = -1.0
        return Case(fault, _split(pd.concat([f, g], ignore_index=True)), bad, (repr(other), "'close'", day))
    if fault == "not-json":
        return Case(fault, _split(f)[:-draw(st.integers(1, 40))], bad, ("JSON",))
    if fault == "not-utf8":
        return Case(fault, b"\xff\xfe" + _split(f), bad, ("JSON",))
    if fault == "list":
        return Case(fault, json.dumps(f.to_numpy(object).tolist()).encode(), bad, ("list",))
    if fault == "no-format-key":
        return Case(fault, json.dumps({"data": f.to_numpy(object).tolist()}).encode(), bad, ("dataframe_split",))
    if fault == "split-as-list":
        return Case(fault, json.dumps({"dataframe_split": f.to_numpy(object).tolist()}).encode(), bad, ("split",))
    if fault == "ragged":
        data = f.to_numpy(object).tolist()
        data[i] = [*data[i], 1.0]
        return Case(fault, json.dumps({"dataframe_split": {"columns": list(f.columns), "data": data}}).encode(), bad,
                    ("not a valid dataframe",))
    if fault == "deep":
        depth = draw(st.integers(2_000, 50_000))
        return Case(fault, b"[" * depth + b"]" * depth, bad, ("nests too deeply",))
    if fault == "too-large":
        pad = json.dumps({"dataframe_split": {"columns": ["market"], "data": [["x" * MAX_BODY_BYTES]]}}).encode()
        return Case(fault, pad, frozenset({413}), (f"at most {MAX_BODY_BYTES} bytes",))
    raise AssertionError(f"unknown fault {fault!r}")


def _check(client: Served, case: Case, tally: Counter) -> None:
    status, answer = client.post(case.body)
    tally[(case.fault, status)] += 1
    assert status in case.statuses, (case.fault, status, str(answer)[-600:])
    if status == 200:
        rows = answer["predictions"]
        assert [r["market"] for r in rows] == list(case.markets), (case.fault, rows)
        for r in rows:
            p = np.array([v for k, v in r.items() if k.startswith("p_")])
            assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-9 and math.isfinite(r["position"]), (case.fault, r)
            assert isinstance(r["out_of_distribution"], str)
        return
    message = answer.get("message", "")
    assert set(answer) == {"error_code", "message"}, (case.fault, status, str(answer)[-600:])
    assert "\n" not in message and len(message) <= MAX_REASON_CHARS, (case.fault, message[-600:])
    missing = [x for x in case.needles if not re.search(re.escape(x), message, re.IGNORECASE)]
    assert not missing, (case.fault, status, missing, message[-600:])


class Tally(Counter):
    def __repr__(self) -> str:
        return "<tally>"


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter]:
    counts = Tally()
    yield counts
    by_fault: dict[str, dict[int, int]] = {}
    for (fault, status), k in sorted(counts.items()):
        by_fault.setdefault(fault, {})[status] = k
    print(f"\npayload fuzz: {sum(counts.values())} requests; per fault, status: count")
    for fault, statuses in by_fault.items():
        print(f"  {fault:22s} " + "  ".join(f"{s}: {k}" for s, k in statuses.items()))


@pytest.mark.parametrize("fault", FAULTS)
@settings(max_examples=-(-FUZZ_EXAMPLES // len(FAULTS)))
@given(data=st.data())
def test_fuzzed_payloads_get_a_forecast_or_a_400_that_names_the_fault(served: tuple, tally: Counter, fault: str,
                                                                       data: st.DataObject) -> None:
    client, shape = served
    _check(client, data.draw(payloads(shape, fault), label="payload"), tally)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@settings(max_examples=-(-FUZZ_EXAMPLES_SLOW // len(FAULTS)))
@given(data=st.data())
def test_fuzzed_payloads_slow(served: tuple, tally: Counter, fault: str, data: st.DataObject) -> None:
    client, shape = served
    _check(client, data.draw(payloads(shape, fault), label="payload"), tally)


# -- the size limit alone, on an echo app ---------------------------------------------------------

async def _echo(scope, receive, send) -> None:  # noqa: ANN001 - ASGI
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@settings(max_examples=FUZZ_EXAMPLES)
@given(size=st.integers(0, 3000), chunk=st.integers(1, 700), declared=st.booleans(), limit=st.integers(1, 2000))
def test_the_size_limit_passes_bodies_up_to_it_whole_and_answers_413_past_it(
    size: int, chunk: int, declared: bool, limit: int,
) -> None:
    """Any body size and chunking, with or without Content-Length: the app sees exactly the body
    when it is within the limit; past it, a 413 stating the limit and the app never runs."""
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    async def chunks() -> AsyncIterator[bytes]:
        for k in range(0, size, chunk):
            yield body[k:k + chunk]

    async def send() -> httpx.Response:
        content = body if declared else chunks()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=BodyLimit(_echo, limit)), base_url="http://x") as c:
            return await c.post("/invocations", content=content)

    r = asyncio.run(send())
    if size <= limit:
        assert r.status_code == 200 and r.content == body
    else:
        assert r.status_code == 413 and f"at most {limit} bytes" in r.json()["message"]
