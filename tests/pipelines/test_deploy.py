"""Champion/challenger by hand (promote, rollback), retention, mask carry-over, the forecasts table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import small_config_dict
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from supsup_fin.cli import app
from supsup_fin.config import config_from_dict
from supsup_fin.errors import RegistryError
from supsup_fin.live.table import append_forecasts, read_forecasts
from supsup_fin.live.forecast import forecast_markets, store_forecasts
from supsup_fin.tracking import log_retrain, tracking_uri
from supsup_fin.tracking.recovery import INCOMPLETE_TAG
from supsup_fin.tracking.registry import HISTORY_TAG, Decision, champion_version
from supsup_fin.tracking.versions import decision, list_versions, promote, prune, rollback, state
from supsup_fin.forecaster.training import reusable_masks, train_tasks
from supsup_fin.workspace import Workspace


def _log(p: dict, ws: Workspace, cfg=None):
    """Register the small model again (``force``: the same inputs as the champion register a new version)."""
    return log_retrain(cfg or p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                       forecaster=p["forecaster"], force=True)


@pytest.fixture(scope="module")
def _registry_once(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three versions of the small model: v1 champion (first), v2 and v3 equal-scored challengers."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("registry"))
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri exports the URI: drop an earlier test's
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for _ in range(3):
            run = _log(small_pipeline, ws)
        uri = tracking_uri(small_pipeline["cfg"].tracking, ws)
    return {"ws": ws, "client": MlflowClient(uri, registry_uri=uri), "name": run.model_name, "p": small_pipeline}


@pytest.fixture
def registry(_registry_once: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The shared registry reset to: champion v1 (history [1]). Retention runs last (it prunes)."""
    reg = _registry_once
    monkeypatch.setenv("SUPSUP_FIN_HOME", str(reg["ws"].root))
    reg["client"].set_registered_model_alias(reg["name"], "champion", "1")
    reg["client"].set_registered_model_tag(reg["name"], HISTORY_TAG, "1")
    return reg


def _champ(reg: dict) -> int | None:
    return champion_version(reg["client"], reg["name"])


def test_promote_and_rollback_move_the_alias_only_when_they_should(registry: dict) -> None:
    client, name = registry["client"], registry["name"]
    assert _champ(registry) == 1
    rows = list_versions(client, name)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert rows[0]["aliases"] == ["champion"] and rows[2]["aliases"] == ["challenger"]
    assert rows[0]["data_start"] == "2000-01-03" and rows[0]["valid_score"] is not None

    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(client, name)
    with pytest.raises(RegistryError, match="no version 9"):
        promote(client, name, 9)
    with pytest.raises(RegistryError, match="already the champion"):
        promote(client, name, 1)
    assert _champ(registry) == 1  # failed moves changed nothing

    moved = promote(client, name, 3, "hand test")
    assert moved["champion"] == 3 and moved["previous_champion"] == 1 and _champ(registry) == 3
    tags = client.get_model_version(name, "3").tags
    assert tags["manual.last_action"] == "promote" and tags["manual.previous_champion"] == "1"
    run = client.get_run(moved["run_id"])
    assert run.data.tags["supsup_fin.flow"] == "promote" and run.data.tags["reason"] == "hand test"

    promote(client, name, 2)
    assert rollback(client, name)["champion"] == 3 and _champ(registry) == 3
    assert rollback(client, name)["champion"] == 1 and _champ(registry) == 1
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(client, name)
    assert _champ(registry) == 1
    assert client.get_model_version(name, "1").tags["manual.last_action"] == "rollback"


