"""Reliability diagrams of the backtest, against calibration tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from supsup_fin._figures import save_png
from supsup_fin.backtest.metrics import calibration_table, expected_calibration_error
from supsup_fin.backtest.plots import calibration_ece, reliability_figure
from supsup_fin.errors import DataError

CLASSES = ["down", "up"]


def _binary(rng: np.random.Generator, n: int = 20_000) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``up`` drawn with probability ``p`` in (0.5, 0.75): calibrated, an over-confident copy
    (``2p - 0.5``, same labels) and knowing nothing (the base rate every day)."""
    p = rng.uniform(0.5, 0.75, size=n)
    p = p[p > 0.5]
    y = (rng.random(len(p)) < p).astype(np.int64)
    over = 2.0 * p - 0.5
    prior = np.full_like(p, y.mean())
    probs = {name: np.column_stack([1.0 - q, q]) for name, q in
             (("calibrated", p), ("over_confident", over), ("class_prior", prior))}
    return probs, y


def _table(probs: dict[str, np.ndarray], y: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The shape of ``BacktestResult.calibration``: one calibration table per strategy, stacked."""
    return pd.concat([calibration_table(p, y, classes=classes).assign(strategy=s) for s, p in probs.items()],
                     ignore_index=True)


def _classwise_ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Reference, from the raw probabilities: the binned one-vs-rest gap, averaged over the classes."""
    gaps = []
    for c in range(probs.shape[1]):
        b = np.minimum((probs[:, c] * bins).astype(np.int64), bins - 1)
        hit = (y == c).astype(np.float64)
        gaps.append(sum(abs(hit[b == k].sum() - probs[b == k, c].sum()) for k in np.unique(b)) / len(y))
    return float(np.mean(gaps))


def _points(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each class's line in a panel, read back from the Line2D data (the diagonal left out)."""
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.lines if not line.get_label().startswith("_")}


def test_reliability_figure_draws_the_table(rng: np.random.Generator, tmp_path) -> None:
    probs, y = _binary(rng)
    table = _table(probs, y, CLASSES)
    fig = reliability_figure(table)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(probs)
    ece = calibration_ece(table)
    for ax, (name, p) in zip(fig.axes, probs.items()):
        assert ax.get_title().startswith(name)
        # every point is the table's (mean_predicted, observed), class by class
        drawn = _points(ax)
        assert set(drawn) == set(CLASSES)
        for cls, (x, obs) in drawn.items():
            rows = table[(table.strategy == name) & (table["class"] == cls)].sort_values("mean_predicted")
            np.testing.assert_array_equal(x, rows["mean_predicted"].to_numpy())
            np.testing.assert_array_equal(obs, rows["observed"].to_numpy())
            dots = [c for c in ax.collections if isinstance(c, PathCollection)
                    and np.array_equal(c.get_offsets(), np.column_stack([x, obs]))]
            assert len(dots) == 1, cls
            sizes = dots[0].get_sizes()  # marker area grows with the bin's count
            assert np.array_equal(np.argsort(sizes, kind="stable"),
                                  np.argsort(rows["count"].to_numpy(), kind="stable"))
        # the diagonal of perfect calibration, dashed
        diagonal = [line for line in ax.lines if line.get_label().startswith("_")]
        assert len(diagonal) == 1 and diagonal[0].get_linestyle() == "--"
        np.testing.assert_array_equal(diagonal[0].get_xydata(), [[0, 0], [1, 1]])
        # on two classes whose predicted class is always above 1/2, the classwise ECE is the top-label one
        assert ece[name] == pytest.approx(expected_calibration_error(p, y), abs=1e-9)
        assert f"ECE {ece[name]:.3f}" in ax.get_title()
    assert ece["calibrated"] < 0.02 < 0.1 < ece["over_confident"]
    # the over-confident copy's "up" points lie below the diagonal (it happens less than predicted)
    x, obs = _points(fig.axes[1])["up"]
    assert (obs < x).all()
    out = save_png(fig, tmp_path / "sub" / "reliability.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ece_of_three_classes_is_the_classwise_gap(rng: np.random.Generator) -> None:
    z = rng.normal(size=(5_000, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1)
    sharp = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)
    table = _table({"soft": p, "sharp": sharp}, y, ["a", "b", "c"])
    ece = calibration_ece(table)
    assert list(ece.index) == ["soft", "sharp"]
    assert ece["soft"] == pytest.approx(_classwise_ece(p, y), abs=1e-9)
    assert ece["sharp"] == pytest.approx(_classwise_ece(sharp, y), abs=1e-9)
    fig = reliability_figure(table, strategies=["sharp"])
    assert len(fig.axes) == 1 and fig.axes[0].get_title().startswith("sharp")
    assert set(_points(fig.axes[0])) == {"a", "b", "c"}


def test_grid_keeps_one_axes_per_strategy_and_an_ece_column_is_taken_as_given() -> None:
    base = pd.DataFrame({"class": ["up"], "bin": [5], "p_lo": [0.5], "p_hi": [0.6], "mean_predicted": [0.55],
                         "observed": [0.5], "count": [10]})
    names = [f"s{i}" for i in range(6)]
    table = pd.concat([base.assign(strategy=s, ece=0.1 * i) for i, s in enumerate(names)], ignore_index=True)
    fig = reliability_figure(table)
    assert len(fig.axes) == 6  # a 2 x 4 grid, its two empty cells removed
    assert [ax.get_title() for ax in fig.axes] == [f"s{i}  (ECE {0.1 * i:.3f})" for i in range(6)]
    assert calibration_ece(table).tolist() == pytest.approx([0.1 * i for i in range(6)], abs=1e-12)


def test_bad_tables_and_names_are_refused() -> None:
    with pytest.raises(DataError, match="missing"):
        reliability_figure(pd.DataFrame({"strategy": ["a"], "mean_predicted": [0.5]}))
    with pytest.raises(DataError, match="empty"):
        reliability_figure(pd.DataFrame(columns=["strategy", "class", "mean_predicted", "observed", "count"]))
    table = pd.DataFrame({"strategy": ["a"], "class": [0], "mean_predicted": [0.5], "observed": [0.5], "count": [3]})
    with pytest.raises(DataError, match="nope"):
        reliability_figure(table, strategies=["nope"])
