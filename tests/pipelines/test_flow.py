"""The retrain flow end to end under Prefect's test harness, on small synthetic markets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import small_config_dict
from supsup_fin.config import config_from_dict
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.live.forecast import forecast_markets
from supsup_fin.progress import listening
from supsup_fin.tracking.registry import download_forecaster
from supsup_fin.workspace import Workspace


def test_prefect_reads_the_defaults_set_before_it_is_imported(prefect_settings: dict[str, str]) -> None:
    """conftest sets them as the CLI does, before anything imports Prefect: this process's Prefect sees them."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    assert settings.server.ephemeral.startup_timeout_seconds == int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    assert settings.server.analytics_enabled is (os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"].lower() == "true")
    assert settings.logging.extra_loggers == os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")


def test_retrain_flow_registers_a_reproducible_forecaster(harness, small_pipeline: dict, tmp_path: Path) -> None:
    from pipelines.retrain import run_retrain

    cfg = config_from_dict(small_config_dict())
    stages: list[tuple[int, int, str]] = []
    with listening(lambda stage, done, total, info: stages.append((done, total, info)) if stage == "retrain" else None):
        summary = run_retrain(cfg, tmp_path / "ws")
    assert stages == [(0, 5, "ingest"), (1, 5, "features and regimes"), (2, 5, "train masks"), (3, 5, "evaluate"),
                      (4, 5, "log and register"), (5, 5, "done")]  # the CLI's progress bar over the stages
    # the summary contract the CLI's --json relies on
    assert summary["markets"] == ["syn_a", "syn_b"]
    assert {"registered_model", "tracking_uri", "elapsed_s", "tasks", "promotion"} <= set(summary)
    first = summary["tasks"][0]
    assert {"market", "regime", "n_train", "n_test", "accuracy", "baseline_accuracy", "log_loss",
            "baseline_log_loss", "mask_density"} <= set(first)
    assert {t["regime"] for t in summary["tasks"] if t["market"] == "syn_a"} >= {"ALL"}
    reg = summary["registered_model"]
    assert reg["name"] == "small-model" and reg["version"] == 1 and "challenger" in reg["aliases"]
    assert reg["unchanged_since"] is None
    assert set(summary["timings_s"]) == {"ingest", "features_regimes", "train_masks", "evaluate", "log_register"}

    # determinism: same config, seed, data and threads -> the same mask bits as the in-process run
    ws = Workspace.resolve(tmp_path / "ws")
    import mlflow

    mlflow.set_tracking_uri(summary["tracking_uri"])
    served = RegimeGatedForecaster.load(download_forecaster("small-model", "1", tempfile.mkdtemp()))
    local = small_pipeline["bank"]
    assert served.bank.names == local.names
    for name in local.names:
        assert all(torch.equal(a, b) for a, b in zip(served.bank[name].layers, local[name].layers))

    # live forecasts come from the registry's champion
    assert "champion" in reg["aliases"], summary["promotion"]["reason"]
    rows = forecast_markets(cfg, ws)
    assert [r["market"] for r in rows] == ["syn_a", "syn_b"]
    for r in rows:
        mine = small_pipeline["forecaster"].predict(r["market"], small_pipeline["prices"][r["market"]])
        assert r["as_of"] == mine["as_of"] and r["model_version"] == 1
        np.testing.assert_allclose([r[f"p_{c}"] for c in served.classes], list(mine["probabilities"].values()), atol=1e-6)

    # a second retrain (the same data and code, another promotion margin: a new version) continues each
    # market's regime lineage: aligned to the champion's HMM (same state count and names, identity
    # matching on unchanged data) and every mask carried over
    margin = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"margin": 0.5})})
    again = run_retrain(margin, tmp_path / "ws")
    assert again["registered_model"]["version"] == 2 and again["registered_model"]["unchanged_since"] is None
    description = MlflowClient(summary["tracking_uri"]).get_model_version("small-model", "2").description
    assert description.endswith("Changed since champion v1: config (tracking.margin).")
    v2 = RegimeGatedForecaster.load(download_forecaster("small-model", "2", tempfile.mkdtemp()))
    for market, mm in v2.markets.items():
        first = served.markets[market].regime
        assert mm.regime.names_ == first.names_ and mm.regime.permutation_ == list(range(first.n_states_))
        np.testing.assert_array_equal(mm.regime.transmat_, first.transmat_)
    assert all(v2.bank.meta(n).get("carried_from") == "v1" for n in v2.bank.names)


def test_bad_market_data_fails_the_flow_and_registers_nothing(harness, tmp_path: Path) -> None:
    from pipelines.retrain import run_retrain

    bad = tmp_path / "bad.csv"
    dates = pd.bdate_range("2000-01-03", periods=4000)
    close = np.linspace(100, 200, len(dates))
    close[1234] = -5.0
    pd.DataFrame({"date": dates, "close": close}).to_csv(bad, index=False)
    tree = small_config_dict()
    tree["markets"] = [tree["markets"][0], {"name": "broken", "source": "file", "path": str(bad)}]
    cfg = config_from_dict(tree)
    with pytest.raises(DataError, match=r"broken.*close.*2004-09-2"):
        run_retrain(cfg, tmp_path / "ws")
    uri = f"sqlite:///{Workspace.resolve(tmp_path / 'ws').mlflow_db}"
    assert MlflowClient(uri, registry_uri=uri).search_registered_models() == []


def test_the_forecast_flow_predicts_every_market_at_once(harness, small_pipeline: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Both markets' predictions must be in flight together: each waits at a two-party barrier,
    which a flow that waits for one market's result before submitting the next never passes."""
    import threading

    import pipelines.forecast as forecast_pipeline
    from pipelines.forecast import run_forecast
    from supsup_fin.live.table import read_forecasts
    from supsup_fin.tracking import log_retrain

    p, ws = small_pipeline, Workspace.resolve(tmp_path / "ws")
    log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                forecaster=p["forecaster"])
    barrier, real = threading.Barrier(2, timeout=60), forecast_pipeline.forecast_one

    def together(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(forecast_pipeline, "forecast_one", together)
    out = run_forecast(p["cfg"].model_copy(update={"runtime": p["cfg"].runtime.model_copy(update={"max_workers": 4})}), ws.root)
    assert sorted(r["market"] for r in out["forecasts"]) == ["syn_a", "syn_b"] and out["added"] == 2
    assert len(read_forecasts(ws)) == 2
