"""The walk-forward backtest end to end on a small synthetic market: causality, the continual
path, the comparison table, the flow's MLflow record and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SEED
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from supsup_fin.backtest.engine import run_walk_forward
from supsup_fin.backtest.report import PORTFOLIO, summarise
from supsup_fin.config import config_from_dict
from supsup_fin.data import load_prices

STRATEGIES = {"buy_and_hold", "hmm_rule", "class_prior", "logistic", "dense", "dense_finetune", "dense_regime",
              "oracle", "supsup_hard", "supsup_soft", "supsup_ensemble", "supsup_infer", "supsup_market",
              "supsup_auto"}


def backtest_config_dict() -> dict:
    """One synthetic market, three short windows, a tiny network: a whole backtest in seconds."""
    return {
        "name": "bt-small",
        "markets": [{"name": "syn", "source": "synthetic", "dataset": "easy", "seed": 1}],
        "segments": {"train": [None, "2009-12-31"], "valid": ["2010-01-01", "2011-12-31"],
                     "test": ["2012-01-01", None]},
        "features": {"lookback": 4, "horizon": 3},
        "regimes": {"n_states": 2, "n_restarts": 1, "regime_window": 100},
        "network": {"hidden": [16, 16]},
        "training": {"steps": 20, "batch_size": 64, "holdout_fraction": 0.2},
        "gating": {"mode": "auto"},
        "backtest": {"start": "2012-01-02", "end": "2013-03-29", "retrain_every": 110, "bootstrap": 200,
                     "modes": ["hard", "soft", "ensemble", "infer", "market", "auto"]},
        "tracking": {"experiment": "bt-small", "model_name": "bt-small"},
        "runtime": {"threads": 1},
    }


@pytest.fixture(scope="module")
def small_backtest(tmp_path_factory):
    cfg = config_from_dict(backtest_config_dict())
    cache = tmp_path_factory.mktemp("cache")
    prices = {m.name: load_prices(m, cfg.data, cache).frame for m in cfg.markets}
    fc = run_walk_forward(cfg, prices)
    return cfg, prices, fc, summarise(fc, cfg, prices)


def test_no_look_ahead_decisions_up_to_t_ignore_prices_after_t(small_backtest) -> None:
    cfg, prices, fc, _ = small_backtest
    t = fc.windows[1].test_start + pd.Timedelta(days=20)  # inside the second window
    rng = np.random.default_rng(SEED)
    after = prices["syn"].index > t
    bent = prices["syn"].copy()
    bent.loc[after, "close"] *= np.exp(np.cumsum(rng.normal(0, 0.05, after.sum())))
    fc2 = run_walk_forward(cfg, {"syn": bent})
    cols = [c for c in fc.rows.columns if c.startswith(("p_", "regime")) or c in ("signal", "masks")]
    key = ["strategy", "date"]
    a = fc.rows[fc.rows.date <= t].sort_values(key).reset_index(drop=True)
    b = fc2.rows[fc2.rows.date <= t].sort_values(key).reset_index(drop=True)
    assert len(a) > 11 * 20 and set(a.strategy) == STRATEGIES
    pd.testing.assert_frame_equal(a[key + cols], b[key + cols])  # bitwise: every strategy, every column
    later = fc.rows[fc.rows.date > t + pd.Timedelta(days=10)].sort_values(key)["signal"].to_numpy()
    later2 = fc2.rows[fc2.rows.date > t + pd.Timedelta(days=10)].sort_values(key)["signal"].to_numpy()
    assert not np.array_equal(later, later2)  # the perturbation does reach later decisions
    r1, r2 = summarise(fc, cfg, prices), summarise(fc2, cfg, {"syn": bent})
    d1 = r1.daily[r1.daily.date <= t].sort_values(key)["position"].to_numpy()
    d2 = r2.daily[r2.daily.date <= t].sort_values(key)["position"].to_numpy()
    np.testing.assert_array_equal(d1, d2)


def test_each_windows_selection_slice_ends_before_its_test_days(small_backtest) -> None:
    """A window's held-out rows are the tail of its own training rows: their targets end by as_of,
    before the first test day, and the gated model's choices were made on exactly those rows.
    (The look-ahead test above perturbs prices after t with the slice, calibration and auto on.)"""
    cfg, prices, fc, _ = small_backtest
    h = cfg.features.horizon
    for (w, market), fit in fc.fits.items():
        window, rows = fit.window, fit.holdout_rows
        dates = fit.features.dates
        assert len(rows) >= 50 and (fit.features.y[rows] >= 0).all()
        assert dates[rows[-1] + h] <= window.as_of < window.test_start  # targets known at as_of
        assert fit.train_rows().max() < rows[0] - h - cfg.features.lookback  # purged from the fit rows
        sel = fit.model.selection
        assert sel["holdout_end"] == str(dates[rows[-1]].date()) and sel["n_holdout"] <= len(rows)
        assert fit.model.mode == sel["chosen"]


def test_continual_path_grows_one_bank_and_forgets_nothing(small_backtest) -> None:
    _, _, fc, res = small_backtest
    tags = [w.tag for w in fc.windows]
    assert len(tags) == 3
    for tag in tags:  # every window's regime and ALL masks, named market/regime@as_of
        assert f"syn/ALL@{tag}" in fc.bank and any(n.endswith(f"@{tag}") and "/ALL" not in n for n in fc.bank.names)
    acc = fc.mask_acc["syn"]
    # window j's masks re-run from the bank after every later window: identical accuracy
    for j in range(len(tags)):
        np.testing.assert_array_equal(acc[j:, j], np.full(len(tags) - j, acc[j, j]))
    gated = res.continual.loc[("syn", "supsup_auto")]
    assert gated["bwt"] == 0.0 and gated["forgetting"] == 0.0
    assert gated["avg_accuracy"] == acc[-1].mean()  # the mean of the per-task accuracies at the end
    ft = fc.dense_finetune_acc["syn"]
    assert res.continual.loc[("syn", "dense_finetune"), "avg_accuracy"] == ft[-1].mean()
    assert res.continual.loc[("syn", "dense_finetune"), "bwt"] == pytest.approx(
        np.mean([ft[-1, j] - ft[j, j] for j in range(len(tags) - 1)]), abs=1e-15)


def test_each_windows_task_accuracy_is_its_masks_score_on_its_new_rows(small_backtest) -> None:
    """acc[-1, j], recomputed by hand: window j's gated model, run from the final bank on the
    whole history up to each of window j's new training rows, scored against their classes."""
    from supsup_fin.backtest.fitting import forecaster_for

    cfg, prices, fc, _ = small_backtest
    acc = fc.mask_acc["syn"]
    for j, w in enumerate(fc.windows):
        fit = fc.fits[(w.index, "syn")]
        dates, y = fit.features.dates[fit.new_rows], fit.features.y[fit.new_rows]
        assert len(dates) > 50 and (y >= 0).all()
        if j:  # new rows start after the previous window's last training row
            assert dates[0] > fc.fits[(j - 1, "syn")].last_train
        frame = forecaster_for([fit], cfg, fc.net, fc.bank).predict_frame("syn", prices["syn"].loc[: dates[-1]], cfg.gating.mode)
        probs = frame.reindex(dates)[[f"p_{c}" for c in fc.classes]].to_numpy()
        ok = np.isfinite(probs).all(axis=1)  # the first rows of history have no forecast yet
        assert ok.sum() > 50
        assert acc[-1, j] == (probs[ok].argmax(axis=1) == y[ok]).mean()


