"""Shared fixtures. Seeds come from SUPSUP_TEST_SEED (default 0) and are printed in the header."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

SEED = int(os.environ.get("SUPSUP_TEST_SEED", "0"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"supsup-fin test seed: SUPSUP_TEST_SEED={SEED}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def random_walk(n: int, seed: int = SEED, start: str = "2000-01-03", vol: float = 0.01) -> pd.DataFrame:
    """A close-only prices frame of ``n`` business days."""
    r = np.random.default_rng(seed).normal(0.0002, vol, n)
    idx = pd.bdate_range(start, periods=n, name="date")
    return pd.DataFrame({"close": 100 * np.exp(np.cumsum(r))}, index=idx)


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own workspace and MLflow store, never the user's."""
    monkeypatch.setenv("SUPSUP_FIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
