"""The selection slice end to end: held-out splits, calibrated forecasts, ``auto`` gate modes and
stochastic masks, against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SEED, random_walk, small_config_dict
from supsup_fin.config import config_from_dict
from supsup_fin.data import load_prices
from supsup_fin.errors import DataError
from supsup_fin.forecaster.choose import pick_mode
from supsup_fin.forecaster.evaluate import evaluate
from supsup_fin.forecaster.mask_tasks import make_tasks
from supsup_fin.forecaster.prepare import build_features, fit_regimes
from supsup_fin.forecaster.selection import MIN_HOLDOUT_ROWS, regime_rows, selection_split
from supsup_fin.forecaster.training import build_forecaster, train_tasks


def _pipeline(cfg, frames):
    fs = {n: build_features(n, p, cfg) for n, p in frames.items()}
    rf = {n: fit_regimes(n, p, cfg.regimes, cfg.segments) for n, p in frames.items()}
    tasks = make_tasks(fs, rf, cfg)
    net, bank = train_tasks(tasks, cfg)
    return fs, rf, tasks, build_forecaster(fs, rf, net, bank, cfg)


def test_split_purges_between_fit_rows_and_the_held_out_tail() -> None:
    rows = np.arange(100, 1100)
    s = selection_split(rows, 0.2, purge=13)
    np.testing.assert_array_equal(s.holdout, np.arange(900, 1100))
    assert s.fit[-1] == 900 - 13 - 1 and s.fit[0] == 100  # 13 rows purged, targets cannot reach the slice
    assert not len(selection_split(rows, 0.0, 13).holdout)
    with pytest.raises(DataError, match=rf"market 'm'.*holds 20 rows, need at least {MIN_HOLDOUT_ROWS}"):
        selection_split(rows[:100], 0.2, 13, "m")
    post = np.tile([0.9, 0.1], (1100, 1))
    post[950:1000] = [0.2, 0.8]
    np.testing.assert_array_equal(regime_rows(s.holdout, post, 1), np.arange(950, 1000))
    np.testing.assert_array_equal(regime_rows(s.holdout, post, None), s.holdout)
    post[:] = [0.9, 0.1]  # regime 1 is never predicted: it is judged on every held-out row
    np.testing.assert_array_equal(regime_rows(s.holdout, post, 1), s.holdout)


def test_pick_mode_keeps_market_unless_another_mode_wins_clearly(rng: np.random.Generator) -> None:
    base = rng.exponential(1.0, 2000)
    noisy = base + rng.normal(0, 0.3, 2000)  # no better on average
    assert pick_mode({"market": base, "soft": noisy, "hard": noisy - 0.005}) == "market"
    assert pick_mode({"market": base, "soft": base - 0.05 + rng.normal(0, 0.3, 2000), "hard": base - 0.01}) == "soft"


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """The small pipeline with a selection slice and gate mode auto."""
    cfg = config_from_dict(small_config_dict(training={"holdout_fraction": 0.2, "steps": 60},
                                             gating={"mode": "auto"}))
    frames = {m.name: load_prices(m, cfg.data, tmp_path_factory.mktemp("c")).frame for m in cfg.markets}
    return cfg, frames, *_pipeline(cfg, frames)


def test_tasks_train_before_the_slice_and_every_choice_is_recorded(selected) -> None:
    cfg, frames, fs, rf, tasks, fc = selected
    for task in tasks:
        f = fs[task.market]
        split = selection_split(f.rows("train"), 0.2, cfg.features.horizon + cfg.features.lookback)
        assert task.meta["train_end"] < task.meta["holdout_start"] == str(f.dates[split.holdout[0]].date())
        assert task.meta["holdout_end"] == str(f.dates[split.holdout[-1]].date()) <= cfg.segments.train[1].isoformat()
        meta = fc.bank.meta(task.name)
        assert meta["selected_step"] in (2, 4, 6, 10, 15, 20, 30, 40, 60) and meta["n_holdout"] == len(task.y_holdout)
    for name, mm in fc.markets.items():
        assert mm.mode in ("hard", "soft", "ensemble", "infer", "market") and mm.selection["chosen"] == mm.mode
        best_other = mm.selection["log_loss"]["market"]
        assert mm.selection["log_loss"][mm.mode] <= best_other + 1e-12  # never worse than the ALL mask
        assert mm.selection["log_loss"]["market"] <= mm.selection["prior_log_loss"] + 1e-12
        assert {*mm.masks.values(), mm.all_mask, "soft"} <= set(mm.calibrators)


def test_auto_forecasts_and_decisions_round_trip(selected, tmp_path) -> None:
    cfg, frames, fs, rf, tasks, fc = selected
    again = type(fc).load(fc.save(tmp_path / "fc"))
    for market, prices in frames.items():
        a = fc.predict_frame(market, prices.iloc[-400:], "auto")
        b = again.predict_frame(market, prices.iloc[-400:])
        assert (a["mode"] == fc.markets[market].mode).all()
        np.testing.assert_array_equal(a.drop(columns="masks").to_numpy(), b.drop(columns="masks").to_numpy())
        last = again.predict(market, prices.iloc[-400:])
        assert last["mode"] == fc.markets[market].mode and last["prior"]["down"] == fs[market].prior[0]
        # predict runs the last row alone: the float32 net rounds it apart from a batch (~1e-8)
        assert last["position"] == pytest.approx(a["position"].iloc[-1], abs=1e-6)
        assert abs(last["position"]) <= cfg.backtest.positions.cap


def test_calibrated_forecasts_are_no_worse_than_the_prior_on_test(selected) -> None:
    """Every calibrated gate mode's test log-loss is within 0.01 of the prior's or better (the
    uncalibrated masks of the same runs are worse than the prior on the hard market)."""
    cfg, frames, fs, rf, tasks, fc = selected
    ev = evaluate(fc, fs, rf, frames)
    test = ev.markets[ev.markets.segment == "test"]
    assert set(test["mode"]) == {"hard", "soft", "ensemble", "infer", "market", "auto"}
    assert (test["log_loss"] <= test["baseline_log_loss"] + 0.01).all(), test


def test_auto_chooses_market_when_regimes_are_identical(tmp_path) -> None:
    """A random walk has one regime; the HMM still splits it, and auto must see that gating adds nothing."""
    path = tmp_path / "rw.csv"
    random_walk(5000, seed=SEED + 7, start="1999-01-04").to_csv(path)
    cfg = config_from_dict(small_config_dict(
        markets=[{"name": "rw", "source": "file", "path": str(path)}],
        training={"holdout_fraction": 0.2, "steps": 60, "min_task_rows": 30}, gating={"mode": "auto"},
        regimes={"n_states": 3}))
    frames = {"rw": load_prices(cfg.markets[0], cfg.data, tmp_path / "cache").frame}
    fs, rf, tasks, fc = _pipeline(cfg, frames)
    assert len({t.regime for t in tasks}) == 4  # three regime masks and the ALL mask were trained
    assert fc.markets["rw"].mode == "market"


def test_stochastic_masks_converge_like_one_over_root_s(tmp_path) -> None:
    """The mean over S sampled hard-concrete masks approaches a large-S reference with an error that
    shrinks about like 1/sqrt(S), in every gate mode."""
    cfg = config_from_dict(small_config_dict(
        markets=[{"name": "syn_a", "source": "synthetic", "dataset": "easy", "seed": 1}],
        masks={"method": "hard_concrete", "store_probabilities": True, "inference": "stochastic",
               "stochastic_samples": 4, "init_p": 0.6},
        training={"steps": 30, "holdout_fraction": 0.0}, gating={"mode": "soft"}))
    frames = {m.name: load_prices(m, cfg.data, tmp_path).frame for m in cfg.markets}
    fs, rf, tasks, fc = _pipeline(cfg, frames)
    prices = frames["syn_a"].iloc[-600:]
    cols = [f"p_{c}" for c in fc.classes]

    def probs(s: int, mode: str) -> np.ndarray:
        fc.stochastic_samples, fc._samples = s, {}
        return fc.predict_frame("syn_a", prices, mode)[cols].to_numpy()

    for mode in ("hard", "soft", "ensemble", "infer", "market"):
        ref = probs(1024, mode)
        err = {s: float(np.sqrt(((probs(s, mode) - ref) ** 2).mean())) for s in (4, 64)}
        assert 2.0 < err[4] / err[64] < 8.0, (mode, err)  # sqrt(64 / 4) = 4
        fc.stochastic_samples = 0
        assert np.abs(probs(0, mode) - ref).max() > 1e-3  # the bits answer differently
