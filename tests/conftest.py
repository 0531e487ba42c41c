"""Shared fixtures. Seeds come from SUPSUP_TEST_SEED (default 0) and are printed in the header."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import numpy as np
import pandas as pd
import psutil
import pytest
from hypothesis import HealthCheck, settings

SEED = int(os.environ.get("SUPSUP_TEST_SEED", "0"))

# Fuzzing is reproducible: the same examples on every run and machine (no example database).
# Default-suite probes use a few hundred examples; the slow suite's (`-m slow`) at least 10,000.
settings.register_profile(
    "supsup", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("supsup")
FUZZ_EXAMPLES = 300
FUZZ_EXAMPLES_SLOW = 10_000


def pytest_report_header(config: pytest.Config) -> str:
    return f"supsup-fin test seed: SUPSUP_TEST_SEED={SEED}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def blobs(seed: int, n: int = 240, classes: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` well-separated Gaussian classes in ``dim`` dimensions: ``X [n, dim]`` float32, ``y [n]``."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 2.0
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def same_bits(a, b) -> bool:
    """Whether two masks (anything with ``.layers``) hold the same bits, layer by layer."""
    import torch

    return all(torch.equal(p, q) for p, q in zip(a.layers, b.layers))


def random_walk(n: int, seed: int = SEED, start: str = "2000-01-03", vol: float = 0.01) -> pd.DataFrame:
    """A close-only prices frame of ``n`` business days."""
    r = np.random.default_rng(seed).normal(0.0002, vol, n)
    idx = pd.bdate_range(start, periods=n, name="date")
    return pd.DataFrame({"close": 100 * np.exp(np.cumsum(r))}, index=idx)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def prefect_settings() -> Iterator[dict[str, str]]:
    """Prefect's defaults set as the CLI sets them before it starts a flow (the session's flows and the
    servers and workers they start see the same settings); undone at the end of the session.

    Session-wide and first: Prefect reads them once, when it is first imported, and no test module
    imports it at collection time.
    """
    from pipelines import LOGGING_SETTINGS, PREFECT_DEFAULTS, prefect_defaults

    with pytest.MonkeyPatch.context() as mp:
        for key in [*PREFECT_DEFAULTS, LOGGING_SETTINGS]:  # record each variable as it is, to be restored on exit
            if key in os.environ:
                mp.setenv(key, os.environ[key])
            else:
                mp.delenv(key, raising=False)
        yield prefect_defaults()


@pytest.fixture(scope="module")
def harness(prefect_settings: dict[str, str]) -> Iterator[None]:
    """Prefect's test harness: a temporary local API server for the module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own workspace and MLflow store, never the user's."""
    monkeypatch.setenv("SUPSUP_FIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def small_config_dict(**overrides: dict) -> dict:
    """Two synthetic markets and a small network: the whole pipeline in seconds."""
    tree = {
        "name": "small",
        "markets": [
            {"name": "syn_a", "source": "synthetic", "dataset": "easy", "seed": 1},
            {"name": "syn_b", "source": "synthetic", "dataset": "hard", "seed": 2},
        ],
        "regimes": {"n_states": 3, "n_restarts": 1, "regime_window": 100},
        "network": {"hidden": [32, 32], "seed": 0},
        "training": {"steps": 40, "batch_size": 64},
        "tracking": {"experiment": "small", "model_name": "small-model"},
        "runtime": {"threads": 1},
    }
    for k, v in overrides.items():
        tree[k] = {**tree.get(k, {}), **v} if isinstance(v, dict) else v
    return tree


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory: pytest.TempPathFactory):
    """The library pipeline (no Prefect, no MLflow) on the small config, built once."""
    from supsup_fin.config import config_from_dict
    from supsup_fin.data import load_prices
    from supsup_fin.forecaster.evaluate import evaluate
    from supsup_fin.forecaster.prepare import build_features, fit_regimes
    from supsup_fin.forecaster.mask_tasks import make_tasks
    from supsup_fin.forecaster.training import build_forecaster, train_tasks

    cfg = config_from_dict(small_config_dict())
    cache = tmp_path_factory.mktemp("cache")
    loaded = {m.name: load_prices(m, cfg.data, cache) for m in cfg.markets}
    fs = {n: build_features(n, lp.frame, cfg) for n, lp in loaded.items()}
    rf = {n: fit_regimes(n, lp.frame, cfg.regimes, cfg.segments) for n, lp in loaded.items()}
    tasks = make_tasks(fs, rf, cfg)
    net, bank = train_tasks(tasks, cfg)
    forecaster = build_forecaster(fs, rf, net, bank, cfg)
    prices = {n: lp.frame for n, lp in loaded.items()}
    ev = evaluate(forecaster, fs, rf, prices)
    return {"cfg": cfg, "loaded": loaded, "features": fs, "regimes": rf, "tasks": tasks,
            "net": net, "bank": bank, "forecaster": forecaster, "prices": prices, "evaluation": ev}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny nets: one torch thread is as fast, and immune to a busy machine's thread stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def session_processes(sid: int) -> list[str]:
    """The processes of session ``sid`` still running (a zombie has exited: only its reaping is left)."""
    left = []
    for p in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.info["cmdline"] or []))
        except (ProcessLookupError, PermissionError):
            continue
    return left
