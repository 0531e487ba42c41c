"""What a person sees of a retrain in the MLflow UI (headless Chromium): the run page lists the
prices as datasets and shows the run's description; the registered model's page and the version's
page show theirs. Slow: the UI is a React app served by ``mlflow server`` (~15 s to start)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import open_page, skip_without_browser

from supsup_fin.tracking import log_retrain
from supsup_fin.tracking.ui import model_version_url, mlflow_ui, run_url
from supsup_fin.workspace import Workspace

pytestmark = [pytest.mark.slow, skip_without_browser]


@pytest.fixture(scope="module")
def ui(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One retrain recorded in a fresh workspace, and the MLflow UI on its store."""
    p, root = small_pipeline, tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ws = Workspace.resolve(root / "ws")
        run = log_retrain(p["cfg"], ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                          forecaster=p["forecaster"])
        with mlflow_ui(p["cfg"].tracking, ws, log_file=root / "ui.log") as running:
            yield {**p, "run": run, "ui": running, "shots": Path(root)}


def test_the_run_page_shows_the_datasets_and_the_description(ui: dict) -> None:
    run, lp = ui["run"], ui["loaded"]["syn_a"]
    with open_page(run_url(ui["ui"].url, ui["ui"].experiment_id, run.run_id), timeout_s=60) as page:
        page.get_by_text("Promoted: v1 is the champion").first.wait_for()
        body = page.inner_text("body")
        assert f"syn_a ({lp.data_hash[:36]})" in body and "Training" in body
        page.get_by_text(f"syn_a ({lp.data_hash[:36]})").first.click()
        drawer = page.get_by_text("Data details for").locator("xpath=ancestor::*[@role='dialog']")
        drawer.get_by_text("Path: synthetic:easy?seed=1").wait_for()
        text = drawer.inner_text()
        assert f"num rows: {len(lp.frame)}" in text and f"first date: {lp.frame.index[0].date()}" in text
        assert f"last date: {lp.as_of.date()}" in text
        page.screenshot(path=str(ui["shots"] / "run.png"))


def test_the_model_and_version_pages_show_their_descriptions(ui: dict) -> None:
    run = ui["run"]
    base = ui["ui"].url
    with open_page(f"{base}/#/models/{run.model_name}", timeout_s=60) as page:
        page.get_by_text("Regime-gated supermask forecaster").first.wait_for()
        body = page.inner_text("body")
        assert "Champion: v1" in body and f"valid log_loss {run.decision.score:.4f}" in body
        assert "Promoted: v1 is" in body  # the start of the version's description in the versions table
    with open_page(model_version_url(base, run.model_name, 1), timeout_s=60) as page:
        page.get_by_text("Promoted: v1 is the champion").first.wait_for()
        cells = page.locator("table").first.inner_text()  # the per-market scores, rendered as a table
        assert "syn_a" in cells and "syn_b" in cells and "valid log_loss" in cells
