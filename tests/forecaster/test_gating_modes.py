"""The ``ensemble`` and ``infer`` gate modes, ``predict_frames``, and the infer window's place in
``min_rows`` and in the saved forecaster."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SEED, small_config_dict

from supsup_fin.config import GatingConfig, config_from_dict
from supsup_fin.features import feature_warmup
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.gate_modes import GATE_MODES
from supsup_fin.masks import FrozenNet, infer_task, row_task_scores, train_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN = 16


def with_window(fc: RegimeGatedForecaster, infer_window: int) -> RegimeGatedForecaster:
    """The same forecaster with another infer window."""
    return RegimeGatedForecaster(
        fc.markets, fc.net, fc.bank, feature_names=fc.feature_names, lookback=fc.lookback,
        horizon=fc.horizon, regime_window=fc.regime_window, mode=fc.mode, infer_window=infer_window,
    )


def routed(fc: RegimeGatedForecaster, market: str, prices: pd.DataFrame, post: np.ndarray, mode: str):
    """``route`` on every row with an input, under a posterior of our choosing."""
    mm = fc.markets[market]
    X = fc.inputs(market, prices)
    rows = np.flatnonzero(np.isfinite(X).all(axis=1))
    return fc.route(mm, X, rows, post[: len(rows)], mode)


def task_data(k: int, n: int = 300, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Task ``k``: Gaussian classes in 16-d, the inputs permuted differently per task."""
    rng = np.random.default_rng(1000 + k)
    centers = np.random.default_rng(7).normal(size=(classes, IN)) * 2.5
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(size=(n, IN))
    perm = np.random.default_rng(k).permutation(IN)
    return x[:, perm].astype(np.float32), y


@pytest.fixture(scope="module")
def two_tasks():
    net = FrozenNet((IN, 64, 64, 4), seed=SEED)
    tasks = {"A": task_data(0), "B": task_data(1)}
    bank = train_masks(net, tasks, steps=150, batch_size=64, lr=0.2, weight_decay=0.0)
    return net, tasks, bank


# -- ensemble ---------------------------------------------------------------------------------

def test_ensemble_with_a_one_hot_posterior_is_the_hard_gate(small_pipeline: dict, rng) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    k = len(fc.markets["syn_a"].regime.names_)
    post = np.eye(k)[rng.integers(0, k, len(prices))]
    hard, _ = routed(fc, "syn_a", prices, post, "hard")
    ens, used = routed(fc, "syn_a", prices, post, "ensemble")
    np.testing.assert_allclose(ens, hard, atol=1e-6, rtol=0)
    assert all(max(u.values()) == 1.0 and sum(u.values()) == 1.0 for u in used)


def test_ensemble_mixes_outputs_not_masks(small_pipeline: dict) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    mm = fc.markets["syn_a"]
    names = list(mm.regime.names_)
    distinct = {}
    for k, r in enumerate(names):
        distinct.setdefault(mm.masks.get(r, mm.all_mask), k)
    assert len(distinct) >= 2, "the small pipeline should train at least two regime masks"
    a, b = list(distinct.values())[:2]
    n = len(prices)
    half = np.zeros((n, len(names)))
    half[:, [a, b]] = 0.5
    ens, used = routed(fc, "syn_a", prices, half, "ensemble")
    pa, _ = routed(fc, "syn_a", prices, np.eye(len(names))[np.full(n, a)], "hard")
    pb, _ = routed(fc, "syn_a", prices, np.eye(len(names))[np.full(n, b)], "hard")
    # a known answer: the average of the two masks' class probabilities
    np.testing.assert_allclose(ens, 0.5 * pa + 0.5 * pb, atol=1e-6, rtol=0)
    soft, _ = routed(fc, "syn_a", prices, half, "soft")
    assert np.abs(ens - soft).max() > 1e-3  # a superposition of masks is another thing
    assert all(np.isclose(sum(u.values()), 1.0) for u in used)

    frame = fc.predict_frames("syn_a", prices, ["ensemble", "soft"])
    p = [f"p_{c}" for c in fc.classes]
    np.testing.assert_allclose(frame["ensemble"][p].sum(axis=1), 1.0, atol=1e-12)
    assert np.abs(frame["ensemble"][p].to_numpy() - frame["soft"][p].to_numpy()).max() > 1e-3
    weights = [json.loads(m) for m in frame["ensemble"]["masks"]]
    assert all(set(w) <= set(distinct) and np.isclose(sum(w.values()), 1.0) for w in weights)


def test_a_mask_named_by_several_regimes_runs_once_with_their_summed_weight(small_pipeline: dict, rng) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    mm = fc.markets["syn_a"]
    names = list(mm.regime.names_)
    shared = RegimeGatedForecaster(
        {"syn_a": type(mm)(mm.name, mm.scaler, mm.class_edges, mm.prior, mm.regime,
                           {r: mm.all_mask for r in names}, mm.all_mask)},
        fc.net, fc.bank, feature_names=fc.feature_names, lookback=fc.lookback, horizon=fc.horizon,
        regime_window=fc.regime_window,
    )
    post = rng.dirichlet(np.ones(len(names)), len(prices))
    ens, used = routed(shared, "syn_a", prices, post, "ensemble")
    market, _ = routed(shared, "syn_a", prices, post, "market")
    np.testing.assert_allclose(ens, market, atol=1e-12, rtol=0)
    assert all(list(u) == [mm.all_mask] and np.isclose(u[mm.all_mask], 1.0) for u in used)


