"""A retrain run's report folder: a row per market in the tables, figures for a bounded few."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supsup_fin.data.health import Finding
from supsup_fin.regimes import RegimeModel
from supsup_fin.tracking.report import figure_markets, regime_table, write_report


@pytest.fixture(scope="module")
def report(small_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the small pipeline with figures for ``syn_b`` alone (``syn_a`` with a health finding)."""
    folder = tmp_path_factory.mktemp("report")
    p = small_pipeline
    write_report(folder, {**p["loaded"], "syn_a": _with_a_finding(p["loaded"]["syn_a"])}, p["regimes"],
                 p["evaluation"], p["forecaster"], ["syn_b"])
    return folder


def _with_a_finding(lp):
    found = Finding("gaps", 2, "warn", pd.Timestamp("2010-03-01"), "2 gaps over 5 business days")
    return dataclasses.replace(lp, health=dataclasses.replace(lp.health, findings=(found,)))


def _not_converged(rf):
    model = copy.deepcopy(rf.model)
    model.converged_ = False
    return dataclasses.replace(rf, model=model)


def test_markets_whose_hmm_needs_a_look_get_the_figures_first(small_pipeline: dict) -> None:
    regimes = small_pipeline["regimes"]
    assert figure_markets(regimes) == ["syn_a", "syn_b"]
    assert figure_markets(regimes, limit=1) == ["syn_a"]
    assert figure_markets({**regimes, "syn_b": _not_converged(regimes["syn_b"])}, limit=1) == ["syn_b"]


def test_only_the_chosen_markets_are_drawn_and_every_market_is_a_row(report: Path, small_pipeline: dict) -> None:
    assert sorted(p.name for p in report.glob("*.png")) == ["mask_inputs.png", "regimes_syn_b.png"]
    table = pd.read_csv(report / "regimes.csv", keep_default_na=False)
    assert table["market"].tolist() == ["syn_a", "syn_b"]
    assert table["plot"].tolist() == ["", "regimes_syn_b.png"]
    tasks = set(pd.read_csv(report / "mask_inputs.csv")["task"])
    assert tasks == {t for t in small_pipeline["bank"].names if t.startswith("syn_b/")} and len(tasks) == 4


def test_the_regime_table_reads_the_fit(small_pipeline: dict) -> None:
    rf = small_pipeline["regimes"]["syn_a"]
    row = regime_table({"syn_a": rf}, []).iloc[0]
    labels = rf.train_labels[rf.train_labels >= 0]
    share = [float(s) for s in row["train_share"].split(" / ")]
    assert share == pytest.approx(np.bincount(labels, minlength=rf.model.n_states_) / len(labels), abs=5e-4)
    assert row["regimes"].split(" / ") == list(rf.model.names_) and row["n_states"] == rf.model.n_states_
    last = rf.next_proba[-1]
    assert (row["next_regime"], row["next_regime_proba"]) == (rf.model.names_[int(last.argmax())], last.max())
    assert row["log_likelihood"] == rf.model.log_likelihood_ and row["plot"] == ""


def test_hmm_and_health_files_hold_every_market(report: Path, small_pipeline: dict) -> None:
    hmms = json.loads((report / "hmm.json").read_text())
    assert sorted(hmms) == ["syn_a", "syn_b"]
    prices = small_pipeline["prices"]["syn_b"]
    rebuilt = RegimeModel.from_dict(hmms["syn_b"]).filter_proba(prices)
    pd.testing.assert_frame_equal(rebuilt, small_pipeline["regimes"]["syn_b"].model.filter_proba(prices))
    assert json.loads((report / "health.json").read_text()) == [
        {"market": "syn_a", "check": "gaps", "count": 2, "action": "warn", "first_date": "2010-03-01",
         "detail": "2 gaps over 5 business days"}]