def test_cli_models_promote_rollback(registry: dict) -> None:
    cfg_file = registry["ws"].root / "small.json"
    cfg_file.write_text(json.dumps(small_config_dict()))  # JSON is YAML
    home = ["--home", str(registry["ws"].root)]
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "-c", str(cfg_file), "--json", *home])
    assert listed.exit_code == 0, listed.output
    assert [(r["aliases"], r["decision"], r["state"]) for r in json.loads(listed.stdout)] == [
        (["champion"], "promoted", "ok"), ([], "kept champion v1", "ok"), (["challenger"], "kept champion v1", "ok")]
    human = runner.invoke(app, ["models", "-c", str(cfg_file), *home])
    assert human.exit_code == 0 and "2000-01-03..2018-12-31" in human.stdout
    header = human.stdout.splitlines()[2]
    assert [c.strip() for c in header.split("┃")[1:5]] == ["version", "aliases", "decision", "state"]
    assert "promoted" not in header and "kept champion v1" in human.stdout
    bad = runner.invoke(app, ["promote", "-c", str(cfg_file), "--version", "7", *home])
    assert bad.exit_code == 1 and "no version 7" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(app, ["promote", "-c", str(cfg_file), "--version", "2", "--json", *home])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["champion"] == 2
    # promoted by hand: the alias moved; what the retrain decided at registration did not
    after = json.loads(runner.invoke(app, ["models", "-c", str(cfg_file), "--json", *home]).stdout)
    assert [(r["aliases"], r["decision"]) for r in after[:2]] == [([], "promoted"), (["champion"], "kept champion v1")]
    back = runner.invoke(app, ["rollback", "-c", str(cfg_file), *home])
    assert back.exit_code == 0 and "v2 -> v1" in back.stdout
    assert _champ(registry) == 1


def _tags(promoted: bool, reason: str, champion: int | None = None, blocked: str | None = None) -> dict[str, str]:
    return Decision(4, promoted, "log_loss", 1.0, 1.1, champion, 1.05 if champion else None, reason,
                    blocked_by=blocked).as_tags()


def test_decision_and_state_say_what_the_gate_decided_and_what_is_left() -> None:
    """Each outcome of the champion gate (the reasons it records) and each state of a version."""
    assert decision(_tags(True, "valid log_loss 1.0000 beats the class prior 1.1000 and no champion")) == "promoted"
    hmm = "syn_a: HMM fell back"
    assert decision(_tags(True, f"valid log_loss 1.0000 beats ... (forced despite: {hmm})", blocked=hmm)) == "promoted (forced)"
    kept = _tags(False, "valid log_loss 1.0000 does not beat champion v3 (0.9000)", champion=3)
    assert decision(kept) == "kept champion v3"
    below = _tags(False, "valid log_loss 1.2000 does not beat the class prior 1.1000")
    assert decision(below) == "below the class prior"
    assert decision(_tags(False, f"not promoted without --force: {hmm}", blocked=hmm)) == f"blocked: {hmm}"
    incomplete = {INCOMPLETE_TAG: "true", "promotion.promoted": "False", "promotion.reason": "registered by run r"}
    assert (decision(incomplete), state(incomplete)) == ("none", "incomplete")
    assert decision({}) == "none"
    assert [state(t) for t in ({}, {"pruned": "true"}, {"prune_error": "x"})] == ["ok", "pruned", "prune failed"]


def test_unchanged_masks_are_carried_over_bit_identically(small_pipeline: dict) -> None:
    p = small_pipeline
    net, champ = p["net"], p["bank"]
    tasks = list(p["tasks"])
    changed = tasks[1]
    tasks[1] = dataclasses.replace(changed, meta={**changed.meta, "data_hash": "new data"})
    carried = reusable_masks(tasks, champ, net, "v1")
    assert set(carried.names) == {t.name for t in tasks} - {changed.name}
    assert all(carried[n] is champ[n] and carried.meta(n)["carried_from"] == "v1" for n in carried.names)
    _, bank = train_tasks(tasks, p["cfg"], previous=champ, previous_name="v1")
    assert set(bank.names) == {t.name for t in tasks}
    for n in carried.names:
        assert all(torch.equal(a, b) for a, b in zip(bank[n].layers, champ[n].layers))
    assert "carried_from" not in bank.meta(changed.name)
    # another config (e.g. other training steps) carries nothing over
    other = config_from_dict(small_config_dict(training={"steps": 41, "batch_size": 64}))
    from supsup_fin.forecaster.mask_tasks import make_tasks

    fresh = make_tasks(p["features"], p["regimes"], other)
    assert len(reusable_masks(fresh, champ, net, "v1")) == 0


