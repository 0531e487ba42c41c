"""The novel-regime check: SupSup's statistics against their training range, and the HMM test."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from supsup_fin.config import MonitorConfig, NoveltyConfig
from supsup_fin.data.synthetic import NewRegime, generate_switching
from supsup_fin.errors import DataError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.masks import row_task_scores
from supsup_fin.monitor.novelty import (
    detect_novelty,
    market_masks,
    novelty_alert,
    novelty_reference,
    novelty_series,
)
from supsup_fin.live.forecast import novel_regime
from supsup_fin.monitor.reference import attach_references

SWITCH = "2013-01-02"
"""First date of the unseen regime: the small pipeline's training segment ends 2012-12-31."""


def monitored(p: dict) -> RegimeGatedForecaster:
    """A copy of the small pipeline's forecaster whose markets hold training references, novelty included."""
    fc = p["forecaster"]
    out = RegimeGatedForecaster(
        dict(fc.markets), fc.net, fc.bank, feature_names=fc.feature_names, lookback=fc.lookback,
        horizon=fc.horizon, regime_window=fc.regime_window, mode=fc.mode, infer_window=fc.infer_window)
    attach_references(out, p["features"], p["regimes"], p["prices"], p["cfg"])
    return out


@pytest.fixture(scope="module")
def fc(small_pipeline: dict) -> RegimeGatedForecaster:
    return monitored(small_pipeline)


def switched() -> pd.DataFrame:
    """syn_b's process (preset hard, seed 2) until SWITCH, then 5x its largest volatility and a new drift."""
    return generate_switching("hard", NewRegime(-3e-3, 0.08), SWITCH, seed=2).prices["hard_0"]


def test_the_switched_market_is_syn_b_until_the_switch(small_pipeline: dict) -> None:
    before = switched().loc[: "2012-12-31", "close"]
    np.testing.assert_array_equal(before.to_numpy(), small_pipeline["prices"]["syn_b"].loc[: "2012-12-31", "close"])


def test_the_continuation_of_training_is_not_novel_and_a_new_regime_is(small_pipeline: dict, fc) -> None:
    """syn_b after training (six years of the same process: under 0.5 alarms a year, none in the
    first year) against the same history switching on 2013-01-02 to 5x its largest volatility and a
    new drift: 30 trading days later the rule and the HMM test both say novel, the run dated from
    after the switch."""
    cfg = MonitorConfig()
    steady = novelty_series(fc, "syn_b", small_pipeline["prices"]["syn_b"], fc.markets["syn_b"].reference, cfg)
    after = steady.loc[SWITCH:, "novel"].to_numpy()
    onsets = int(after[0]) + int((np.diff(after.astype(int)) == 1).sum())
    assert onsets / (len(after) / 252) < 0.5
    assert not after[:252].any()
    prices = switched()
    at = prices.index.get_loc(pd.Timestamp(SWITCH))
    verdict = detect_novelty(fc, "syn_b", prices.iloc[: at + 30], cfg)
    assert verdict["novel"] and verdict["rule_novel"] and verdict["hmm_novel"], verdict["detail"]
    assert verdict["since"] > SWITCH
    assert verdict["log_likelihood"] < verdict["log_likelihood_threshold"]
    same_day = detect_novelty(fc, "syn_b", small_pipeline["prices"]["syn_b"].iloc[: at + 30], cfg)
    assert not same_day["novel"] and same_day["since"] is None
    # what a forecast row says about it
    assert novel_regime(fc, "syn_b", prices.iloc[: at + 30], cfg) == f"since {verdict['since']}"
    assert novel_regime(fc, "syn_b", small_pipeline["prices"]["syn_b"].iloc[: at + 30], cfg) == ""
    assert novel_regime(fc, "syn_b", prices.iloc[: at + 30], MonitorConfig(novelty={"enabled": False})) == ""


def test_the_statistics_are_the_best_masks_entropy_and_the_score_spread(small_pipeline: dict, fc) -> None:
    """Window 1, by hand: row t's best mask is its lowest ``dH/dα``; its entropy is that of the
    softmax over every output through that mask alone; the spread is max - min of the scores."""
    fs = small_pipeline["features"]["syn_b"]
    rows = fs.rows("train")[:50]
    one = {**fc.markets["syn_b"].reference,
           "novelty": novelty_reference(fc, "syn_b", fs.X[rows], NoveltyConfig(window=1))}
    prices = small_pipeline["prices"]["syn_b"]
    series = novelty_series(fc, "syn_b", prices, one, MonitorConfig())
    masks = market_masks(fc.markets["syn_b"])
    x = fc.inputs("syn_b", prices)[-5:]
    scores = row_task_scores(fc.net, fc.bank, masks, x)
    best = scores.argmin(axis=1)
    logits = torch.stack([fc.net(torch.as_tensor(x), mask=fc.bank[m], all_outputs=True).double() for m in masks])
    entropy = torch.distributions.Categorical(logits=logits).entropy().numpy()  # [masks, rows]
    np.testing.assert_allclose(series["entropy"].iloc[-5:], entropy[best, np.arange(5)], rtol=1e-6)
    np.testing.assert_allclose(series["flatness"].iloc[-5:], scores.max(axis=1) - scores.min(axis=1), rtol=1e-6)
    assert one["novelty"]["masks"] == masks == ["syn_b/calm", "syn_b/normal", "syn_b/turbulent", "syn_b/ALL"]