# -- infer ------------------------------------------------------------------------------------

def test_the_infer_gate_scores_rows_with_the_public_row_task_scores(two_tasks, monkeypatch) -> None:
    """The gate's per-row scores come from :func:`supsup_fin.masks.row_task_scores` (tested in
    test_masks_inference), called on the finite rows of the window span, nothing private."""
    from supsup_fin.forecaster import gating

    net, tasks, bank = two_tasks
    assert not hasattr(gating, "_row_task_scores")
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[3].shape)
        return row_task_scores(*args, **kwargs)

    monkeypatch.setattr(gating, "row_task_scores", spy)
    fc = RegimeGatedForecaster({}, net, bank, feature_names=(), lookback=1, horizon=1, regime_window=1,
                               infer_window=4)
    X = np.concatenate([tasks["A"][0][:20], tasks["B"][0][:20]])
    X[3] = np.nan
    rows = np.flatnonzero(np.isfinite(X).all(axis=1))[5:]
    fc.inferred_tasks(["A", "B"], X, rows)
    span = X[int(rows[0]) - 3 : int(rows[-1]) + 1]  # the infer_window rows up to each output row
    assert seen == [(int(np.isfinite(span).all(axis=1).sum()), IN)]


def test_infer_picks_the_mask_of_the_task_the_inputs_come_from(two_tasks) -> None:
    net, tasks, bank = two_tasks
    w = 8
    fc = RegimeGatedForecaster({}, net, bank, feature_names=(), lookback=1, horizon=1, regime_window=1,
                               infer_window=w)
    X = np.concatenate([tasks["A"][0][:60], tasks["B"][0][:60]])
    X[10] = np.nan  # a row without input: skipped by the windows that hold it
    rows = np.flatnonzero(np.isfinite(X).all(axis=1))
    chosen = np.array(fc.inferred_tasks(["A", "B"], X, rows))
    truth = np.where(rows < 60, "A", "B")
    pure = (rows < 60) | (rows >= 60 + w - 1)  # windows entirely from one task
    assert (chosen[pure] == truth[pure]).mean() >= 0.9, chosen
    # a known answer: the decision at t is infer_task on the finite rows t-w+1..t
    agree = 0
    for t, c in zip(rows, chosen):
        win = X[max(0, t - w + 1) : t + 1]
        found = infer_task(net, bank, win[np.isfinite(win).all(axis=1)], names=["A", "B"])
        gap = abs(found.scores["A"] - found.scores["B"])
        agree += found.task == c or gap < 1e-5 * max(abs(v) for v in found.scores.values())
    assert agree == len(rows)
    # the output is the chosen mask's softmax, and `masks` names it alone
    fc_rows = rows[:5]
    probs, used = fc.route(_NoRegimes(), X, fc_rows, np.zeros((5, 1)), "infer")
    expect = torch.softmax(net(X[fc_rows], mask=bank[chosen[0]]).double(), dim=1).numpy()
    np.testing.assert_allclose(probs, expect, atol=1e-6)
    assert used == [{c: 1.0} for c in chosen[:5]]


class _NoRegimes:
    """A stand-in market whose single regime names mask ``A`` and whose ALL mask is ``B``."""

    class regime:
        names_ = ("r0", "r1")

    masks = {"r0": "A"}
    all_mask = "B"
    calibrators: dict = {}


def test_infer_frame_reports_one_mask_per_row_and_the_hmm_regime(small_pipeline: dict) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    frames = fc.predict_frames("syn_a", prices, ["infer", "hard"])
    inf, hard = frames["infer"], frames["hard"]
    mm = fc.markets["syn_a"]
    candidates = {mm.masks.get(r, mm.all_mask) for r in mm.regime.names_}
    used = [json.loads(m) for m in inf["masks"]]
    assert all(len(u) == 1 and next(iter(u.values())) == 1.0 and set(u) <= candidates for u in used)
    pd.testing.assert_frame_equal(inf.filter(like="regime"), hard.filter(like="regime"))
    assert (inf["mode"] == "infer").all()
    p = [f"p_{c}" for c in fc.classes]
    np.testing.assert_allclose(inf[p].sum(axis=1), 1.0, atol=1e-12)


# -- causality and predict == predict_frames ------------------------------------------------------