def test_hmm_rule_is_flat_exactly_where_turbulent_is_the_most_probable_next_regime(small_backtest) -> None:
    _, _, fc, _ = small_backtest
    rows = fc.rows[fc.rows.strategy == "hmm_rule"]
    calm, turbulent = rows["regime_calm"].to_numpy(), rows["regime_turbulent"].to_numpy()
    assert np.isfinite(calm).all() and 0 < (turbulent > calm).sum() < len(rows)  # both decisions occur
    np.testing.assert_array_equal(rows["signal"].to_numpy(), np.where(turbulent > calm, 0.0, 1.0))
    assert rows[["p_down", "p_flat", "p_up"]].isna().all().all()


def test_the_first_windows_masks_are_bit_identical_at_the_end(tmp_path_factory) -> None:
    """Stop after one window, then run all: the first window's masks are the same bits."""
    tree = backtest_config_dict()
    cfg_all = config_from_dict(tree)
    tree["backtest"] = {**tree["backtest"], "end": "2012-06-01"}
    cfg_one = config_from_dict(tree)
    prices = {m.name: load_prices(m, cfg_all.data, tmp_path_factory.mktemp("c")).frame for m in cfg_all.markets}
    one = run_walk_forward(cfg_one.model_copy(update={"backtest": cfg_one.backtest.model_copy(
        update={"baselines": (), "modes": ("soft",)})}), prices)
    full = run_walk_forward(cfg_all.model_copy(update={"backtest": cfg_all.backtest.model_copy(
        update={"baselines": (), "modes": ("soft",)})}), prices)
    assert len(one.windows) == 1 and len(full.windows) == 3
    for name in one.bank.names:
        assert all(torch.equal(a, b) for a, b in zip(one.bank[name].layers, full.bank[name].layers))
    assert full.net.weights_hash() == one.net.weights_hash()


