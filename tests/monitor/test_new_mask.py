"""A new mask on a novel regime's rows: the challenger forecaster, the old masks untouched, registration."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.numpy import load_file
from test_novelty import SWITCH, monitored, switched

from supsup_fin.config import MonitorConfig
from supsup_fin.errors import ConfigError, DataError
from supsup_fin.forecaster.calibration import Calibrator
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.selection import MIN_HOLDOUT_ROWS
from supsup_fin.monitor.new_mask import FIT_ROWS, NewMask, new_mask_challenger, novel_rows, novel_task
from supsup_fin.monitor.novelty import detect_novelty
from supsup_fin.tracking import connect, tracking_uri
from supsup_fin.tracking.challenger import CHALLENGER_TAG, REASON_TAG, register_challenger, registered_challenger
from supsup_fin.tracking.registry import champion_version
from supsup_fin.tracking.versions import decision, list_versions, promote
from supsup_fin.workspace import Workspace


@pytest.fixture(scope="module")
def novel(small_pipeline: dict) -> dict:
    """The monitored champion, the switched prices, the verdict 110 rows after the switch and its challenger."""
    fc = monitored(small_pipeline)
    prices = switched()
    at = prices.index.get_loc(pd.Timestamp(SWITCH))
    verdict = detect_novelty(fc, "syn_b", prices.iloc[: at + 110], MonitorConfig())
    result = new_mask_challenger(fc, "syn_b", prices, verdict, small_pipeline["cfg"])
    return {"fc": fc, "prices": prices, "verdict": verdict, "result": result, "cfg": small_pipeline["cfg"]}


def test_a_new_mask_is_trained_on_the_matured_novel_rows(novel: dict) -> None:
    fc, verdict, result = novel["fc"], novel["verdict"], novel["result"]
    assert verdict["novel"] and verdict["since"] >= SWITCH, verdict["detail"]
    assert result.status == "trained", result.message
    X, y, _, dates = novel_rows(fc, "syn_b", novel["prices"].loc[: verdict["as_of"]], verdict["since"])
    assert str(dates[0].date()) == verdict["since"]
    assert dates[-1] == pd.Timestamp(verdict["as_of"]) - pd.offsets.BDay(fc.horizon)  # the last matured row
    assert result.n_rows == len(X)
    name = novel_task("syn_b", verdict["since"])
    assert result.task == name == f"syn_b/novel-{verdict['since'].replace('-', '')}"
    bank = result.forecaster.bank
    assert bank.names == [*fc.bank.names, name]
    n_hold = len(X) // 2
    meta = bank.meta(name)
    assert meta["n_train"] == len(X) - n_hold - fc.horizon and meta["n_holdout"] == n_hold
    assert (meta["novel_since"], meta["holdout_end"]) == (verdict["since"], str(dates[-1].date()))


def test_old_masks_and_the_base_are_bit_identical(novel: dict, tmp_path) -> None:
    """The saved banks, byte for byte: every old mask's packed bits equal in both, the base hash too."""
    fc, chal = novel["fc"], novel["result"].forecaster
    assert chal.net is fc.net and chal.bank.base_hash == fc.bank.base_hash == fc.net.weights_hash()
    fc.save(tmp_path / "champion")
    chal.save(tmp_path / "challenger")
    old, new = (load_file(tmp_path / d / "bank" / "masks.safetensors") for d in ("champion", "challenger"))
    assert set(old) < set(new)
    for key, bits in old.items():
        assert new[key].tobytes() == bits.tobytes(), key
    for name in fc.bank.names:
        assert chal.bank.meta(name)["bits_sha256"] == fc.bank.meta(name)["bits_sha256"]
    spec = json.loads((tmp_path / "challenger" / "forecaster.json").read_text())
    assert spec["network"]["base_hash"] == fc.net.weights_hash()
    again = RegimeGatedForecaster.load(tmp_path / "challenger")
    pd.testing.assert_frame_equal(again.predict_frame("syn_b", novel["prices"]),
                                  chal.predict_frame("syn_b", novel["prices"]))


def test_the_challenger_routes_only_that_market_to_the_new_mask(novel: dict) -> None:
    fc, result = novel["fc"], novel["result"]
    chal, name = result.forecaster, result.task
    mm = chal.markets["syn_b"]
    assert set(mm.masks.values()) == {name} and mm.all_mask == name and mm.mode == "market"
    assert set(mm.calibrators) == {name, "soft", f"infer:{name}"} and "novelty" not in mm.reference
    assert mm.reference["hmm"] == fc.markets["syn_b"].reference["hmm"]
    _, y, _, _ = novel_rows(fc, "syn_b", novel["prices"].loc[: novel["verdict"]["as_of"]], result.since)
    np.testing.assert_allclose(mm.prior, (np.bincount(y, minlength=3) + 1) / (len(y) + 3))
    # fewer than MIN_HOLDOUT_ROWS held-out rows: the challenger answers the novel rows' class frequencies
    assert len(y) // 2 < MIN_HOLDOUT_ROWS and mm.calibrators[name].weight == 1.0
    forecast = chal.predict("syn_b", novel["prices"])
    np.testing.assert_allclose([forecast["probabilities"][c] for c in chal.classes], mm.prior)
    assert chal.markets["syn_a"] is fc.markets["syn_a"]
    for mode in ("hard", "soft", "ensemble", "infer", "market"):
        row = chal.predict("syn_b", novel["prices"], mode)
        assert row["masks"] == {name: 1.0}, mode
    verdict = detect_novelty(chal, "syn_b", novel["prices"], MonitorConfig())
    assert not verdict["novel"] and "retrain" in verdict["detail"]


