"""Regime fits on threads, as the retrain flow's thread-pool task runner runs them: each fit is bitwise the
fit it would be alone, and the process is left as found (BLAS thread counts, the warning filters).

The deterministic interleaving (fit A starts, fit B starts, A ends, B ends) is the order that left BLAS on
one thread and a stray "always" warning filter behind when each fit limited and restored them itself.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from supsup_fin.config import config_from_dict
from supsup_fin.data import generate_synthetic
from supsup_fin.forecaster.prepare import fit_regimes
from supsup_fin.regimes import RegimeModel, _fit
from conftest import SEED, small_config_dict

WAIT_S = 30.0


def blas_threads() -> list[int]:
    return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]


def process_state() -> tuple[list[int], list[tuple], Callable]:
    return blas_threads(), list(warnings.filters), warnings.showwarning


def set_blas(limits: int | dict[str, int]) -> None:
    """Set BLAS thread counts from a thread that then ends: threadpoolctl lets only the thread that set
    an OpenBLAS limit change it while that thread lives, and the fits under test must stay free to."""
    worker = threading.Thread(target=threadpool_limits, kwargs={"limits": limits, "user_api": "blas"})
    worker.start()
    worker.join()


@contextmanager
def blas_at(n: int) -> Iterator[None]:
    """BLAS at ``n`` threads (not 1, so a fit that leaves it at one is seen); as found afterwards."""
    found = {i["filepath"]: int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}
    set_blas(n)
    try:
        assert set(blas_threads()) == {n}
        yield
    finally:
        set_blas(found)


@pytest.fixture(scope="module")
def markets() -> dict[str, object]:
    return generate_synthetic("easy", 4, seed=SEED, end="2004-12-31").prices


def test_interleaved_fits_restore_blas_and_warning_filters(markets, monkeypatch):
    """A starts, B starts, A ends, B ends: both fits run with BLAS and OpenMP on one thread (B still
    after A has ended), and after the last one ends BLAS is back at its count and the warning filters
    are untouched."""
    prices = next(iter(markets.values()))
    r = np.diff(np.log(prices["close"].to_numpy()))[:600]
    x = ((r - r.mean()) / r.std())[:, None]
    settings = _fit.EMSettings("full", 50, 1e-3, (0,))
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    inside: dict[str, list[tuple[str, int]]] = {}

    class Gated(_fit.GaussianHMM):
        def fit(self, X, lengths=None):
            me = threading.current_thread().name
            inside[me] = [(i["user_api"], int(i["num_threads"])) for i in threadpool_info()]
            if me == "A":
                a_in.set()
                assert b_in.wait(WAIT_S)
            else:
                b_in.set()
                assert a_done.wait(WAIT_S)
                inside["B, A ended"] = [(i["user_api"], int(i["num_threads"])) for i in threadpool_info()]
            return super().fit(X, lengths)

    results: dict[str, object] = {}

    def run(name: str, seed: int) -> None:
        results[name] = _fit.fit_once(x, 2, settings, seed)
        if name == "A":
            a_done.set()

    with blas_at(3):
        before = process_state()
        with monkeypatch.context() as mp:
            mp.setattr(_fit, "GaussianHMM", Gated)
            a = threading.Thread(target=run, args=("A", 1), name="A")
            b = threading.Thread(target=run, args=("B", 2), name="B")
            a.start()
            assert a_in.wait(WAIT_S)
            b.start()
            a.join(WAIT_S)
            b.join(WAIT_S)
        after = process_state()
        assert after[0] == before[0] == [3] * len(before[0]), (before[0], after[0])
        assert after[1] == before[1] and after[2] is before[2]
    assert set(inside) == {"A", "B", "B, A ended"}  # B stays on one thread after A has ended
    for name, counts in inside.items():
        assert {n for api, n in counts} == {1}, (name, counts)
    for name, seed in (("A", 1), ("B", 2)):  # the same fits, one at a time
        alone = _fit.fit_once(x, 2, settings, seed)
        assert isinstance(results[name], _fit.FitResult), results[name]
        for attr in ("startprob", "transmat", "means", "covars"):
            assert np.array_equal(getattr(results[name], attr), getattr(alone, attr)), (name, attr)
        assert results[name].log_likelihood == alone.log_likelihood


def fit_all(jobs: list[tuple[str, int]], markets, threads: int) -> list[dict]:
    def one(job: tuple[str, int]) -> dict:
        market, seed = job
        model = RegimeModel(3, n_restarts=1, random_state=seed, market=market)
        return model.fit(markets[market].iloc[:900]).to_dict()

    if threads == 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, jobs))


def test_concurrent_fits_are_the_sequential_fits(markets):
    """8 fits (4 markets, 2 seeds each) on 4 threads, twice: every parameter bitwise equal to the same
    fit run alone, BLAS thread counts and the warning filters as before."""
    jobs = [(m, SEED + s) for m in markets for s in (0, 1)]
    with blas_at(2):
        before = process_state()
        alone = fit_all(jobs, markets, 1)
        for _ in range(2):
            assert fit_all(jobs, markets, 4) == alone
            after = process_state()
            assert after[0] == before[0] and after[1] == before[1] and after[2] is before[2]
    assert len({str(d["transmat"]) for d in alone}) == len(jobs)  # 8 different fits


def test_retrain_regime_step_on_a_thread_pool(markets):
    """``fit_regimes`` (the retrain flow's regime task) for 4 markets on 4 threads gives the fits and
    rolling posteriors it gives one market at a time."""
    cfg = config_from_dict(small_config_dict(segments={"train": [None, "2003-06-30"],
                                                       "valid": ["2003-07-01", "2004-03-31"],
                                                       "test": ["2004-04-01", None]}))

    def step(name: str):
        return fit_regimes(name, markets[name], cfg.regimes, cfg.segments)

    with blas_at(2):
        before = process_state()
        alone = {name: step(name) for name in markets}
        with ThreadPoolExecutor(max_workers=4) as pool:
            threaded = dict(zip(markets, pool.map(step, markets)))
        after = process_state()
    assert after[0] == before[0] and after[1] == before[1] and after[2] is before[2]
    for name in markets:
        assert threaded[name].model.to_dict() == alone[name].model.to_dict(), name
        assert np.array_equal(threaded[name].next_proba, alone[name].next_proba, equal_nan=True), name
        assert np.array_equal(threaded[name].train_labels, alone[name].train_labels), name


@pytest.mark.slow
def test_many_concurrent_fits_are_the_sequential_fits(markets):
    """32 fits (4 markets x 8 seeds) on 8 threads, five times over."""
    jobs = [(m, SEED + s) for m in markets for s in range(8)]
    with blas_at(2):
        before = process_state()
        alone = fit_all(jobs, markets, 1)
        rounds = 5
        differing = sum(fit_all(jobs, markets, 8) != alone for _ in range(rounds))
        after = process_state()
    print(f"{len(jobs)} fits x {rounds} rounds on 8 threads: {differing} rounds differ from the sequential "
          f"fits; BLAS threads {before[0]} -> {after[0]}; warning filters "
          f"{'unchanged' if after[1] == before[1] else 'changed'}")
    assert differing == 0
    assert after[0] == before[0] and after[1] == before[1] and after[2] is before[2]