def test_comparison_table_holds_every_strategy_and_the_portfolio(small_backtest) -> None:
    _, _, fc, res = small_backtest
    t = res.table
    assert set(t.xs("syn", level="market").index) == STRATEGIES
    assert set(t.xs(PORTFOLIO, level="market").index) == STRATEGIES
    row = t.loc[("syn", "supsup_soft")]
    assert row["sharpe_lo"] <= row["sharpe"] <= row["sharpe_hi"]
    assert 0 <= row["psr"] <= 1 and row["dsr"] <= row["psr"]
    assert np.isnan(t.loc[("syn", "buy_and_hold"), "accuracy"]) and np.isfinite(row["accuracy"])
    bh = res.daily[(res.daily.strategy == "buy_and_hold")].set_index("date")
    close = fc.closes["syn"]
    # buy and hold: flat on day 1, filled at day 2's close, then the market minus one fill cost
    gross = close.iloc[-1] / close.iloc[1]
    assert bh["equity"].iloc[-1] == pytest.approx(gross * (1 - 2e-4), rel=1e-9)
    assert set(res.per_regime.index.get_level_values("regime")) <= {"calm", "turbulent"}
    assert {"class", "mean_predicted", "observed", "count", "strategy"} <= set(res.calibration.columns)
    assert res.storage.loc["supermasks (1 bit per weight)", "bytes"] * 30 < \
        res.storage.loc["dense per market and regime (fp32)", "bytes"] * 3