def test_forecasts_table_is_idempotent(registry: dict) -> None:
    p, ws = registry["p"], registry["ws"]
    rows = forecast_markets(p["cfg"], ws)
    first = store_forecasts(p["cfg"], ws, rows)
    assert first["added"] == 2 and first["skipped"] == 0 and first["run_id"]
    again = store_forecasts(p["cfg"], ws, forecast_markets(p["cfg"], ws))
    assert again == {**again, "added": 0, "skipped": 2, "run_id": None}
    table = read_forecasts(ws)
    assert len(table) == 2 and not table.duplicated(["as_of", "market", "model_version"]).any()
    assert {"regime_posterior", "masks", "signal", "data_as_of", "source", "stale_days", "p_down"} <= set(table.columns)
    assert json.loads(table.iloc[0]["regime_posterior"])
    # a new model version on the same date is a new key; the old rows are kept untouched
    promote(registry["client"], registry["name"], 2)
    third = store_forecasts(p["cfg"], ws, forecast_markets(p["cfg"], ws))
    assert third["added"] == 2
    table2 = read_forecasts(ws)
    assert len(table2) == 4
    pd.testing.assert_frame_equal(table2.iloc[:2], table, check_dtype=False)
    client = registry["client"]
    run = client.get_run(first["run_id"])
    assert run.data.tags["supsup_fin.flow"] == "forecast" and "signal.syn_a" in run.data.metrics


def test_forecasts_table_rejects_rows_without_a_key(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path)
    with pytest.raises(ValueError, match="model_version"):
        append_forecasts(ws, [{"as_of": "2020-01-02", "market": "x"}])
    assert read_forecasts(ws).empty


def _append_many(root: str, writer: int, n: int) -> None:
    ws = Workspace.resolve(root)
    for i in range(n):
        append_forecasts(ws, [{"as_of": f"2020-01-{1 + i % 28:02d}", "market": f"m{writer}_{i}", "model_version": 1,
                               "signal": float(i)}])


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    """Four processes appending at once: every row lands (the read-modify-write is locked)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 15)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    table = read_forecasts(Workspace.resolve(tmp_path))
    assert len(table) == 60 and not table.duplicated(["as_of", "market", "model_version"]).any()


def test_retention_keeps_the_last_n_and_every_champion(registry: dict) -> None:
    client, name, p, ws = registry["client"], registry["name"], registry["p"], registry["ws"]
    assert prune(client, name, keep_last=10) == []
    assert prune(client, name, keep_last=1) == [2]  # v1 was champion, v3 is the latest (and challenger)
    rows = {r["version"]: r for r in list_versions(client, name)}
    assert [(v, r["state"]) for v, r in rows.items()] == [(1, "ok"), (2, "pruned"), (3, "ok")]
    with pytest.raises(RegistryError, match="pruned"):
        promote(client, name, 2)
    assert _champ(registry) == 1
    assert prune(client, name, keep_last=1) == []  # idempotent
    # the champion still loads and forecasts after pruning
    assert {r["model_version"] for r in forecast_markets(p["cfg"], ws)} == {1}


def test_forecast_of_a_market_nobody_knows_is_an_error(registry: dict, tmp_path: Path) -> None:
    """An unknown --market exits 1 naming the known ones (it used to exit 0 with empty output)."""
    import yaml

    tree = small_config_dict()
    tree["markets"].append({"name": "syn_c", "source": "synthetic", "dataset": "easy", "seed": 3})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    home = ["--config", str(cfg), "--home", str(registry["ws"].root)]
    nosuch = CliRunner().invoke(app, ["forecast", "--market", "NOSUCH", *home])
    assert nosuch.exit_code == 1 and "unknown market 'NOSUCH'; configured: ['syn_a', 'syn_b', 'syn_c']" in nosuch.stderr
    untrained = CliRunner().invoke(app, ["forecast", "--market", "syn_c", "--json", *home])
    assert untrained.exit_code == 1 and untrained.stdout == ""
    assert "has no masks for market(s) ['syn_c']; it knows ['syn_a', 'syn_b']" in " ".join(untrained.stderr.split())
    both = CliRunner().invoke(app, ["forecast", "--json", *home])  # all configured: the unknown one skipped
    assert both.exit_code == 0 and sorted(r["market"] for r in json.loads(both.stdout)) == ["syn_a", "syn_b"]
