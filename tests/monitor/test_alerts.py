"""The alerts table keeps each alert once; new alerts become Prefect events, and in a flow run a
table artifact."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supsup_fin.errors import DataError
from supsup_fin.monitor.alerts import COLUMNS, alerts_path, raise_alerts, read_alerts
from supsup_fin.workspace import Workspace


def _alert(market: str = "syn_a", as_of: str = "2018-12-21", **kw) -> dict:
    return {"kind": "worse_than_prior", "market": market, "model_version": 2, "as_of": as_of, "value": 0.031458,
            "threshold": 0.0, "message": f"{market} v2: worse than the class prior."} | kw


def test_each_alert_is_stored_once(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path / "ws")
    assert raise_alerts(ws, []) == [] and list(read_alerts(ws).columns) == list(COLUMNS)
    first = [_alert(), _alert("syn_b"), _alert(kind="feature_drift", check="ret_1"),
             _alert(kind="feature_drift", check="vol_20")]
    told: list[list[dict]] = []
    assert raise_alerts(ws, first + [_alert()], told.append) == first  # the repeat within the call: once
    assert told == [first] and alerts_path(ws) == ws.root / "monitor" / "alerts.parquet"
    stored = read_alerts(ws)
    assert len(stored) == 4 and stored["check"].tolist() == ["", "", "ret_1", "vol_20"]
    assert stored["model_version"].dtype == "int64" and stored["raised_at"].dt.tz is not None

    later = _alert(as_of="2018-12-24")
    assert raise_alerts(ws, [*first, later], told.append) == [later]  # only the new day
    assert raise_alerts(ws, first, told.append) == []
    assert told == [first, [later]]  # nothing new: nobody told
    assert len(read_alerts(ws)) == 5
    assert read_alerts(ws).drop(columns="raised_at").iloc[:4].to_dict("records") == \
        stored.drop(columns="raised_at").to_dict("records")  # stored rows are never rewritten


def test_an_alert_without_its_fields_is_refused(tmp_path: Path) -> None:
    bad = {k: v for k, v in _alert().items() if k not in ("threshold", "message")}
    with pytest.raises(DataError, match=r"alert 'worse_than_prior' of market 'syn_a' lacks \['threshold', 'message'\]"):
        raise_alerts(Workspace.resolve(tmp_path), [_alert("syn_b"), bad])
    assert not alerts_path(Workspace.resolve(tmp_path)).exists()  # nothing stored


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list]]:
    """``emitted()``: the Prefect events emitted so far in the test (Prefect's asserting client; no server)."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # never reached: nothing is sent
        worker = EventsWorker.instance(AssertingEventsClient)
        monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)

        def events() -> list:
            worker.wait_until_empty()
            return list(AssertingEventsClient.last.events)

        try:
            yield events
        finally:
            worker.drain()


def test_new_alerts_become_prefect_events(tmp_path: Path, emitted: Callable[[], list]) -> None:
    from pipelines.monitor import publish_alerts

    ws = Workspace.resolve(tmp_path)
    alerts = [_alert(), _alert("syn_b", kind="hmm_drift")]
    raise_alerts(ws, alerts, publish_alerts)
    raise_alerts(ws, alerts, publish_alerts)  # nothing new: no event
    got = emitted()
    assert [(e.event, e.resource.id, e.resource.name) for e in got] == [
        ("supsup-fin.alert.worse_than_prior", "supsup-fin.market.syn_a", "syn_a"),
        ("supsup-fin.alert.hmm_drift", "supsup-fin.market.syn_b", "syn_b")]
    assert [e.payload for e in got] == alerts


@pytest.mark.slow  # a temporary Prefect server: ~15-45 s to start
def test_in_a_flow_run_new_alerts_are_a_table_artifact(harness, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pipelines.monitor import ARTIFACT_KEY, publish_alerts

    ws = Workspace.resolve(tmp_path)

    @flow
    def raising() -> list[dict]:
        return raise_alerts(ws, [_alert(), _alert("syn_b")], publish_alerts)

    assert len(raising()) == 2
    assert raising() == []  # no second artifact
    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    assert art.type == "table" and art.flow_run_id is not None
    assert [r["market"] for r in json.loads(art.data)] == ["syn_a", "syn_b"]
