"""The continual accuracy rows and scores: a window that brings a market no new training rows is
no task of the market's (end to end: tests/backtest/test_backtest_portfolio.py, a market whose
data ends early); an accuracy that is still missing is a clear error, never a score."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from supsup_fin.backtest.continual import continual_table, dense_accuracy_row
from supsup_fin.backtest.dense import DenseBank
from supsup_fin.errors import DataError


def _fit(market: str, X: np.ndarray, y: np.ndarray, new_rows: list[int]) -> SimpleNamespace:
    return SimpleNamespace(market=market, features=SimpleNamespace(X=X, y=y), new_rows=np.array(new_rows, dtype=np.int64))


def test_dense_rows_score_only_windows_with_new_rows() -> None:
    """A net whose logits on x = (1, 0) say class 1 and on (0, 1) class 2."""
    bank = DenseBank((2, 3), {"m/finetune": [torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])]})
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([1, 2, 2, 2])
    fits = [_fit("m", X, y, [0, 1]), _fit("m", X, y, []), _fit("m", X, y, [2, 3])]
    assert dense_accuracy_row(bank, "m/finetune", fits) == [1.0, 0.5]  # type: ignore[arg-type]


def test_a_task_without_a_score_is_still_a_clear_error() -> None:
    acc = {"syn": np.array([[0.5, np.nan], [np.nan, 0.6]])}
    with pytest.raises(DataError, match=r"expected finite accuracies on and below the diagonal, got nan at \[1, 0\]"):
        continual_table(["syn"], {"supsup_soft": acc})
    table = continual_table(["syn"], {"supsup_soft": {"syn": np.array([[0.5, np.nan], [0.4, 0.6]])}})
    assert table.loc[("syn", "supsup_soft")].to_dict() == pytest.approx(
        {"avg_accuracy": 0.5, "bwt": -0.1, "forgetting": 0.1, "tasks": 2}, abs=1e-15)
