"""Segments, tasks, the gated forecaster and evaluation on small synthetic markets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_config_dict
from supsup_fin.config import config_from_dict
from supsup_fin.errors import DataError, MaskFileError
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.prepare import build_features, segment_labels


def test_segments_purge_the_horizon() -> None:
    cfg = config_from_dict(small_config_dict())
    dates = pd.bdate_range("2012-12-20", "2013-01-15", name="date")
    seg = segment_labels(dates, cfg.segments, horizon=5)
    train_rows = dates[seg == "train"]
    # a training row's target (t + 5 rows) never reaches the valid segment
    assert all(dates[dates.get_loc(d) + 5] <= pd.Timestamp("2012-12-31") for d in train_rows)
    assert "" in set(seg)  # the purged rows belong to no segment
    assert (seg[-5:] == "").all()


def test_features_are_fitted_on_train_only(small_pipeline: dict) -> None:
    cfg, prices = small_pipeline["cfg"], small_pipeline["prices"]["syn_a"]
    changed = prices.copy()
    changed.loc["2014-01-01":, "close"] *= 3.0  # rescale everything after train
    a = build_features("syn_a", prices, cfg)
    b = build_features("syn_a", changed, cfg)
    np.testing.assert_array_equal(a.scaler.mean, b.scaler.mean)
    np.testing.assert_array_equal(a.class_edges, b.class_edges)
    np.testing.assert_array_equal(a.prior, b.prior)


def test_retrain_fits_the_hmm_on_train_only(small_pipeline: dict, rng: np.random.Generator) -> None:
    """The retrain flow's regimes task, given prices changed after train: the fitted HMM is bitwise the same."""
    from pipelines.retrain import regimes

    cfg, lp = small_pipeline["cfg"], small_pipeline["loaded"]["syn_a"]
    train_end = pd.Timestamp(cfg.segments.train[1])
    after = lp.frame.index > train_end
    changed = lp.frame.copy()
    changed.loc[after, "close"] *= 3.0 * np.exp(np.cumsum(rng.normal(0, 0.05, after.sum())))  # wilder and higher
    a = regimes.fn(lp, cfg)
    b = regimes.fn(dataclasses.replace(lp, frame=changed), cfg)
    fitted = sorted(k for k in vars(a.model) if k.endswith("_") and not k.startswith("_"))
    assert {"transmat_", "startprob_", "means_", "covars_", "names_", "bic_"} <= set(fitted), fitted
    for key in fitted:
        x, y = getattr(a.model, key), getattr(b.model, key)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=key, strict=True)
        else:
            assert x == y, key
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    # the causal posterior is unchanged up to the end of train and sees the new prices after it
    upto = (~after).sum()
    np.testing.assert_array_equal(a.next_proba[:upto], b.next_proba[:upto])
    assert not np.allclose(a.next_proba[upto:], b.next_proba[upto:], equal_nan=True)


def test_too_short_market_is_a_clear_error(small_pipeline: dict) -> None:
    cfg = small_pipeline["cfg"]
    short = small_pipeline["prices"]["syn_a"].iloc[:50]
    with pytest.raises(DataError, match=r"market 'syn_a': 50 rows of prices, need at least"):
        build_features("syn_a", short, cfg)


def test_tasks_cover_regimes_and_all(small_pipeline: dict) -> None:
    tasks = {t.name: t for t in small_pipeline["tasks"]}
    for market in ("syn_a", "syn_b"):
        assert f"{market}/ALL" in tasks
        # three regimes, each with enough rows for its own mask: they split ALL's training rows
        regime_rows = [len(t.y) for t in tasks.values() if t.market == market and t.regime != "ALL"]
        assert len(regime_rows) == 3 and min(regime_rows) >= small_pipeline["cfg"].training.min_task_rows
        assert sum(regime_rows) == len(tasks[f"{market}/ALL"].y)
    for t in tasks.values():
        assert t.X.dtype == np.float32 and np.isfinite(t.X).all() and (t.y >= 0).all()


def test_bank_has_exact_density_and_base_is_untouched(small_pipeline: dict) -> None:
    bank, net, cfg = small_pipeline["bank"], small_pipeline["net"], small_pipeline["cfg"]
    for name in bank.names:
        for layer in bank[name].layers:
            assert int(layer.sum()) == round(cfg.masks.density * layer.numel())
    from supsup_fin.masks import FrozenNet

    fresh = FrozenNet(net.sizes, seed=cfg.network.seed)
    assert all(torch.equal(a, b) for a, b in zip(fresh.weights, net.weights))