def test_backtest_command_runs_the_flow_and_records_it(harness, tmp_path: Path) -> None:
    from supsup_fin.cli import app
    from supsup_fin.cli.backtest import show_backtest
    from supsup_fin.cli.common import out

    tree = backtest_config_dict()
    tree["backtest"] = {**tree["backtest"], "end": "2012-09-28", "baselines": ["buy_and_hold", "dense"],
                        "modes": ["soft", "market"]}
    path = tmp_path / "bt.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["backtest", "--config", str(path), "--json", "--home", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    strategies = {r["strategy"] for r in summary["table"] if r["market"] == "syn"}
    assert strategies == {"buy_and_hold", "dense", "supsup_soft", "supsup_market"}
    assert len(summary["windows"]) == 2 and summary["run_id"]
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.data.tags["supsup_fin.flow"] == "backtest"
    assert run.data.metrics["bt/syn/supsup_soft/sharpe"] == pytest.approx(  # the summary rounds to 6 decimals
        next(r["sharpe"] for r in summary["table"] if r["market"] == "syn" and r["strategy"] == "supsup_soft"), abs=6e-7)
    assert summary["experiment_id"] == run.info.experiment_id
    folder = Path(summary["artifacts_dir"])
    assert folder.parent == tmp_path / "ws" / "backtests" and folder.name.startswith("bt-small-")
    assert all(Path(p).parent == folder for p in summary["artifacts"])
    assert sorted(Path(p).name for p in summary["artifacts"]) == sorted(p.name for p in folder.iterdir())
    assert summary["tearsheet"] == str(folder / "tearsheet.html")
    files = {f.path for f in client.list_artifacts(summary["run_id"], "backtest")}
    assert files == {f"backtest/{Path(p).name}" for p in summary["artifacts"]}  # the folder, as written
    assert {"backtest/comparison.csv", "backtest/equity_syn.png", "backtest/equity_portfolio.png",
            "backtest/daily.parquet", "backtest/reliability.png", "backtest/calibration.csv",
            "backtest/tearsheet.html"} <= files
    assert run.data.tags["supsup_fin.artifacts_dir"] == str(folder)
    assert not client.search_registered_models()  # a backtest registers nothing

    with out.capture() as printed:
        show_backtest(summary)
    tail = printed.get().splitlines()[-len(summary["artifacts"]) - 4:-1]
    assert tail == [f"artifacts: {folder}", *(f"  {Path(p).name}" for p in summary["artifacts"]),
                    f"tearsheet: {folder / 'tearsheet.html'}",
                    f"tracking: {summary['tracking_uri']}  run {summary['run_id']}"]
    url = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{summary['run_id']}"
    assert summary["mlflow_url"] == url
    assert printed.get().splitlines()[-1] == f"MLflow run: {url}  (served by `supsup-fin ui`)"


