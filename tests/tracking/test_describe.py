"""The descriptions' wording for each decision, and the inputs hash that makes a retrain "unchanged"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.data.dataset_source_registry import get_dataset_source_from_json

import supsup_fin
from supsup_fin.forecaster.evaluate import Evaluation
from supsup_fin.tracking.describe import (
    MAX_DESCRIPTION,
    PricesDataset,
    decision_line,
    market_names,
    retrain_description,
)
from supsup_fin.tracking.registry import Decision, inputs_sha256
from supsup_fin.tracking.store import CODE_TAG, code_tags, source_sha256

KEPT = Decision(3, False, "log_loss", 1.05, 1.0986, 2, 1.04, "valid log_loss 1.0500 does not beat champion v2 (1.0400)")


@pytest.mark.parametrize(("decision", "unchanged", "expected"), [
    (dataclasses.replace(KEPT, promoted=True, reason="valid log_loss 1.0500 beats the class prior 1.0986 and no champion"),
     None, "Promoted: v3 is the champion; valid log_loss 1.0500 beats the class prior 1.0986 and no champion."),
    (KEPT, None, "Registered v3, kept v2 as champion: valid log_loss 1.0500 does not beat champion v2 (1.0400)."),
    (dataclasses.replace(KEPT, champion_version=None, reason="valid log_loss 1.1000 does not beat the class prior 1.0986"),
     None, "Registered v3, not promoted (no champion): valid log_loss 1.1000 does not beat the class prior 1.0986."),
    (dataclasses.replace(KEPT, blocked_by="market 'wti': the HMM fell back to 1 state(s)",
                         reason="not promoted without --force: market 'wti': the HMM fell back to 1 state(s)"),
     None, "Registered v3, blocked (kept v2) by market 'wti': the HMM fell back to 1 state(s); "
           "`retrain --force` promotes despite it."),
    (dataclasses.replace(KEPT, version=2), 2, "Unchanged since v2: the same data, config and code as champion v2; "
                                              "nothing registered (`retrain --force` registers anyway)."),
])
def test_the_decision_reads_as_one_sentence(decision: Decision, unchanged: int | None, expected: str) -> None:
    assert decision_line(decision, unchanged) == expected


def test_a_description_of_many_markets_fits_the_registry(small_pipeline: dict) -> None:
    """A version's description holds 5,000 characters: with 200 markets the table gives way to its file."""
    rows = [{"market": f"market_{i:03d}", "mode": "auto", "runs": "soft", "segment": seg, "log_loss": 1.0,
             "baseline_log_loss": 1.1} for i in range(200) for seg in ("valid", "test")]
    ev = Evaluation(tasks=pd.DataFrame(), markets=pd.DataFrame(rows))
    text = retrain_description(small_pipeline["loaded"], ev, KEPT, mode="auto", horizon=5, classes=["down", "up"])
    assert len(text) < MAX_DESCRIPTION and "| market_000 |" not in text
    assert "Per-market scores: `report/eval_markets.csv`." in text and text.startswith("Registered v3, kept v2")


def test_the_prices_schema_is_mlflows_own_inference() -> None:
    from mlflow.types.utils import _infer_schema

    close = np.linspace(100.0, 120.0, 300)
    frame = pd.DataFrame({"open": np.r_[np.nan, close[1:]], "close": close, "volume": np.arange(300.0)},
                         index=pd.bdate_range("2010-01-04", periods=300, name="date"))
    got = PricesDataset(frame, source=get_dataset_source_from_json('{"uri": "x"}', source_type="local"), name="m",
                        digest="d").schema
    assert got == _infer_schema(frame) and [c.required for c in got.inputs] == [False, True, True]


def test_ten_thousand_market_names_are_the_first_twenty_and_a_count() -> None:
    names = [f"m{i:05d}" for i in reversed(range(10_000))]
    assert market_names(names, sep=",") == ",".join(f"m{i:05d}" for i in range(20)) + ",and 9980 more"
    assert market_names(["wti", "sp500"]) == "sp500, wti"


def test_the_inputs_hash_changes_with_each_of_data_config_and_code() -> None:
    base = ({"sp500": "aa", "wti": "bb"}, {"training.steps": 300}, "c0")
    assert inputs_sha256(*base) == inputs_sha256({"wti": "bb", "sp500": "aa"}, *base[1:])  # order does not count
    changed = [({"sp500": "ab", "wti": "bb"}, *base[1:]), (base[0], {"training.steps": 301}, "c0"), (*base[:2], "c1"),
               ({"sp500": "aa"}, *base[1:])]
    assert len({inputs_sha256(*base), *(inputs_sha256(*c) for c in changed)}) == 5


def test_the_code_is_named_by_its_source_hash_and_checkout() -> None:
    tags = code_tags()
    assert tags[CODE_TAG] == source_sha256() and len(tags[CODE_TAG]) == 64
    assert tags["code.version"] == supsup_fin.__version__
    checkout = (Path(supsup_fin.__file__).resolve().parents[1] / ".git").exists()
    assert ("git_commit" in tags and tags["git_dirty"] in ("true", "false")) == checkout
