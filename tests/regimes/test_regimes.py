"""RegimeModel against known answers: sampled regime-switching series, prefix invariance,
round trips (and a dict written by an earlier version) and real S&P 500 data. The peer check
against statsmodels is in test_regimes_causal.py."""

from __future__ import annotations

import ast
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supsup_fin._validate import is_int
from supsup_fin.errors import DataError, SupsupError
from supsup_fin.regimes import (
    NotFittedError,
    RegimeFitError,
    RegimeModel,
    _fit,
    _lineage,
    plot_regimes,
    regime_names,
)
from supsup_fin.regimes._forward import gaussian_log_densities
from supsup_fin.regimes.observations import raw_features
from conftest import SEED

DATA = Path(__file__).resolve().parent
PACKAGE = Path(__file__).resolve().parents[2] / "supsup_fin" / "regimes"

TWO_STATE = {"sigmas": [0.005, 0.03], "transmat": [[0.99, 0.01], [0.03, 0.97]]}
THREE_STATE = {
    "sigmas": [0.005, 0.012, 0.03],
    "transmat": [[0.98, 0.015, 0.005], [0.02, 0.96, 0.02], [0.01, 0.03, 0.96]],
}


def sample_regimes(n: int, sigmas: list[float], transmat: list[list[float]], seed: int
                   ) -> tuple[pd.DataFrame, pd.Series]:
    """Prices whose daily log returns follow a known Gaussian HMM; also the state path."""
    rng = np.random.default_rng(seed)
    a = np.asarray(transmat)
    z = np.empty(n, dtype=int)
    z[0] = 0
    for t in range(1, n):
        z[t] = rng.choice(len(sigmas), p=a[z[t - 1]])
    returns = rng.normal(0.0, np.asarray(sigmas)[z])
    index = pd.bdate_range("2001-01-02", periods=n, name="date")
    return pd.DataFrame({"close": 100.0 * np.exp(np.cumsum(returns))}, index=index), \
        pd.Series(z, index=index)


@pytest.fixture(scope="module")
def two_state() -> tuple[pd.DataFrame, pd.Series]:
    return sample_regimes(1500, **TWO_STATE, seed=SEED)


@pytest.fixture(scope="module")
def fitted2(two_state) -> RegimeModel:
    return RegimeModel(2, random_state=SEED).fit(two_state[0])


@pytest.fixture(scope="module")
def sp500() -> pd.DataFrame:
    sp = pytest.importorskip("arch.data.sp500")
    frame = sp.load()[["Adj Close"]].rename(columns={"Adj Close": "close"})
    frame.index.name = "date"
    return frame


def state_vols(model: RegimeModel) -> np.ndarray:
    """Per-state daily return volatility in the original scale."""
    return np.sqrt(model.covars_[:, 0, 0]) * model.feature_std_[0]


# ---------------------------------------------------------------- known answers


def test_regime_names():
    assert regime_names(2) == ["calm", "turbulent"]
    assert regime_names(3) == ["calm", "normal", "turbulent"]
    assert regime_names(4) == ["calm", "normal", "volatile", "turbulent"]
    assert regime_names(5) == [f"regime_{i}" for i in range(5)]
    with pytest.raises(ValueError):
        regime_names(0)


def test_recovers_two_state_regimes(two_state, fitted2):
    prices, truth = two_state
    truth = truth.loc[fitted2.features(prices).index].to_numpy()
    filtered = fitted2.filter_proba(prices).to_numpy().argmax(axis=1)
    smoothed = fitted2.smooth_proba(prices).to_numpy().argmax(axis=1)
    assert (smoothed == truth).mean() > 0.9
    assert (filtered == truth).mean() > 0.85
    np.testing.assert_allclose(state_vols(fitted2), TWO_STATE["sigmas"], rtol=0.2)
    np.testing.assert_allclose(np.diag(fitted2.transmat_), np.diag(TWO_STATE["transmat"]),
                               atol=0.03)
    assert fitted2.converged_ and fitted2.fallback_ is None
    assert fitted2.names_ == ["calm", "turbulent"]
    np.testing.assert_allclose(fitted2.expected_durations_, 1 / (1 - np.diag(fitted2.transmat_)))