def test_the_series_is_causal(small_pipeline: dict, fc) -> None:
    """Prefix invariance: the values at each date equal those computed on the prices up to it, and
    a different future changes nothing before it."""
    prices, ref, cfg = switched(), fc.markets["syn_b"].reference, MonitorConfig()
    full = novelty_series(fc, "syn_b", prices, ref, cfg)
    cut = prices.index.get_loc(pd.Timestamp(SWITCH)) + 25
    part = novelty_series(fc, "syn_b", prices.iloc[:cut], ref, cfg)
    pd.testing.assert_frame_equal(part, full.iloc[:cut])
    other = prices.copy()
    other.iloc[cut:, 0] = other.iloc[cut:, 0].to_numpy()[::-1]
    pd.testing.assert_frame_equal(novelty_series(fc, "syn_b", other, ref, cfg).iloc[:cut], part)
    assert full["novel"].iloc[cut - 10 : cut].any()  # the cut lies inside the novel run


def test_a_verdict_becomes_the_shared_alert_shape(fc) -> None:
    prices = switched()
    at = prices.index.get_loc(pd.Timestamp(SWITCH))
    verdict = detect_novelty(fc, "syn_b", prices.iloc[: at + 30], MonitorConfig())
    alert = novelty_alert(verdict, 7)
    assert list(alert) == ["kind", "market", "model_version", "as_of", "value", "threshold", "message"]
    stat = verdict["statistic"]
    assert (alert["kind"], alert["market"], alert["model_version"], alert["as_of"]) == (
        "novel_regime", "syn_b", 7, str(prices.index[at + 29].date()))
    assert (alert["value"], alert["threshold"]) == (verdict[stat], verdict[f"{stat}_threshold"])
    assert f"novel regime since {verdict['since']}" in alert["message"]
    quiet = detect_novelty(fc, "syn_b", prices.iloc[:at], MonitorConfig())
    assert novelty_alert(quiet, 7) is None


def test_a_market_with_one_mask_reads_the_entropy_only(small_pipeline: dict, fc) -> None:
    """Every regime on the ALL mask: no score spread to compare (flatness None and NaN), the
    entropy still checked against its range."""
    mm = fc.markets["syn_a"]
    one = RegimeGatedForecaster({"syn_a": dataclasses.replace(mm, masks=dict.fromkeys(mm.masks, mm.all_mask))},
                                fc.net, fc.bank, feature_names=fc.feature_names, lookback=fc.lookback,
                                horizon=fc.horizon, regime_window=fc.regime_window)
    fs = small_pipeline["features"]["syn_a"]
    ref = novelty_reference(one, "syn_a", fs.X[fs.rows("train")], NoveltyConfig())
    assert ref["masks"] == ["syn_a/ALL"] and ref["flatness"] is None and len(ref["entropy"]) == len(ref["grid"])
    series = novelty_series(one, "syn_a", small_pipeline["prices"]["syn_a"], {**mm.reference, "novelty": ref},
                            MonitorConfig())
    assert series["flatness"].isna().all() and not series["flatness_novel"].any()
    assert series["entropy"].iloc[-1] > 0 and np.isfinite(series["entropy_threshold"].iloc[-1])


def test_a_model_without_a_novelty_reference_says_to_retrain(small_pipeline: dict, fc) -> None:
    bare = small_pipeline["forecaster"]  # built by the library path: no references
    verdict = detect_novelty(bare, "syn_b", small_pipeline["prices"]["syn_b"], MonitorConfig())
    assert not verdict["novel"] and verdict["entropy"] is None
    assert "retrain" in verdict["detail"] and "syn_b" in verdict["detail"]
    assert novelty_alert(verdict, 1) is None
    other_masks = {**fc.markets["syn_a"].reference}
    other_masks["novelty"] = {**other_masks["novelty"], "masks": ["syn_a/ALL"]}
    with pytest.raises(DataError, match="computed for masks"):
        novelty_series(fc, "syn_a", small_pipeline["prices"]["syn_a"], other_masks, MonitorConfig())
    with pytest.raises(DataError, match="unknown market 'nope'"):
        detect_novelty(fc, "nope", small_pipeline["prices"]["syn_a"], MonitorConfig())