def test_enough_held_out_rows_fit_the_new_masks_calibration_map(novel: dict) -> None:
    """130 dates from the switch: 125 matured rows, the last 62 held out, the map fitted on them."""
    fc, prices = novel["fc"], novel["prices"]
    at = prices.index.get_loc(pd.Timestamp(SWITCH))
    verdict = {"novel": True, "since": SWITCH, "as_of": str(prices.index[at + 129].date())}
    result = new_mask_challenger(fc, "syn_b", prices, verdict, novel["cfg"])
    X, y, _, _ = novel_rows(fc, "syn_b", prices.iloc[: at + 130], SWITCH)
    chal, mm = result.forecaster, result.forecaster.markets["syn_b"]
    cal = mm.calibrators[result.task]
    assert (result.n_rows, cal.n) == (125, 62) and cal.n >= MIN_HOLDOUT_ROWS
    z = torch.log_softmax(chal.task_logits(torch.as_tensor(X[-62:]), result.task), dim=1).numpy()
    assert cal == Calibrator.fit(z, y[-62:], mm.prior)
    probs = chal.predict_frame("syn_b", prices, "market").loc[prices.index[at + 129], ["p_down", "p_flat", "p_up"]]
    logits = chal.task_logits(torch.as_tensor(chal.inputs("syn_b", prices)[at + 129 : at + 130]), result.task)
    np.testing.assert_allclose(probs.to_numpy(float), cal(torch.log_softmax(logits, dim=1).numpy())[0], atol=1e-12)


def test_too_few_matured_rows_say_how_many_more(novel: dict) -> None:
    """20 novel dates from the switch: 15 matured rows (horizon 5), 25 more needed for min_rows 40."""
    fc, prices, cfg = novel["fc"], novel["prices"], novel["cfg"]
    at = prices.index.get_loc(pd.Timestamp(SWITCH))
    verdict = {"novel": True, "since": SWITCH, "as_of": str(prices.index[at + 19].date())}
    result = new_mask_challenger(fc, "syn_b", prices, verdict, cfg)
    assert (result.status, result.n_rows, result.need, result.forecaster) == ("need_rows", 15, 25, None)
    assert "need 25 more" in result.message
    few = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={
        "novelty": cfg.monitor.novelty.model_copy(update={"min_rows": 10})})})
    assert new_mask_challenger(fc, "syn_b", prices, verdict, few).need == 2 * FIT_ROWS + fc.horizon - 15
    assert new_mask_challenger(fc, "syn_b", prices, {**verdict, "novel": False}, cfg).status == "not_novel"
    off = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={
        "novelty": cfg.monitor.novelty.model_copy(update={"train_new_mask": False})})})
    assert new_mask_challenger(fc, "syn_b", prices, verdict, off).status == "disabled"


def test_a_config_with_another_network_is_refused(novel: dict) -> None:
    cfg = novel["cfg"]
    other = cfg.model_copy(update={"network": cfg.network.model_copy(update={"seed": 7})})
    with pytest.raises(ConfigError, match="network.seed 7"):
        new_mask_challenger(novel["fc"], "syn_b", novel["prices"], novel["verdict"], other)
    with pytest.raises(DataError, match="no challenger to register"):
        register_challenger(cfg, Workspace.resolve(None), NewMask("syn_b", "need_rows", SWITCH, 3, 37, "few"),
                            novel["verdict"], {"syn_b": novel["prices"]})


@pytest.mark.slow
def test_the_challenger_is_registered_as_a_version_that_is_not_champion(novel: dict, small_pipeline: dict,
                                                                        tmp_path, monkeypatch) -> None:
    """After a retrain registered v1 (champion), the challenger becomes v2 with its tags, not champion."""
    from supsup_fin.tracking import log_retrain

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws, cfg = Workspace.resolve(tmp_path / "ws"), novel["cfg"]
    p = small_pipeline
    log_retrain(cfg, ws, loaded=p["loaded"], regimes=p["regimes"], evaluation=p["evaluation"],
                forecaster=p["forecaster"])
    prices = {**p["prices"], "syn_b": novel["prices"]}
    since = novel["verdict"]["since"]
    assert registered_challenger(cfg, ws, "syn_b", since) is None
    record = register_challenger(cfg, ws, novel["result"], novel["verdict"], prices)
    assert registered_challenger(cfg, ws, "syn_b", since) == record.version
    assert registered_challenger(cfg, ws, "syn_a", since) is None
    client = MlflowClient(tracking_uri(cfg.tracking, ws), registry_uri=tracking_uri(cfg.tracking, ws))
    champ = champion_version(connect(cfg.tracking, ws), cfg.tracking.model_name)
    assert (record.version, record.champion_version, champ) == (champ + 1, champ, champ)
    tags = client.get_model_version(cfg.tracking.model_name, str(record.version)).tags
    assert tags[CHALLENGER_TAG] == "novel_regime"
    assert f"novel regime since {novel['verdict']['since']}" in tags[REASON_TAG] and "syn_b" in tags[REASON_TAG]
    assert tags["promotion.promoted"] == "False"
    row = next(r for r in list_versions(client, cfg.tracking.model_name) if r["version"] == record.version)
    assert row["aliases"] == ["challenger"] and decision(tags).startswith("novel-regime challenger: never promoted")
    run = client.get_run(record.run_id)
    assert run.data.tags["supsup_fin.flow"] == "novel_regime" and run.data.tags["market"] == "syn_b"
    assert record.reason == tags[REASON_TAG]
    promote(client, cfg.tracking.model_name, record.version)  # a person's decision: its files load and pass
    assert champion_version(client, cfg.tracking.model_name) == record.version