@pytest.mark.parametrize("infer_window", [16, 3])
def test_infer_and_ensemble_do_not_look_ahead(small_pipeline: dict, infer_window: int) -> None:
    fc = with_window(small_pipeline["forecaster"], infer_window)
    prices = small_pipeline["prices"]["syn_b"]
    modes = ["infer", "ensemble"]
    full = fc.predict_frames("syn_b", prices, modes)
    cut = 2500
    part = fc.predict_frames("syn_b", prices.iloc[:cut], modes)
    changed = prices.copy()
    changed.iloc[cut:, 0] = changed.iloc[cut:, 0].to_numpy()[::-1] * 1.7  # a different future
    other = fc.predict_frames("syn_b", changed, modes)
    for mode in modes:
        pd.testing.assert_frame_equal(part[mode], full[mode].loc[part[mode].index], atol=1e-12, rtol=0)
        pd.testing.assert_frame_equal(other[mode].loc[part[mode].index], part[mode], atol=1e-12, rtol=0)
        assert not other[mode].iloc[-100:].equals(full[mode].iloc[-100:])


@pytest.mark.parametrize("infer_window", [16, 150])
def test_predict_is_the_last_row_of_predict_frames_for_every_mode(small_pipeline: dict, infer_window: int) -> None:
    fc = with_window(small_pipeline["forecaster"], infer_window)
    assert fc.min_rows >= feature_warmup(fc.feature_names) + fc.lookback + infer_window - 1
    prices = small_pipeline["prices"]["syn_b"]
    frames = fc.predict_frames("syn_b", prices, GATE_MODES)
    assert list(frames) == list(GATE_MODES)
    for mode in GATE_MODES:
        single = fc.predict_frame("syn_b", prices, mode)
        pd.testing.assert_frame_equal(single, frames[mode])
        for end in (len(prices) - 1, 2000):
            upto = prices.iloc[: end + 1]
            row = frames[mode].loc[upto.index[-1]]
            for given in (upto, upto.iloc[-fc.min_rows :]):
                one = fc.predict("syn_b", given, mode)
                probs = [one["probabilities"][c] for c in fc.classes]
                np.testing.assert_allclose(probs, row[[f"p_{c}" for c in fc.classes]].to_numpy(float), atol=1e-6)
                assert one["masks"].keys() == json.loads(row["masks"]).keys(), mode
                assert one["mode"] == mode
    # the first frame row is the first date with min_rows of history
    assert frames["infer"].index[0] == prices.index[fc.min_rows - 1]


# -- persistence, config, errors --------------------------------------------------------------

def test_save_load_keeps_infer_window_and_old_specs_default_to_16(small_pipeline: dict, tmp_path) -> None:
    fc = with_window(small_pipeline["forecaster"], 5)
    prices = small_pipeline["prices"]["syn_a"]
    path = fc.save(tmp_path / "f")
    back = RegimeGatedForecaster.load(path)
    assert back.infer_window == 5 and back.min_rows == fc.min_rows
    pd.testing.assert_frame_equal(back.predict_frame("syn_a", prices, "infer"),
                                  fc.predict_frame("syn_a", prices, "infer"))
    spec_file = path / "forecaster.json"
    spec = json.loads(spec_file.read_text())
    assert spec["infer_window"] == 5 and spec["format_version"] == 1
    del spec["infer_window"]
    spec_file.write_text(json.dumps(spec))
    (path / "manifest.json").unlink()  # an old spec: written before infer_window and manifests
    assert RegimeGatedForecaster.load(path).infer_window == 16


def test_config_carries_the_new_modes_and_the_window(small_pipeline: dict) -> None:
    from pydantic import ValidationError

    from supsup_fin.forecaster.training import build_forecaster

    assert GatingConfig().infer_window == 16
    for mode in ("ensemble", "infer"):
        assert GatingConfig(mode=mode).mode == mode
    with pytest.raises(ValidationError):
        GatingConfig(infer_window=0)
    cfg = config_from_dict(small_config_dict(gating={"mode": "infer", "infer_window": 7}))
    sp = small_pipeline
    fc = build_forecaster(sp["features"], sp["regimes"], sp["net"], sp["bank"], cfg)
    assert fc.infer_window == 7 and fc.mode == "infer"


def test_the_config_accepts_exactly_the_gate_modes() -> None:
    """The config's gate-mode fields and GATE_MODES name the same modes (one list, not three), plus auto."""
    from typing import get_args

    from supsup_fin.config import BacktestConfig

    assert get_args(GatingConfig.model_fields["mode"].annotation) == (*GATE_MODES, "auto")
    mode_type, _ = get_args(BacktestConfig.model_fields["modes"].annotation)
    assert get_args(mode_type) == (*GATE_MODES, "auto")


def test_unknown_mode_and_bad_window_are_refused(small_pipeline: dict) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    listed = r"valid: \['hard', 'soft', 'ensemble', 'infer', 'market'\]"
    with pytest.raises(ValueError, match=r"unknown gate mode 'nope'; " + listed):
        fc.predict("syn_a", prices, "nope")
    with pytest.raises(ValueError, match=listed):
        fc.predict_frames("syn_a", prices, ["infer", "nope"])
    with pytest.raises(ValueError, match=listed):
        RegimeGatedForecaster(fc.markets, fc.net, fc.bank, feature_names=fc.feature_names, lookback=fc.lookback,
                              horizon=fc.horizon, regime_window=fc.regime_window, mode="nope")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="infer_window expected an int >= 1"):
            with_window(fc, bad)
