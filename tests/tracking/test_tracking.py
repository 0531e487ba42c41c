"""MLflow run, registry round trip and champion/challenger decisions (real sqlite store)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from supsup_fin.config import MarketConfig
from supsup_fin.errors import RegistryError
from supsup_fin.tracking import connect, forecasts_from_payload, load_champion, log_retrain, payload, tracking_uri
from supsup_fin.tracking import runs as runs_module
from supsup_fin.tracking.describe import describe_model, price_source
from supsup_fin.tracking.registry import set_champion
from supsup_fin.tracking.versions import logged_model_id
from supsup_fin.workspace import Workspace


def _logged(p: dict, ws: Workspace) -> dict:
    run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                      forecaster=p["forecaster"], timings={"train": 1.0})
    return {**p, "ws": ws, "run": run}


@pytest.fixture(scope="module")
def recorded(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One retrain recorded in a fresh store (its metric-history queries counted), for the tests that only read it."""
    queried: list[str] = []
    history = MlflowClient.get_metric_history

    def counted(self: MlflowClient, run_id: str, key: str) -> list:
        queried.append(key)
        return history(self, run_id, key)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.MonkeyPatch.context() as counting:
            counting.setattr(MlflowClient, "get_metric_history", counted)
            logged = _logged(small_pipeline, Workspace.resolve(tmp_path_factory.mktemp("recorded") / "ws"))
        yield {**logged, "history_queries": queried}


@pytest.fixture
def logged(small_pipeline: dict, tmp_path) -> dict:
    return _logged(small_pipeline, Workspace.resolve(tmp_path / "ws"))


def test_run_records_config_metrics_data_and_artifacts(recorded: dict) -> None:
    uri = tracking_uri(recorded["cfg"].tracking, recorded["ws"])
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(recorded["run"].run_id)
    assert run.data.params["features.lookback"] == "8"
    assert run.data.tags["data.syn_a.hash"] == recorded["loaded"]["syn_a"].data_hash
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/regimes_syn_a.png", "report/regimes_syn_b.png", "report/regimes.csv", "report/hmm.json",
            "report/health.json", "report/eval_tasks.csv", "report/selection.csv", "report/calibration.csv",
            "report/masks.csv", "report/mask_inputs.png", "report/mask_inputs.csv", "report/mask_overlap.csv"} <= report
    assert run.data.tags["report.figures"] == "2 of 2 markets"
    assert not [k for k in run.data.params if k.startswith("markets.")]  # one table, not 8 params per market
    local = Path(client.download_artifacts(run.info.run_id, "report/markets.csv", str(recorded["ws"].root / "dl")))
    markets = pd.read_csv(local)
    assert markets[["name", "source", "dataset", "seed"]].values.tolist() == [["syn_a", "synthetic", "easy", 1],
                                                                                ["syn_b", "synthetic", "hard", 2]]
    bank = {f.path for f in client.list_artifacts(run.info.run_id, "mask_bank")}
    assert {"mask_bank/masks.safetensors", "mask_bank/bank.json"} <= bank
    assert str(recorded["ws"].root) in recorded["run"].tracking_uri  # sqlite store inside the workspace


def test_metrics_are_grouped_by_their_path(recorded: dict) -> None:
    """The served mode's scores per segment and market, the selection and the HMM fits: 47 scalars
    for two markets (it was 189); the MLflow UI charts each prefix before the last ``/`` as a section."""
    client = MlflowClient(recorded["run"].tracking_uri)
    metrics = client.get_run(recorded["run"].run_id).data.metrics
    ev, mode = recorded["evaluation"], recorded["cfg"].gating.mode
    assert metrics["valid/log_loss"] == pytest.approx(ev.score("valid", "log_loss", mode)[0])
    assert metrics["valid/baseline_log_loss"] == pytest.approx(ev.score("valid", "log_loss", mode)[1])
    row = ev.markets.set_index(["segment", "market", "mode"]).loc[("test", "syn_b", mode)]
    assert metrics["test/syn_b/log_loss"] == pytest.approx(row["log_loss"])
    assert metrics["test/syn_b/baseline_brier"] == pytest.approx(row["baseline_brier"])
    sel = recorded["forecaster"].markets["syn_a"].selection
    assert metrics["selection/syn_a/hard_log_loss"] == pytest.approx(sel["log_loss"]["hard"])
    assert metrics["hmm/syn_b/n_states"] == recorded["regimes"]["syn_b"].model.n_states_
    assert metrics["time/train_s"] == 1.0
    markets, segments, scores, modes, hmm = 2, 2, 6, len(sel["log_loss"]) + 1, 3
    assert len(metrics) == 2 * segments + markets * (segments * scores + modes + hmm) + 1
    sections = {k.rpartition("/")[0] for k in metrics}
    assert sections == {"valid", "test", "time", *(f"{g}/{m}" for g in ("valid", "test", "selection", "hmm")
                                                   for m in ("syn_a", "syn_b"))}


