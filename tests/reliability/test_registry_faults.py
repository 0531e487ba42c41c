"""The registry under faults: a corrupted champion, a killed registration, a failed prune, a model
without a score, a degenerate HMM, first use of a fresh store by several processes at once."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from supsup_fin.errors import DataError, MaskFileError, RegistryError
from supsup_fin.forecaster.evaluate import Evaluation
from supsup_fin.live.forecast import forecast_markets
from supsup_fin.tracking import connect, log_retrain, tracking_uri
from supsup_fin.tracking.recovery import INCOMPLETE_TAG, recover_store
from supsup_fin.tracking.registry import MANIFEST_TAG, champion_version
from supsup_fin.tracking.versions import list_versions, logged_model_id, promote, prune
from supsup_fin.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log(p: dict, ws: Workspace, **kw):  # noqa: ANN202
    kw = {"loaded": p["loaded"], "regimes": p["regimes"], "evaluation": p["evaluation"],
          "forecaster": p["forecaster"], **kw}
    return log_retrain(kw.pop("cfg", p["cfg"]), ws, **kw)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(tmp_path / "ws")


def model_dir(client: MlflowClient, name: str, version: int) -> Path:
    """The registered version's forecaster files in the artifact store."""
    loc = client.get_logged_model(logged_model_id(client.get_model_version(name, str(version)))).artifact_location
    return Path(loc.removeprefix("file://")) / "artifacts" / "forecaster"


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(at * len(data))] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_corrupted_champion_is_replaced_and_said_so(small_pipeline: dict, ws: Workspace) -> None:
    first = _log(small_pipeline, ws)
    assert first.decision.promoted
    client = MlflowClient(first.tracking_uri, registry_uri=first.tracking_uri)
    name = first.model_name
    assert client.get_model_version(name, "1").tags[MANIFEST_TAG]
    flip_byte(model_dir(client, name, 1) / "bank" / "masks.safetensors")

    with pytest.raises(MaskFileError, match="masks.safetensors"):
        forecast_markets(small_pipeline["cfg"], ws)  # the corrupted champion cannot answer, and says why
    second = _log(small_pipeline, ws)  # same inputs and scores: only "no loadable champion" lets it through
    assert second.decision.promoted, second.decision.reason
    assert "cannot be loaded" in second.decision.reason
    assert "masks.safetensors" in client.get_model_version(name, "2").tags["promotion.champion_unloadable"]
    assert champion_version(client, name) == 2
    assert len(forecast_markets(small_pipeline["cfg"], ws)) == 2


def test_a_changed_digit_in_the_spec_is_caught_at_forecast(small_pipeline: dict, ws: Workspace) -> None:
    run = _log(small_pipeline, ws)
    client = MlflowClient(run.tracking_uri, registry_uri=run.tracking_uri)
    spec = model_dir(client, run.model_name, 1) / "forecaster.json"
    text = spec.read_text()
    i = text.index('"std"') + 10
    digit = next(j for j in range(i, len(text)) if text[j].isdigit())
    spec.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:])
    with pytest.raises(MaskFileError, match="forecaster.json"):
        forecast_markets(small_pipeline["cfg"], ws)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def killed_registration(small_pipeline: dict, ws: Workspace) -> tuple[MlflowClient, str, str]:
    """What a retrain killed right after "Created version 2" leaves: a RUNNING run of a dead
    process and a READY version with no score, decision or alias."""
    run = _log(small_pipeline, ws)
    client = MlflowClient(run.tracking_uri, registry_uri=run.tracking_uri)
    with mlflow.start_run(run_name="retrain-killed") as killed:
        mlflow.set_tags({"supsup_fin.flow": "retrain", "supsup_fin.pid": str(dead_pid()),
                         "supsup_fin.host": __import__("socket").gethostname()})
        source = client.get_model_version(run.model_name, "1")
        client.create_model_version(run.model_name, source.source, killed.info.run_id, await_creation_for=10)
        run_id = killed.info.run_id
    client.set_terminated(run_id, "RUNNING")  # the kill: the run never ended
    return client, run.model_name, run_id


def test_a_version_from_a_killed_registration_is_never_promotable(small_pipeline: dict, ws: Workspace) -> None:
    client, name, run_id = killed_registration(small_pipeline, ws)
    assert client.get_run(run_id).info.status == "RUNNING"
    with pytest.raises(RegistryError, match="incomplete"):
        promote(client, name, 2)

    rec = recover_store(client, small_pipeline["cfg"].tracking.experiment, name)
    assert rec.incomplete_versions == [2] and rec.failed_runs == [run_id]
    assert client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.FAILED)
    assert client.get_model_version(name, "2").tags[INCOMPLETE_TAG] == "true"
    assert [r["incomplete"] for r in list_versions(client, name)] == [False, True]
    assert not recover_store(client, small_pipeline["cfg"].tracking.experiment, name)  # done once
    with pytest.raises(RegistryError, match="incomplete"):
        promote(client, name, 2)
    # the next retrain compares with champion v1 (same scores: not promoted), never with v2
    third = _log(small_pipeline, ws, force=True)  # forced: the same inputs as v1 register nothing otherwise
    assert third.version == 3 and not third.decision.promoted and third.decision.champion_version == 1