def test_recovers_three_state_volatilities():
    prices, truth = sample_regimes(2000, **THREE_STATE, seed=SEED + 1)
    model = RegimeModel(3, random_state=SEED).fit(prices)
    np.testing.assert_allclose(state_vols(model), THREE_STATE["sigmas"], rtol=0.2)
    smoothed = model.smooth_proba(prices).to_numpy().argmax(axis=1)
    assert (smoothed == truth.iloc[model.vol_window:].to_numpy()).mean() > 0.8


def test_features_are_causal_and_standardised(two_state, fitted2):
    prices, _ = two_state
    feats = fitted2.features(prices)
    assert list(feats.columns) == ["log_return", "log_vol"]
    assert feats.index.equals(prices.index[fitted2.vol_window:])
    np.testing.assert_allclose(feats.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(feats.std(ddof=0), 1.0, rtol=1e-12)
    suffix = prices.iloc[700:]
    assert np.array_equal(fitted2.features(suffix).to_numpy(),
                          feats.loc[suffix.index[fitted2.vol_window]:].to_numpy())


# ---------------------------------------------------------------- no look-ahead


@pytest.mark.parametrize("n_rows", [11, 12, 57, 400, 1111, 1499])
def test_filter_and_forecast_are_prefix_invariant(two_state, fitted2, n_rows):
    prices, _ = two_state
    full_filter = fitted2.filter_proba(prices)
    full_next = fitted2.predict_next_proba(prices)
    part = prices.iloc[:n_rows]
    part_filter = fitted2.filter_proba(part)
    part_next = fitted2.predict_next_proba(part)
    m = n_rows - fitted2.vol_window
    assert part_filter.index.equals(full_filter.index[:m])
    assert np.array_equal(part_filter.to_numpy(), full_filter.to_numpy()[:m])
    assert np.array_equal(part_next.to_numpy(), full_next.to_numpy()[:m])
    smoothed = fitted2.smooth_proba(part).to_numpy()
    np.testing.assert_allclose(smoothed[-1], part_filter.to_numpy()[-1], rtol=0, atol=1e-10)


def test_probabilities_are_distributions(two_state, fitted2):
    prices, _ = two_state
    for frame in (fitted2.filter_proba(prices), fitted2.predict_next_proba(prices),
                  fitted2.smooth_proba(prices), fitted2.rolling_next_proba(prices, 30)):
        values = frame.to_numpy()
        assert list(frame.columns) == fitted2.names_
        assert np.all((values >= 0) & (values <= 1))
        np.testing.assert_allclose(values.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    filt = fitted2.filter_proba(prices).to_numpy()
    np.testing.assert_allclose(fitted2.predict_next_proba(prices).to_numpy(),
                               filt @ fitted2.transmat_, rtol=0, atol=1e-14)


def test_rolling_next_proba_equals_per_window_forecast(two_state, fitted2):
    prices, _ = two_state
    window = 60
    rolling = fitted2.rolling_next_proba(prices, window)
    need = fitted2.min_rows(window)
    assert need == window + fitted2.vol_window
    assert rolling.index.equals(prices.index[need - 1:])
    rows = np.unique(np.r_[0, 1, np.linspace(0, len(rolling) - 1, 40).astype(int)])
    worst = 0.0
    for i in rows:
        t = rolling.index[i]
        single = fitted2.predict_next_proba(prices.loc[:t].iloc[-need:]).iloc[-1]
        assert single.name == t
        worst = max(worst, float(np.abs(single.to_numpy() - rolling.iloc[i].to_numpy()).max()))
    assert worst <= 1e-12
    exact = fitted2.rolling_next_proba(prices.iloc[:need], window)
    assert len(exact) == 1
    with pytest.raises(DataError, match=f"at least {need}"):
        fitted2.rolling_next_proba(prices.iloc[:need - 1], window)


# ---------------------------------------------------------------- canonical order, lineage


def test_canonical_order_is_seed_invariant(two_state, fitted2):
    prices, _ = two_state
    assert np.all(np.diff(fitted2.covars_[:, 0, 0]) > 0)
    other = RegimeModel(2, random_state=SEED + 12345).fit(prices)
    np.testing.assert_allclose(other.means_, fitted2.means_, atol=0.05)
    np.testing.assert_allclose(other.covars_, fitted2.covars_, rtol=0.05, atol=0.01)
    np.testing.assert_allclose(other.transmat_, fitted2.transmat_, atol=0.01)
    agree = (other.filter_proba(prices).to_numpy().argmax(1)
             == fitted2.filter_proba(prices).to_numpy().argmax(1)).mean()
    assert agree > 0.99


def test_label_switching_is_undone(two_state, fitted2, monkeypatch):
    """hmmlearn's labels permute between seeds; relabelling its output changes nothing."""
    prices, _ = two_state
    real = _fit.fit_once

    def relabelled(*args, **kwargs):
        res = real(*args, **kwargs)
        rev = np.arange(res.n_states)[::-1]
        res.startprob, res.means, res.covars = res.startprob[rev], res.means[rev], res.covars[rev]
        res.transmat = res.transmat[np.ix_(rev, rev)]
        return res

    monkeypatch.setattr(_fit, "fit_once", relabelled)
    model = RegimeModel(2, random_state=SEED).fit(prices)
    for attr in ("startprob_", "transmat_", "means_", "covars_"):
        assert np.array_equal(getattr(model, attr), getattr(fitted2, attr)), attr


def _swapped(model: RegimeModel) -> RegimeModel:
    """The same fit with its states stored in reverse order (as a raw, unsorted fit might be)."""
    d = model.to_dict()
    perm = [1, 0]
    d["names"] = [d["names"][i] for i in perm]
    for key in ("startprob", "means", "covars", "stationary"):
        d[key] = [d[key][i] for i in perm]
    d["transmat"] = [[d["transmat"][i][j] for j in perm] for i in perm]
    return RegimeModel.from_dict(d)


def test_refit_aligns_to_previous(two_state, fitted2):
    prices, _ = two_state
    previous = _swapped(fitted2)
    assert previous.names_ == ["turbulent", "calm"]
    refit = RegimeModel(3, random_state=SEED).fit(prices.iloc[100:], previous=previous)
    assert refit.n_states_ == 2  # the lineage's count wins over n_states=3
    assert refit.permutation_ == [1, 0]
    assert refit.names_ == previous.names_
    in_prev_units = (refit.means_ * refit.feature_std_ + refit.feature_mean_
                     - previous.feature_mean_) / previous.feature_std_
    np.testing.assert_allclose(in_prev_units, previous.means_, atol=0.1)
    assert refit.covars_[0, 0, 0] > refit.covars_[1, 0, 0]  # stored in the lineage's order
    # A refit on the lineage's own order keeps it.
    same = RegimeModel(2, random_state=SEED).fit(prices.iloc[100:], previous=fitted2)
    assert same.permutation_ == [0, 1] and same.names_ == fitted2.names_
    assert fitted2.permutation_ is None


def test_refit_warm_starts_from_the_previous_fit(two_state, fitted2, monkeypatch):
    prices, _ = two_state
    window = prices.iloc[100:]
    raw, _ = raw_features(window, fitted2.vol_window, fitted2.observations)
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    init = _lineage.warm_start(fitted2, (mean, std))
    # The same densities in the new window's units, up to the change of variables' constant.
    new = gaussian_log_densities((raw - mean) / std, init.means, init.covars)
    old = gaussian_log_densities((raw - fitted2.feature_mean_) / fitted2.feature_std_,
                                 fitted2.means_, fitted2.covars_)
    np.testing.assert_allclose(new - old, np.log(std / fitted2.feature_std_).sum(), atol=1e-9)
    np.testing.assert_array_equal(init.transmat, fitted2.transmat_)

    starts: list[object] = []
    once = _fit.fit_once

    def spy(*args, **kwargs):
        starts.append(kwargs.get("init"))
        return once(*args, **kwargs)

    monkeypatch.setattr(_fit, "fit_once", spy)
    RegimeModel(2, n_restarts=2, random_state=SEED).fit(window, previous=fitted2)
    assert len(starts) == 3 and starts[:2] == [None, None]  # the restarts, then the warm start
    np.testing.assert_allclose(starts[2].means, init.means)
    starts.clear()
    RegimeModel(2, n_restarts=2, random_state=SEED).fit(window)
    assert starts == [None, None]
    monkeypatch.undo()
    # One EM iteration leaves the k-means starts far from an optimum; the warm start, begun at
    # one, wins by far more than the margin and keeps the lineage's parameters.
    cold = RegimeModel(2, n_iter=1, random_state=SEED).fit(prices)
    warm = RegimeModel(2, n_iter=1, random_state=SEED).fit(prices, previous=fitted2)
    assert warm.log_likelihood_ > cold.log_likelihood_ + _fit.WARM_START_MARGIN
    np.testing.assert_allclose(warm.transmat_, fitted2.transmat_, atol=2e-3)


def test_sticky_prior_lengthens_regimes_and_round_trips(two_state, fitted2):
    prices, _ = two_state
    sticky = RegimeModel(2, random_state=SEED, sticky=5000.0).fit(prices)
    assert (np.diag(sticky.transmat_) > np.diag(fitted2.transmat_)).all()
    assert (np.diag(sticky.transmat_) > 0.995).all()  # 5,000 pseudo-counts vs ~1,500 rows
    rebuilt = RegimeModel.from_dict(json.loads(json.dumps(sticky.to_dict())))
    assert rebuilt.get_params()["sticky"] == 5000.0
    for bad in (-1.0, True, "high"):
        with pytest.raises(SupsupError, match="sticky expected a number >= 0"):
            RegimeModel(2, sticky=bad).fit(prices)


# ---------------------------------------------------------------- persistence


def test_to_dict_roundtrip_is_bitwise(two_state, fitted2):
    prices, _ = two_state
    d = json.loads(json.dumps(fitted2.to_dict()))
    rebuilt = RegimeModel.from_dict(d)
    assert np.array_equal(rebuilt.filter_proba(prices).to_numpy(),
                          fitted2.filter_proba(prices).to_numpy())
    assert np.array_equal(rebuilt.rolling_next_proba(prices, 25).to_numpy(),
                          fitted2.rolling_next_proba(prices, 25).to_numpy())
    assert rebuilt.to_dict() == fitted2.to_dict()
    for attr in ("transmat_", "means_", "covars_", "startprob_", "feature_mean_",
                 "feature_std_", "stationary_", "expected_durations_"):
        assert np.array_equal(getattr(rebuilt, attr), getattr(fitted2, attr)), attr
    assert rebuilt.bic_ == fitted2.bic_ and rebuilt.get_params() == fitted2.get_params()
    direct = RegimeModel.from_dict(fitted2.to_dict())  # no JSON in between
    assert np.array_equal(direct.filter_proba(prices).to_numpy(), fitted2.filter_proba(prices).to_numpy())
    with pytest.raises(SupsupError, match="format"):
        RegimeModel.from_dict({**d, "format": "something-else"})
    broken = dict(d)
    del broken["transmat"]
    with pytest.raises(SupsupError, match="transmat"):
        RegimeModel.from_dict(broken)
    with pytest.raises(SupsupError, match=r"'means' expected shape \(2, 2\), got \(2, 1\)"):
        RegimeModel.from_dict({**d, "means": [[0.0], [1.0]]})
    with pytest.raises(SupsupError, match="bad 'hyperparameters'"):
        RegimeModel.from_dict({**d, "hyperparameters": {**d["hyperparameters"], "bogus": 1}})


@pytest.mark.parametrize("name", ["return_vol_range", "return_refit"])
def test_dict_written_by_format_version_1_still_loads(name):
    """tests/regimes/regime_model_v1.json holds to_dict() output written before from_dict moved into
    the class, with the prices and filter probabilities it gave. The format must load unchanged and
    the probabilities agree to the last few ulps: bitwise on the CPU that wrote them, within ~1e-15
    on one whose numpy/BLAS vector paths differ (measured 2.2e-16 absolute on an AVX2-only host)."""
    stored = json.loads((DATA / "regime_model_v1.json").read_text())
    prices = pd.DataFrame({"close": stored["close"]},
                          index=pd.DatetimeIndex(pd.to_datetime(stored["dates"]), name="date"))
    case = stored["models"][name]
    model = RegimeModel.from_dict(case["dict"])
    np.testing.assert_allclose(model.filter_proba(prices).to_numpy(), np.array(case["filter_proba"]),
                               rtol=1e-12, atol=1e-14)
    assert model.to_dict() == case["dict"]  # the format itself is unchanged
    np.testing.assert_array_equal(model.expected_durations_, 1 / (1 - np.diag(model.transmat_)))


def test_regimes_modules_import_no_cycle():
    """No module-level import cycle among the regimes modules (``model`` <-> ``_persist`` was one)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        if path.stem == "__init__":
            continue
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # module level, TYPE_CHECKING blocks included
            nodes = [node] + (list(ast.walk(node)) if isinstance(node, ast.If) else [])
            for n in nodes:
                if isinstance(n, ast.ImportFrom) and n.module == "supsup_fin.regimes":
                    found |= {a.name for a in n.names}
                elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("supsup_fin.regimes."):
                    found.add(n.module.rsplit(".", 1)[1])
        graph[path.stem] = found & {p.stem for p in PACKAGE.glob("*.py")}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    assert "_persist" in graph["model"] and "_lineage" in graph["model"]
    assert [m for m in graph if reaches(m, m, {m})] == []


def test_is_int_accepts_ints_and_numpy_ints_only():
    assert all(is_int(v) for v in (0, -3, 2**70, np.int8(1), np.int64(5), np.uint32(7)))
    assert not any(is_int(v) for v in (True, np.bool_(True), 1.0, np.float64(2.0), "1", None, [1]))


# ---------------------------------------------------------------- state count by BIC


@pytest.fixture(scope="module")
def bic_fit(two_state) -> RegimeModel:
    return RegimeModel((2, 4), random_state=SEED).fit(two_state[0])


def test_bic_search_keeps_the_lowest_bic(bic_fit):
    assert sorted(bic_fit.bic_) == [2, 3, 4]
    assert all(np.isfinite(v) for v in bic_fit.bic_.values())
    assert bic_fit.n_states_ == min(bic_fit.bic_, key=bic_fit.bic_.get)
    assert bic_fit.bic_[bic_fit.n_states_] == pytest.approx(
        min(bic_fit.bic_.values()))
    assert len(bic_fit.names_) == bic_fit.n_states_


def test_bic_picks_two_states_on_two_state_data(bic_fit):
    assert bic_fit.selection == "bic_returns"
    assert bic_fit.n_states_ == 2
    assert bic_fit.names_ == ["calm", "turbulent"] and bic_fit.converged_


@pytest.mark.parametrize("case, k_range, expected", [
    ("iid", (1, 3), 1), ("three", (2, 4), 3)])
def test_bic_on_returns_recovers_the_state_count(case, k_range, expected):
    if case == "iid":
        r = np.random.default_rng(SEED).normal(0.0, 0.01, 1500)
        index = pd.bdate_range("2001-01-02", periods=1500, name="date")
        prices = pd.DataFrame({"close": 100.0 * np.exp(np.cumsum(r))}, index=index)
    else:
        prices, _ = sample_regimes(2000, **THREE_STATE, seed=SEED + 1)
    model = RegimeModel(k_range, n_restarts=2, random_state=SEED).fit(prices)
    assert model.n_states_ == expected, model.bic_


def test_bic_on_features_over_selects(two_state):
    """Why the default criterion is not the two-feature BIC (overlapping vol windows)."""
    model = RegimeModel((2, 4), n_restarts=2, selection="bic_features",
                        random_state=SEED).fit(two_state[0])
    assert model.n_states_ > 2


# ---------------------------------------------------------------- degenerate fits, warnings


def test_fallback_to_diagonal_then_fewer_states(two_state, fitted2, monkeypatch):
    prices, _ = two_state
    real = _fit.fit_once

    def no_full(x, n_states, settings, *args, **kwargs):
        if settings.covariance_type == "full":
            return "EM failed: must be symmetric, positive-definite (simulated)"
        return real(x, n_states, settings, *args, **kwargs)

    monkeypatch.setattr(_fit, "fit_once", no_full)
    model = RegimeModel(2, random_state=SEED).fit(prices)
    assert model.covariance_type_ == "diag" and model.n_states_ == 2
    assert "diag" in model.fallback_ and "positive-definite" in model.fallback_
    assert model.covars_.shape == (2, 2, 2) and model.covars_[0, 0, 1] == 0.0

    def only_one_state(x, n_states, *args, **kwargs):
        return "EM failed (simulated)" if n_states > 1 else real(x, n_states, *args, **kwargs)

    monkeypatch.setattr(_fit, "fit_once", only_one_state)
    model = RegimeModel(2, random_state=SEED).fit(prices)
    assert model.n_states_ == 1 and model.names_ == ["regime_0"]
    assert "1 states" in model.fallback_

    def always_fails(*args, **kwargs):
        return "EM failed (simulated)"

    monkeypatch.setattr(_fit, "fit_once", always_fails)
    with pytest.raises(RegimeFitError, match="no usable HMM fit"):  # a lineage keeps its count
        RegimeModel(2, random_state=SEED).fit(prices, previous=fitted2)


def test_almost_unvisited_state_is_degenerate(two_state, fitted2):
    prices, _ = two_state
    x = fitted2.features(prices).to_numpy()
    k = 3
    res = _fit.FitResult(
        n_states=k, covariance_type="full", startprob=np.full(k, 1 / k),
        transmat=np.full((k, k), 1 / k),
        means=np.vstack([fitted2.means_, [[40.0, 40.0]]]),
        covars=np.concatenate([fitted2.covars_, np.eye(2)[None] * 1e-3]),
        log_likelihood=0.0, bic=0.0, converged=True, n_iter=1, seed=0)
    assert "almost never visited" in _fit.degeneracy(x, res)


def test_non_convergence_is_recorded_and_nothing_escapes(two_state, caplog):
    prices, _ = two_state
    with caplog.at_level(logging.DEBUG):
        model = RegimeModel(3, n_iter=2, random_state=SEED).fit(prices)
    assert model.converged_ is False and model.n_iter_ == 2
    assert any("did not converge" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records if r.name.startswith("supsup_fin.regimes"))
    assert not [r for r in caplog.records if r.name.startswith("hmmlearn")]


def test_hmmlearn_posteriors_serve_smoothed_labels_only():
    """hmmlearn's posteriors look ahead: one call, in ``_forward.smoothed_proba``, which only the
    smoothed training labels and the state-occupancy check use; every filter is our own."""
    pattern = re.compile(r"predict_proba\(|\.predict\(|\.decode\(|score_samples\(")
    offenders = [f"{p.name}:{line.strip()}" for p in PACKAGE.glob("*.py")
                 for line in p.read_text().splitlines() if pattern.search(line)]
    assert offenders == ["_forward.py:return hmm.predict_proba(log_b)"]
    callers = {p.name: [line.strip() for line in p.read_text().splitlines() if "smoothed_proba(" in line]
               for p in PACKAGE.glob("*.py")}
    assert {n: c for n, c in callers.items() if c and n != "_forward.py"} == {
        "model.py": ["return self._frame(_forward.smoothed_proba(log_b, self.stationary_, self.transmat_), index)"],
        "_fit.py": ["return _forward.smoothed_proba(log_b, res.startprob, res.transmat).sum(axis=0)"],
    }


# ---------------------------------------------------------------- bad input


def test_bad_input_errors(two_state, fitted2):
    prices, _ = two_state
    with pytest.raises(NotFittedError, match="not fitted"):
        RegimeModel(2).filter_proba(prices)
    assert issubclass(NotFittedError, ValueError)
    with pytest.raises(DataError, match="'close'"):
        RegimeModel(2).fit(prices.rename(columns={"close": "price"}))
    with pytest.raises(DataError, match="at least 50 price rows, got 30"):
        RegimeModel(2).fit(prices.iloc[:30])
    bad = prices.copy()
    bad.iloc[500, 0] = -1.0
    with pytest.raises(DataError, match=rf"> 0, got -1.0 on {prices.index[500].date()}"):
        RegimeModel(2).fit(bad)
    bad.iloc[500, 0] = np.nan
    with pytest.raises(DataError, match="missing"):
        fitted2.filter_proba(bad)
    with pytest.raises(DataError, match="DatetimeIndex"):
        RegimeModel(2).fit(prices.reset_index())
    with pytest.raises(DataError, match="DataFrame"):
        RegimeModel(2).fit(prices["close"])
    with pytest.raises(DataError, match="increasing"):
        RegimeModel(2).fit(prices.iloc[::-1])
    with pytest.raises(DataError, match="at least 11"):
        fitted2.filter_proba(prices.iloc[:10])
    flat = prices.copy()
    flat["close"] = 100.0
    with pytest.raises(DataError, match="constant"):
        RegimeModel(2).fit(flat)
    for kwargs, what in (({"n_states": 0}, "n_states"), ({"n_states": (3, 2)}, "n_states"),
                         ({"covariance_type": "bogus"}, "covariance_type"),
                         ({"vol_window": 1}, "vol_window"), ({"n_restarts": 0}, "n_restarts"),
                         ({"random_state": "x"}, "random_state")):
        with pytest.raises(SupsupError, match=what):
            RegimeModel(**kwargs).fit(prices)
    with pytest.raises(SupsupError, match="window"):
        fitted2.rolling_next_proba(prices, 0)
    with pytest.raises(SupsupError, match="previous"):
        RegimeModel(2).fit(prices, previous="model")
    with pytest.raises(NotFittedError):
        RegimeModel(2).fit(prices, previous=RegimeModel(2))


# ---------------------------------------------------------------- real data, plot


def test_sp500_three_regimes(sp500):
    train = sp500.loc["1999":"2012"]
    start = time.perf_counter()
    model = RegimeModel(3, random_state=0).fit(train)
    seconds = time.perf_counter() - start
    stats = model.regime_stats(train)
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        print(f"S&P 500 1999-2012, 3 states, fit {seconds:.2f} s, "
              f"{model.n_iter_} EM iterations\n{stats}")
    assert model.converged_ and model.fallback_ is None
    assert seconds < 30
    assert list(stats.index) == ["calm", "normal", "turbulent"]
    assert np.all(np.diff(stats["ann_volatility"].to_numpy()) > 0)
    assert np.all(np.diff(state_vols(model)) > 0)
    assert stats["frequency"].sum() == pytest.approx(1.0)
    assert stats["n_rows"].sum() == len(train) - model.vol_window
    # The 2008 crash is turbulent in the filter, as known on the day.
    filtered = model.filter_proba(sp500.loc["1999":"2009"])
    assert filtered.loc["2008-10-01":"2008-11-30"].idxmax(axis=1).eq("turbulent").mean() > 0.9


def test_plot_regimes(tmp_path, two_state, fitted2):
    prices, _ = two_state
    out = plot_regimes(prices.iloc[:400], fitted2, tmp_path / "sub" / "regimes.png", title="x")
    assert out == tmp_path / "sub" / "regimes.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["regimes.png"]