@pytest.mark.parametrize("mode", ["hard", "soft", "market"])
def test_predict_equals_predict_frame_and_uses_only_min_rows(small_pipeline: dict, mode: str) -> None:
    """``predict`` (one row) agrees with ``predict_frame`` (all rows at once) to float rounding, not
    bitwise: the float32 net rounds a row alone differently from a batch (seen: up to 5e-8 in the
    probabilities), the HMM posterior to ~1e-16. Given only the last ``min_rows`` rows it is exact."""
    fc: RegimeGatedForecaster = small_pipeline["forecaster"]
    prices = small_pipeline["prices"]["syn_b"]
    frame = fc.predict_frame("syn_b", prices, mode)
    for end in (len(prices) - 1, len(prices) - 300, 2000):
        upto = prices.iloc[: end + 1]
        one = fc.predict("syn_b", upto, mode)
        row = frame.loc[upto.index[-1]]
        probs = np.array([one["probabilities"][c] for c in fc.classes])
        np.testing.assert_allclose(probs, row[[f"p_{c}" for c in fc.classes]].to_numpy(float), rtol=0, atol=1e-6)
        post = one["regime_posterior"]
        np.testing.assert_allclose(list(post.values()), row[[f"regime_{r}" for r in post]].to_numpy(float),
                                   rtol=0, atol=1e-12)
        assert one["regime"] == row["regime"]
        # only the last min_rows rows matter: older history changes nothing
        also = fc.predict("syn_b", upto.iloc[-fc.min_rows:], mode)
        assert also["probabilities"] == one["probabilities"]
        assert np.isclose(sum(one["probabilities"].values()), 1.0)


def test_forecasts_do_not_look_ahead(small_pipeline: dict) -> None:
    """Later rows change no earlier forecast, bit for bit (window-exact features, windowed HMM filter)."""
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    full = fc.predict_frame("syn_a", prices)
    cut = prices.iloc[:3000]
    part = fc.predict_frame("syn_a", cut)
    assert len(part) > 2000
    pd.testing.assert_frame_equal(part, full.loc[part.index], check_exact=True)


def test_hard_gate_uses_the_most_probable_regime_mask(small_pipeline: dict) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    out = fc.predict("syn_a", prices, "hard")
    regime = max(out["regime_posterior"], key=out["regime_posterior"].get)
    assert out["masks"] == {fc.markets["syn_a"].masks[regime]: 1.0}
    assert out["as_of"] == str(prices.index[-1].date())
    assert (pd.Timestamp(out["target_date"]) - prices.index[-1]).days in (7, 9)  # 5 business days on
    soft = fc.predict("syn_a", prices, "soft")
    assert np.isclose(sum(soft["masks"].values()), 1.0)


def test_predict_rejects_bad_input(small_pipeline: dict) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]["syn_a"]
    with pytest.raises(DataError, match=r"need at least min_rows="):
        fc.predict("syn_a", prices.iloc[-10:])
    with pytest.raises(DataError, match="unknown market 'nope'"):
        fc.predict("nope", prices)
    bad = prices.iloc[-fc.min_rows:].copy()
    bad.iloc[5, 0] = -1.0
    with pytest.raises(DataError, match="syn_a"):
        fc.predict("syn_a", bad)


def test_forecaster_save_load_roundtrip(small_pipeline: dict, tmp_path) -> None:
    fc, prices = small_pipeline["forecaster"], small_pipeline["prices"]
    path = fc.save(tmp_path / "f")
    back = RegimeGatedForecaster.load(path)
    for m in ("syn_a", "syn_b"):
        pd.testing.assert_frame_equal(back.predict_frame(m, prices[m]), fc.predict_frame(m, prices[m]))
    # a corrupted bank is refused with the file named
    bits = path / "bank" / "masks.safetensors"
    raw = bytearray(bits.read_bytes())
    raw[-3] ^= 0xFF
    bits.write_bytes(bytes(raw))
    with pytest.raises(MaskFileError, match="masks.safetensors"):
        RegimeGatedForecaster.load(path)