def test_a_live_process_run_is_left_alone(small_pipeline: dict, ws: Workspace) -> None:
    run = _log(small_pipeline, ws)
    client = MlflowClient(run.tracking_uri, registry_uri=run.tracking_uri)
    with mlflow.start_run(run_name="forecast-live") as live:
        mlflow.set_tags({"supsup_fin.flow": "forecast", "supsup_fin.pid": str(__import__("os").getpid()),
                         "supsup_fin.host": __import__("socket").gethostname()})
        assert not recover_store(client, small_pipeline["cfg"].tracking.experiment, run.model_name)
    assert client.get_run(live.info.run_id).info.status == "FINISHED"


def test_a_failed_prune_is_recorded_not_marked_and_reports_stay(small_pipeline: dict, ws: Workspace,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_pipeline["cfg"]
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"keep_last": 100})})
    runs = [_log(small_pipeline, ws, cfg=cfg, force=True) for _ in range(3)]  # three versions of the same inputs
    client = MlflowClient(runs[0].tracking_uri, registry_uri=runs[0].tracking_uri)
    name = runs[0].model_name
    v2_model = model_dir(client, name, 2)
    v2_run = Path(client.get_run(runs[1].run_id).info.artifact_uri.removeprefix("file://"))
    assert (v2_run / "report").is_dir() and (v2_run / "mask_bank").is_dir()

    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    real = LocalArtifactRepository.delete_artifacts

    def failing(self, artifact_path=None):  # noqa: ANN001, ANN202
        raise OSError("read-only file system")

    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", failing)
    assert prune(client, name, keep_last=1) == []
    tags = client.get_model_version(name, "2").tags
    assert "pruned" not in tags and "read-only" in tags["prune_error"]
    assert v2_model.is_dir()

    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", real)
    assert prune(client, name, keep_last=1) == [2]  # tried again, now it works
    tags = client.get_model_version(name, "2").tags
    assert tags["pruned"] == "true" and "prune_error" not in tags
    assert not v2_model.exists() and not (v2_run / "mask_bank").exists()
    assert (v2_run / "report" / "eval_markets.csv").is_file()  # reports stay


def test_no_score_on_valid_registers_nothing(small_pipeline: dict, ws: Workspace) -> None:
    ev = small_pipeline["evaluation"]
    no_valid = Evaluation(tasks=ev.tasks, markets=ev.markets[ev.markets.segment != "valid"])
    with pytest.raises(DataError, match="segments.valid"):
        _log(small_pipeline, ws, evaluation=no_valid)
    client = connect(small_pipeline["cfg"].tracking, ws)
    assert client.search_model_versions(f"name = '{small_pipeline['cfg'].tracking.model_name}'") == []


def _first_connect(args: tuple[str, str]) -> str:
    home, experiment = args
    from supsup_fin.config import TrackingConfig

    client = connect(TrackingConfig(experiment=experiment), Workspace.resolve(home))
    return client.get_experiment_by_name(experiment).experiment_id


def first_use_race(tmp_path: Path, attempt: int, processes: int) -> None:
    home = str(tmp_path / f"fresh{attempt}")
    with mp.get_context("spawn").Pool(processes) as pool:
        ids = pool.map(_first_connect, [(home, "race")] * processes)
    assert len(set(ids)) == 1
    uri = tracking_uri(__import__("supsup_fin.config", fromlist=["TrackingConfig"]).TrackingConfig(), Workspace.resolve(home))
    assert len(MlflowClient(uri).search_experiments()) == 2  # Default + race: nothing created twice


def test_first_use_of_a_fresh_workspace_by_three_processes(tmp_path: Path) -> None:
    """Without the store lock this failed with sqlite "duplicate column name" / "table
    _alembic_tmp_experiments already exists" from racing migrations."""
    first_use_race(tmp_path, 0, 3)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(10))
def test_first_use_of_a_fresh_workspace_by_four_processes_slow(tmp_path: Path, attempt: int) -> None:
    first_use_race(tmp_path, attempt, 4)


def degenerate_fit(rf):  # noqa: ANN001, ANN201 - a RegimeFit
    """``rf`` with its HMM refitted on prices holding one bad tick: it falls back to one state."""
    from conftest import SEED, random_walk

    from supsup_fin.regimes import RegimeModel

    bad = random_walk(1100, seed=SEED)
    bad.iloc[300, 0] *= 1e6
    model = RegimeModel((2, 3), n_restarts=1, random_state=SEED, market=rf.market).fit(bad)
    assert model.degenerate
    return dataclasses.replace(rf, model=model)


def test_a_degenerate_hmm_is_not_promoted_without_force(small_pipeline: dict, ws: Workspace) -> None:
    regimes = dict(small_pipeline["regimes"])
    regimes["syn_a"] = degenerate_fit(regimes["syn_a"])
    held = _log(small_pipeline, ws, regimes=regimes)
    assert not held.decision.promoted and "--force" in held.decision.reason
    assert "syn_a" in held.decision.blocked_by and "1 state" in held.decision.blocked_by
    client = MlflowClient(held.tracking_uri, registry_uri=held.tracking_uri)
    tags = client.get_model_version(held.model_name, "1").tags
    assert tags["regimes.syn_a.fallback"].startswith("market 'syn_a': no usable fit")
    assert client.get_model_version(held.model_name, "1").description.startswith(
        "Registered v1, blocked (no champion) by market 'syn_a': the HMM fell back to 1 state(s)")
    assert champion_version(client, held.model_name) is None

    forced = _log(small_pipeline, ws, regimes=regimes, force=True)
    assert forced.decision.promoted and "forced despite" in forced.decision.reason
    assert champion_version(client, held.model_name) == 2