@pytest.mark.slow
def test_an_untracked_backtest_still_writes_its_artifacts(harness, tmp_path: Path) -> None:
    from supsup_fin.cli import app

    tree = backtest_config_dict()
    tree["backtest"] = {**tree["backtest"], "end": "2012-05-31", "baselines": ["buy_and_hold"], "modes": ["soft"]}
    path = tmp_path / "bt.yaml"
    path.write_text(yaml.safe_dump(tree))
    ws = tmp_path / "ws"
    result = CliRunner().invoke(app, ["backtest", "--config", str(path), "--json", "--no-track", "--home", str(ws)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_id"] is None and summary["experiment_id"] is None and summary["tracking_uri"] is None
    folder, = (ws / "backtests").iterdir()
    assert summary["artifacts_dir"] == str(folder) and summary["tearsheet"] == str(folder / "tearsheet.html")
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in summary["artifacts"])
    assert not (ws / "mlflow.db").exists()


def test_oracle_rows_are_the_true_model_forecast_on_each_window(small_backtest) -> None:
    """The oracle strategy's probabilities equal ``oracle_proba`` on the whole history, window by
    window (same class edges), and its accuracy is scored against the same realised classes."""
    from supsup_fin.data.oracle import oracle_proba

    cfg, prices, fc, _ = small_backtest
    rows = fc.rows[fc.rows.strategy == "oracle"]
    for w in fc.windows:
        edges = fc.fits[(w.index, "syn")].features.class_edges
        want = oracle_proba(prices["syn"], "easy", cfg.features.horizon, edges)
        got = rows[rows.window == w.index].set_index("date")
        cols = [c for c in got.columns if c.startswith("p_")]
        np.testing.assert_allclose(got[cols].to_numpy(), want.reindex(got.index).to_numpy(), atol=1e-12)
        fwd = np.log(prices["syn"]["close"].shift(-cfg.features.horizon) / prices["syn"]["close"])
        y = np.digitize(fwd.reindex(got.index), edges)
        known = np.isfinite(fwd.reindex(got.index).to_numpy())
        np.testing.assert_array_equal(got["y"].to_numpy()[known], y[known])


def test_one_batched_pass_equals_training_window_by_window(small_backtest) -> None:
    """The default walk-forward fits every window's HMMs, then trains every window's masks and dense
    nets in one batched pass; training window by window (``backtest.batched: false``) gives the same
    bits, forecasts and continual scores (CPU, one torch thread, as the config sets)."""
    cfg, prices, fc, report = small_backtest
    assert cfg.backtest.batched and cfg.runtime.threads == 1
    assert sum(1 for w in fc.window_log if w["masks_trained"]) >= 2  # several windows share the pass
    one_by_one = cfg.model_copy(update={"backtest": cfg.backtest.model_copy(update={"batched": False})})
    seq = run_walk_forward(one_by_one, prices)
    assert fc.bank.names == seq.bank.names and len(fc.bank) > 4
    for name in fc.bank.names:
        assert all(torch.equal(a, b) for a, b in zip(fc.bank[name].layers, seq.bank[name].layers)), name
        assert fc.bank.meta(name)["selected_step"] == seq.bank.meta(name)["selected_step"]
    pd.testing.assert_frame_equal(fc.rows, seq.rows)  # every strategy's probabilities, incl. the dense nets
    for market in fc.mask_acc:
        np.testing.assert_array_equal(fc.mask_acc[market], seq.mask_acc[market])
        np.testing.assert_array_equal(fc.dense_finetune_acc[market], seq.dense_finetune_acc[market])
    pd.testing.assert_frame_equal(report.table, summarise(seq, one_by_one, prices).table)


def test_markets_fitted_in_processes_equal_those_fitted_here_and_their_logs_reach_this_process(caplog, tmp_path) -> None:
    """``runtime.fit_processes``: each window's markets fit in worker processes side by side; every
    fit (HMM, regime posteriors, features, selection split) is the one this process computes, and the
    workers' log records reach this process's loggers."""
    import os

    from supsup_fin.backtest import engine

    tree = backtest_config_dict()
    tree["markets"].append({"name": "syn2", "source": "synthetic", "dataset": "hard", "seed": 2})
    cfg = config_from_dict(tree)
    prices = {m.name: load_prices(m, cfg.data, tmp_path).frame for m in cfg.markets}
    windows = engine.make_windows(engine.calendar_of(prices), cfg)

    def fit_all(processes: int) -> list:
        run = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"fit_processes": processes})})
        lineage, out = engine.History(), []
        with engine._fit_pool(run, prices, windows) as pool:
            assert (pool is None) == (processes == 1)
            for w in windows:
                out.append(engine._fit_window(run, prices, w, lineage, pool))
                lineage = lineage.with_fits(out[-1].fits)
        return out

    here = fit_all(1)
    with caplog.at_level("DEBUG", logger="supsup_fin"):
        there = fit_all(2)
    assert any(r.process != os.getpid() and r.name.startswith("supsup_fin.") for r in caplog.records)
    for a, b in zip(here, there):
        assert list(a.fits) == list(b.fits) == ["syn", "syn2"] and [t.name for t in a.tasks] == [t.name for t in b.tasks]
        for m in a.fits:
            fa, fb = a.fits[m], b.fits[m]
            assert fa.regimes.model.to_dict() == fb.regimes.model.to_dict()
            np.testing.assert_array_equal(fa.regimes.next_proba, fb.regimes.next_proba)
            np.testing.assert_array_equal(fa.regimes.train_labels, fb.regimes.train_labels)
            np.testing.assert_array_equal(fa.features.X, fb.features.X)
            np.testing.assert_array_equal(fa.new_rows, fb.new_rows)
