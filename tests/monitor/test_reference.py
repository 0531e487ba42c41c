"""Training references: lag-0 feature bins on training rows, the HMM range, persistence, the retrain hook."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from supsup_fin.errors import MaskFileError
from supsup_fin.features import make_features
from supsup_fin.forecaster.gating import RegimeGatedForecaster
from supsup_fin.forecaster.persist import SPEC_FILE, check_manifest
from supsup_fin.forecaster.prepare import train_slice
from supsup_fin.monitor.hmm import loglik_reference
from supsup_fin.monitor.reference import attach_references, bin_fractions, feature_reference, latest_inputs


def _copy(fc: RegimeGatedForecaster) -> RegimeGatedForecaster:
    """A copy whose market models can be replaced without touching the session's forecaster."""
    out = copy.copy(fc)
    out.markets = dict(fc.markets)
    return out


@pytest.fixture(scope="module")
def monitored(small_pipeline) -> RegimeGatedForecaster:
    """The session forecaster with every market's reference attached."""
    sp = small_pipeline
    fc = _copy(sp["forecaster"])
    attach_references(fc, sp["features"], sp["regimes"], sp["prices"], sp["cfg"])
    return fc


def test_lag0_columns_are_each_rows_own_scaled_features(small_pipeline) -> None:
    fs, cfg = small_pipeline["features"]["syn_a"], small_pipeline["cfg"]
    prices = small_pipeline["prices"]["syn_a"]
    own = fs.scaler.transform(make_features(prices, cfg.features.names).to_numpy()).astype(np.float32)
    rows = fs.rows("train")
    np.testing.assert_array_equal(latest_inputs(fs.X[rows], len(cfg.features.names)), own[rows])


def test_reference_bins_training_rows_in_equal_fractions(small_pipeline, monitored) -> None:
    cfg = small_pipeline["cfg"]
    for market, fs in small_pipeline["features"].items():
        ref, rows = monitored.markets[market].reference, fs.rows("train")
        assert set(ref) == {"train_end", "features", "hmm", "novelty"}
        assert ref["train_end"] == str(fs.dates[rows[-1]].date()) == "2012-12-24"
        assert list(ref["features"]) == list(cfg.features.names)
        bins = ref["features"]["ret_1"]
        assert len(bins["edges"]) == cfg.monitor.psi_bins - 1
        np.testing.assert_allclose(bins["fractions"], 1 / cfg.monitor.psi_bins, atol=1 / len(rows))
        regime_model, prices = small_pipeline["regimes"][market].model, small_pipeline["prices"][market]
        assert ref["hmm"] == loglik_reference(regime_model, train_slice(prices, cfg.segments), cfg.monitor.drift_window)


def test_tied_quantiles_merge_bins() -> None:
    values = np.concatenate([np.zeros(350), np.linspace(1.0, 2.0, 650)])[:, None]  # 35 % point mass at 0
    ref = feature_reference(values, ["x"], 10)["x"]
    assert ref["edges"][0] == 0.0 and len(ref["edges"]) == 7  # the 0.1, 0.2, 0.3 quantiles are all 0
    assert ref["fractions"][0] == 0.0  # nothing below the training minimum
    assert ref["fractions"][1] == pytest.approx(0.4, abs=1e-3)  # the zeros and the next 10 %
    np.testing.assert_array_equal(bin_fractions(values[:, 0], np.asarray(ref["edges"])), ref["fractions"])


def test_reference_round_trips_through_save_load_and_manifest(monitored, tmp_path) -> None:
    path = monitored.save(tmp_path / "fc")
    loaded = RegimeGatedForecaster.load(path)
    for market, mm in monitored.markets.items():
        assert loaded.markets[market].reference == mm.reference
    assert check_manifest(path)
    spec = json.loads((path / SPEC_FILE).read_text())
    spec["markets"]["syn_a"]["reference"]["features"]["ret_1"]["fractions"][0] = 0.5
    (path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(MaskFileError, match="forecaster.json: content changed"):
        RegimeGatedForecaster.load(path)


def test_retrain_assemble_attaches_every_markets_reference(small_pipeline, monkeypatch) -> None:
    import pipelines.retrain

    sp = small_pipeline
    built = _copy(sp["forecaster"])  # what build_forecaster returns, without building it again
    monkeypatch.setattr(pipelines.retrain, "build_forecaster", lambda *args: built)
    fc = pipelines.retrain.assemble.fn(sp["features"], sp["regimes"], sp["net"], sp["bank"], sp["cfg"], sp["prices"])
    assert fc is built
    assert {m: sorted(mm.reference) for m, mm in fc.markets.items()} == {
        "syn_a": ["features", "hmm", "novelty", "train_end"], "syn_b": ["features", "hmm", "novelty", "train_end"]}