def test_the_model_is_logged_before_the_per_market_metrics_and_carries_them_all(recorded: dict) -> None:
    """Logging a model reads the history of each metric the run has by then (one query each, 21 a
    market): the per-market metrics come after it, and MLflow links them to the model as they come."""
    client = MlflowClient(recorded["run"].tracking_uri)
    version = client.get_model_version(recorded["cfg"].tracking.model_name, str(recorded["run"].version))
    run = set(client.get_run(recorded["run"].run_id).data.metrics)
    assert {m.key for m in client.get_logged_model(logged_model_id(version)).metrics} == run
    assert sorted(recorded["history_queries"]) == sorted(k for k in run if k.count("/") == 1)


def test_prices_are_run_inputs_without_their_rows(recorded: dict) -> None:
    run = MlflowClient(recorded["run"].tracking_uri).get_run(recorded["run"].run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["syn_a", "syn_b"]
    lp, got = recorded["loaded"]["syn_b"], inputs["syn_b"]
    assert got.dataset.digest == lp.data_hash[:36]
    assert got.dataset.source_type == "local" and json.loads(got.dataset.source) == {"uri": "synthetic:hard?seed=2"}
    assert json.loads(got.dataset.profile) == {"num_rows": len(lp.frame), "num_elements": lp.frame.size,
                                               "first_date": str(lp.frame.index[0].date()),
                                               "last_date": str(lp.as_of.date())}
    assert [c["name"] for c in json.loads(got.dataset.schema)["mlflow_colspec"]] == list(lp.frame.columns)
    tags = {t.key: t.value for t in got.tags}
    assert tags == {"mlflow.data.context": "training", "source": "synthetic", "data_hash": lp.data_hash, "stale_days": "0"}


@pytest.mark.parametrize(("market", "source", "expected"), [
    ({"source": "yahoo", "ticker": "^GSPC"}, "yahoo", ("http", {"url": "https://finance.yahoo.com/quote/%5EGSPC"})),
    ({"source": "yahoo", "ticker": "BRK.B"}, "yahoo-cache", ("local", {"uri": "CACHE/yahoo/BRK%2EB.parquet"})),
    ({"source": "file", "path": "prices.csv"}, "file", ("local", {"uri": "CWD/prices.csv"})),
])
def test_each_source_names_where_the_prices_came_from(small_pipeline: dict, tmp_path, monkeypatch, market: dict,
                                                      source: str, expected: tuple) -> None:
    monkeypatch.chdir(tmp_path)
    lp = dataclasses.replace(small_pipeline["loaded"]["syn_a"], source=source)
    got = price_source(MarketConfig(name="m", **market), lp, tmp_path / "cache")
    kind, doc = expected
    doc = {k: v.replace("CACHE", str(tmp_path / "cache")).replace("CWD", str(tmp_path)) for k, v in doc.items()}
    assert (got._get_source_type(), got.to_dict()) == (kind, doc)


def test_a_bundled_source_is_the_folder_its_file_ships_in(small_pipeline: dict, tmp_path) -> None:
    lp = dataclasses.replace(small_pipeline["loaded"]["syn_a"], source="bundled")
    folder = Path(price_source(MarketConfig(name="sp500", source="bundled", dataset="sp500"), lp, tmp_path).to_dict()["uri"])
    assert (folder / "sp500.csv.gz").is_file()


def test_run_version_and_model_are_described(recorded: dict) -> None:
    run, ev = recorded["run"], recorded["evaluation"]
    client = MlflowClient(run.tracking_uri, registry_uri=run.tracking_uri)
    note = client.get_run(run.run_id).data.tags["mlflow.note.content"]
    score, prior = ev.score("valid", "log_loss", recorded["cfg"].gating.mode)
    assert note.startswith("Promoted: v1 is the champion; valid log_loss")
    assert f"Valid log_loss **{score:.4f}** against the class prior's {prior:.4f}" in note
    assert "Markets **syn_a, syn_b**, prices 2000-01-03 .. " in note
    table = [ln for ln in note.splitlines() if ln.startswith("| syn_")]
    test_ll = ev.markets.set_index(["segment", "market", "mode"]).loc[("test", "syn_a", "auto"), "log_loss"]
    assert len(table) == 2 and table[0].startswith("| syn_a | auto: ") and f"| {test_ll:.4f} |" in table[0]
    assert client.get_model_version(run.model_name, "1").description == note
    model = client.get_registered_model(run.model_name).description
    assert "Regime-gated supermask forecaster" in model
    assert f"**Champion: v1** (`models:/small-model@champion`): valid log_loss **{score:.4f}**" in model
    assert f"retrain run `{run.run_id}` registered v1 and promoted it." in model


def test_registered_model_gives_the_in_memory_forecasts(recorded: dict) -> None:
    run, fc, prices = recorded["run"], recorded["forecaster"], recorded["prices"]
    connect(recorded["cfg"].tracking, recorded["ws"])  # load_champion reads the current store
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
    assert row["regime_posterior"] == pytest.approx(direct["regime_posterior"])


def test_an_unchanged_retrain_registers_nothing_unless_forced(logged: dict) -> None:
    p, ws, first = logged, logged["ws"], logged["run"]
    client = MlflowClient(first.tracking_uri, registry_uri=first.tracking_uri)
    kw = {"loaded": p["loaded"], "regimes": p["regimes"], "evaluation": p["evaluation"], "forecaster": p["forecaster"]}
    cost = p["cfg"].model_copy(update={"backtest": p["cfg"].backtest.model_copy(update={"cost_bps": 9.0})})
    same = log_retrain(cost, ws, **kw)  # a backtest setting is no input of the model
    assert (same.version, same.unchanged_since, same.aliases) == (1, 1, ["challenger", "champion"])
    assert same.decision.reason.startswith("unchanged since v1")
    assert [int(v.version) for v in client.search_model_versions("name = 'small-model'")] == [1]
    run = client.get_run(same.run_id)
    assert run.data.tags["unchanged_since"] == "1" and "registered_version" not in run.data.tags
    assert run.data.tags["mlflow.note.content"].startswith("Unchanged since v1: the same data, config and code")
    assert not run.outputs.model_outputs and not client.list_artifacts(same.run_id, "mask_bank")
    assert "valid/log_loss" in run.data.metrics and run.inputs.dataset_inputs  # still a full record

    forced = log_retrain(p["cfg"], ws, **kw, force=True)
    assert forced.version == 2 and forced.unchanged_since is None
    assert forced.aliases == ["challenger"]  # the same score does not beat the champion by a margin
    assert "does not beat champion v1" in forced.decision.reason
    tags = client.get_model_version(first.model_name, "2").tags
    assert tags["promotion.promoted"] == "False" and tags["promotion.champion_version"] == "1"
    assert int(client.get_model_version_by_alias(first.model_name, "champion").version) == 1
    assert client.get_model_version(first.model_name, "2").description.startswith(
        "Registered v2, kept v1 as champion: valid log_loss")

    set_champion(client, first.model_name, 2)  # as `promote --version 2` moves it, which then describes the model
    text = describe_model(client, first.model_name, "v2 promoted by hand")
    assert "**Champion: v2** (`models:/small-model@champion`): valid log_loss **" in text
    assert "Champions so far: v1 → v2." in text and text.endswith("v2 promoted by hand.")
    assert client.get_registered_model(first.model_name).description == text


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