def test_evaluation_tables(small_pipeline: dict) -> None:
    ev = small_pipeline["evaluation"]
    assert set(ev.markets["mode"]) == {"hard", "soft", "ensemble", "infer", "market", "auto"}
    assert set(ev.tasks.segment) == {"valid", "test"}
    assert ev.tasks.mask_density.between(0.49, 0.51).all()
    # ALL is scored on every row of the segment with a known target: its business days (the synthetic
    # calendar) less the `horizon` rows at its end (valid: purged, their targets reach into test;
    # test: no price `horizon` days after the data's end, 2018-12-31)
    cfg, horizon = small_pipeline["cfg"], small_pipeline["cfg"].features.horizon
    days = {"valid": len(pd.bdate_range(*cfg.segments.valid)), "test": len(pd.bdate_range(cfg.segments.test[0], "2018-12-31"))}
    assert {s: n - horizon for s, n in days.items()} == {"valid": 778, "test": 777}
    alls = ev.tasks[ev.tasks.regime == "ALL"]
    assert (alls.n_eval == alls.segment.map(days) - horizon).all(), alls
    # each of those rows goes to exactly one regime's mask
    split = ev.tasks[ev.tasks.regime != "ALL"].groupby(["market", "segment"]).n_eval.sum()
    assert split.to_dict() == alls.set_index(["market", "segment"]).n_eval.to_dict()
    # every ALL task is scored on every evaluation row of its market
    all_rows = ev.tasks[ev.tasks.regime == "ALL"].set_index(["market", "segment"]).n_eval
    soft = ev.markets[ev.markets["mode"] == "soft"].set_index(["market", "segment"]).n
    assert (all_rows.sort_index() == soft.sort_index()).all()
    # on the easy synthetic market (regime-dependent drift) the gated forecaster beats the prior
    m = ev.markets[(ev.markets.market == "syn_a") & (ev.markets.segment == "test") & (ev.markets["mode"] == "soft")]
    assert float(m.log_loss.iloc[0]) < float(m.baseline_log_loss.iloc[0])


def test_evaluation_scores_rows_without_a_posterior_by_no_regime_and_counts_them(small_pipeline: dict) -> None:
    """Rows whose regime posterior is missing (all NaN, one NaN, or infinite) used to be scored as
    regime 0's: they are left out of every regime's task, counted, and still scored by ALL."""
    from supsup_fin.forecaster.evaluate import evaluate

    fs, rf, market = small_pipeline["features"], small_pipeline["regimes"], "syn_a"
    rows = fs[market].rows("valid")[10:40]
    proba = rf[market].next_proba.copy()
    was = proba[rows].argmax(axis=1)  # the regimes these rows went to
    proba[rows] = np.nan
    proba[rows[:5], 1] = 0.9
    proba[rows[5:10]] = np.inf
    regimes = {**rf, market: dataclasses.replace(rf[market], next_proba=proba)}
    ev = evaluate(small_pipeline["forecaster"], fs, regimes, small_pipeline["prices"], segments=("valid",))
    old = small_pipeline["evaluation"].tasks
    old = old[old.segment == "valid"].set_index(["market", "regime"])
    new = ev.tasks.set_index(["market", "regime"])
    names = rf[market].names
    for regime in new.loc[market].index:
        lost = 0 if regime == "ALL" else int((was == names.index(regime)).sum())
        assert new.loc[(market, regime), "n_eval"] == old.loc[(market, regime), "n_eval"] - lost
    assert (new.loc[market, "n_unrouted"] == len(rows)).all()
    assert (new.loc["syn_b", "n_unrouted"] == 0).all()
    pd.testing.assert_frame_equal(new.loc["syn_b"], old.loc["syn_b"].assign(n_unrouted=0)[new.columns])


def test_training_reports_progress(small_pipeline: dict) -> None:
    from supsup_fin import progress
    from supsup_fin.forecaster.training import train_tasks

    cfg = config_from_dict(small_config_dict(training={"steps": 20}))
    seen: list[tuple[str, int, int]] = []
    with progress.listening(lambda stage, done, total, info: seen.append((stage, done, total))):
        train_tasks(small_pipeline["tasks"][:2], cfg)
    assert seen and all(s == "train masks" and t == 20 for s, _, t in seen)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen) and seen[-1][1] == 20
    train_tasks(small_pipeline["tasks"][:1], cfg)  # nobody listening: nothing recorded, no error
    assert seen[-1][1] == 20
