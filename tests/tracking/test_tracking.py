"""MLflow run, registry round trip and champion/challenger decisions (real sqlite store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from supsup_fin.errors import RegistryError
from supsup_fin.tracking import forecasts_from_payload, load_champion, log_retrain, payload, tracking_uri
from supsup_fin.tracking import runs as runs_module
from supsup_fin.workspace import Workspace


@pytest.fixture
def logged(small_pipeline: dict, tmp_path) -> dict:
    ws = Workspace.resolve(tmp_path / "ws")
    p = small_pipeline
    run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                      forecaster=p["forecaster"], timings={"train": 1.0})
    return {**p, "ws": ws, "run": run}


def test_run_records_config_metrics_data_and_artifacts(logged: dict) -> None:
    uri = tracking_uri(logged["cfg"].tracking, logged["ws"])
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(logged["run"].run_id)
    assert run.data.params["features.lookback"] == "8"
    assert run.data.tags["data.syn_a.hash"] == logged["loaded"]["syn_a"].data_hash
    assert "test.syn_a/ALL.accuracy" in run.data.metrics and "hmm.syn_b.log_likelihood" in run.data.metrics
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/regimes_syn_a.png", "report/eval_tasks.csv", "report/hmm_syn_b.json"} <= report
    bank = {f.path for f in client.list_artifacts(run.info.run_id, "mask_bank")}
    assert {"mask_bank/masks.safetensors", "mask_bank/bank.json"} <= bank
    assert str(logged["ws"].root) in logged["run"].tracking_uri  # sqlite store inside the workspace


def test_registered_model_gives_the_in_memory_forecasts(logged: dict) -> None:
    run, fc, prices = logged["run"], logged["forecaster"], logged["prices"]
    assert run.version == 1 and "challenger" in run.aliases
    model, version = load_champion(run.model_name) if "champion" in run.aliases else (None, None)
    assert model is not None, run.decision.reason
    frame = pd.concat([payload(m, prices[m], fc.min_rows) for m in ("syn_a", "syn_b")])
    served = model.predict(frame)
    local = forecasts_from_payload(fc, frame)
    pd.testing.assert_frame_equal(served.reset_index(drop=True), local.reset_index(drop=True), check_dtype=False)
    direct = fc.predict("syn_b", prices["syn_b"])
    row = served[served.market == "syn_b"].iloc[0]
    np.testing.assert_allclose([row[f"p_{c}"] for c in fc.classes], list(direct["probabilities"].values()), atol=1e-6)
    assert json.loads(row["regime_posterior"]) == pytest.approx(direct["regime_posterior"])


def test_second_version_must_beat_the_champion(logged: dict) -> None:
    p, ws = logged, logged["ws"]
    first = p["run"]
    second = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                         forecaster=p["forecaster"])
    assert second.version == 2
    assert second.aliases == ["challenger"]  # the same score does not beat the champion by a margin
    assert "does not beat champion v1" in second.decision.reason
    client = MlflowClient(first.tracking_uri, registry_uri=first.tracking_uri)
    tags = client.get_model_version(first.model_name, "2").tags
    assert tags["promotion.promoted"] == "False" and tags["promotion.champion_version"] == "1"
    assert int(client.get_model_version_by_alias(first.model_name, "champion").version) == 1


def test_a_failure_after_registration_leaves_no_version(small_pipeline: dict, tmp_path, monkeypatch) -> None:
    ws = Workspace.resolve(tmp_path / "ws2")
    p = small_pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(runs_module, "decide", broken)
    with pytest.raises(RuntimeError, match="registry went away"):
        log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                    forecaster=p["forecaster"])
    uri = tracking_uri(p["cfg"].tracking, ws)
    client = MlflowClient(uri, registry_uri=uri)
    assert client.search_model_versions(f"name = '{p['cfg'].tracking.model_name}'") == []
    with pytest.raises(RegistryError, match="no 'champion' alias"):
        load_champion(p["cfg"].tracking.model_name)
