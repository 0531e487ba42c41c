"""The notebooks: committed without outputs, parameterised, and executed end to end on the small profile.

Each notebook runs in a real Jupyter kernel through papermill. The kernel is this test process's own
interpreter: a kernelspec is installed into ``tmp_path`` with ``ipykernel.kernelspec.install`` (its
``argv[0]`` is ``sys.executable``) under a name no user or system kernelspec has, and ``JUPYTER_PATH``
puts that folder first. Relying on a ``python3`` kernelspec instead would run whichever one Jupyter finds
first (a user-level one can point at another interpreter without the package). The kernel inherits this
process's environment, so the workspace (``SUPSUP_FIN_HOME``, set per test by conftest) and Jupyter's own
runtime and IPython folders all stay inside ``tmp_path``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from supsup_fin.config import demo_config_path, load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL_NAME = "supsup-fin-notebook-tests"
ALL_NOTEBOOKS = sorted(NOTEBOOKS.glob("*.ipynb"))


# ---------------------------------------------------------------- committed form, every notebook


def test_notebooks_exist() -> None:
    names = {p.name for p in ALL_NOTEBOOKS}
    assert {"01_regimes.ipynb", "02_backtest.ipynb", "03_masks.ipynb"} <= names


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_stripped(path: Path) -> None:
    """No outputs and no execution counts in git: every code cell as if never run."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_first_code_cell_is_parameters(path: Path) -> None:
    """papermill injects its parameters after the cell tagged ``parameters``: the first code cell."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell is not tagged 'parameters'"


# ---------------------------------------------------------------- execution on the small profile


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for this interpreter, installed under ``tmp_path`` and found first."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path / "jupyter"
    install(kernel_name=KERNEL_NAME, display_name="supsup-fin tests", prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert spec.argv[0] == sys.executable
    return KERNEL_NAME


def run_notebook(name: str, tmp_path: Path, kernel: str, **parameters: object) -> dict:
    """Execute ``notebooks/<name>`` on the small profile in ``tmp_path/run``; return its JSON summary."""
    import papermill

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = tmp_path / "summary.json"
    papermill.execute_notebook(
        str(NOTEBOOKS / name), str(tmp_path / name), kernel_name=kernel, cwd=str(run_dir),
        parameters={"profile": "small", "summary_path": str(summary), **parameters},
        progress_bar=False, log_output=False, execution_timeout=300,
    )
    # the kernel used the test's workspace, not ./.supsup_fin
    assert (tmp_path / "home" / "cache").is_dir()
    assert not (run_dir / ".supsup_fin").exists()
    return json.loads(summary.read_text())


def small_markets() -> list[str]:
    """The markets the small profile picks: the demo config's first two."""
    return [m.name for m in load_config(demo_config_path()).markets][:2]


def test_regimes_notebook(tmp_path: Path, kernel: str) -> None:
    summary = run_notebook("01_regimes.ipynb", tmp_path, kernel)
    cfg = load_config(demo_config_path())
    lo, hi = (cfg.regimes.n_states,) * 2 if isinstance(cfg.regimes.n_states, int) else cfg.regimes.n_states
    assert sorted(summary) == sorted(small_markets())
    for market, s in summary.items():
        assert lo <= s["n_states"] <= hi, market
        assert len(s["names"]) == s["n_states"] == len(set(s["names"])), market
        if lo < hi:
            assert sorted(map(int, s["criterion"])) == list(range(lo, hi + 1)), market
        assert all(np.isfinite(v) for v in s["criterion"].values()), market
        assert s["stats_frequency_sum"] == pytest.approx(1.0, abs=1e-9), market
        assert s["filtered_row_sum_max_error"] < 1e-9, market
        # the filter is causal: dropping the rows after train leaves it unchanged, bit for bit; the
        # smoother looks ahead, so the last train rows' smoothed probabilities move
        assert s["filtered_prefix_max_abs_diff"] == 0.0, market
        assert 0.0 < s["smoothed_prefix_max_abs_diff"] <= 1.0, market


def test_masks_notebook(tmp_path: Path, kernel: str) -> None:
    summary = run_notebook("03_masks.ipynb", tmp_path, kernel)
    cfg = load_config(demo_config_path())
    assert summary["source"] == "trained here"
    assert summary["method"] == cfg.masks.method
    assert summary["markets"] == sorted(small_markets())
    names = summary["jaccard"]["names"]
    n = summary["n_masks"]
    assert n == len(names) == len(summary["densities"]) == len(set(names))
    regimes = {market: sum(x.startswith(f"{market}/") and not x.endswith("/ALL") for x in names)
               for market in small_markets()}
    for market, k in regimes.items():
        assert f"{market}/ALL" in names and k >= 2, (market, names)
    assert n == sum(k + 1 for k in regimes.values())
    (k_a, k_b) = regimes.values()
    assert summary["n_pairs_same_market"] == k_a * (k_a - 1) // 2 + k_b * (k_b - 1) // 2
    assert summary["n_pairs_cross_market"] == k_a * k_b
    # inputs: lookback x features; outputs: the classes (plus any superfluous units)
    assert summary["sizes"] == [cfg.features.lookback * len(cfg.features.names), *cfg.network.hidden,
                                cfg.features.n_classes + cfg.masks.superfluous] == [64, 256, 256, 3]

    n_layers = len(summary["sizes"]) - 1
    for task, layers in summary["densities"].items():
        assert len(layers) == n_layers, task
        assert all(0.0 < d <= 1.0 for d in layers), task
    if cfg.masks.method == "edge_popup" and not cfg.masks.erdos_renyi:
        for task, layers in summary["densities"].items():
            assert np.allclose(layers, cfg.masks.density, atol=1e-3), (task, layers)
            assert summary["overall_density"][task] == pytest.approx(cfg.masks.density, abs=1e-3)

    m = np.asarray(summary["jaccard"]["matrix"])
    assert m.shape == (n, n)
    assert (np.diag(m) == 1.0).all()  # a mask with itself
    off = m[~np.eye(n, dtype=bool)]
    assert ((off > 0) & (off < 1)).all()  # distinct masks of the same density overlap, never entirely
    assert (m == m.T).all()

    assert set(summary["per_layer"]) >= {"all layers"} and len(summary["per_layer"]) == n_layers + 1
    for layer, row in summary["per_layer"].items():
        for key in ("same_market", "cross_market"):
            assert 0.0 < row[key] < 1.0, (layer, key)
        if cfg.masks.method == "edge_popup" and not cfg.masks.erdos_renyi:
            # two independent masks of density d overlap by d / (2 - d) in expectation: 1/3 at d = 0.5
            d = cfg.masks.density
            assert row["chance"] == pytest.approx(d / (2 - d), abs=1e-3), layer
    assert summary["mean_jaccard_same_market"] == summary["per_layer"]["all layers"]["same_market"]
    assert summary["mean_jaccard_cross_market"] == summary["per_layer"]["all layers"]["cross_market"]


def test_backtest_notebook(tmp_path: Path, kernel: str) -> None:
    summary = run_notebook("02_backtest.ipynb", tmp_path, kernel)
    market = small_markets()[0]
    assert summary["markets"] == [market] and summary["windows"] == 2
    # every gate mode and every baseline a real market can have (no oracle without true parameters)
    assert set(summary["strategies"]) == {
        "buy_and_hold", "hmm_rule", "class_prior", "logistic", "dense", "dense_finetune", "dense_regime",
        "supsup_auto", "supsup_hard", "supsup_soft", "supsup_ensemble", "supsup_infer", "supsup_market"}
    rows = {(r["market"], r["strategy"]): r for r in summary["table"]}
    assert {m for m, _ in rows} == {market, "portfolio"}
    for (m, s), r in rows.items():
        assert r["days"] > 400 and r["max_drawdown"] <= 0, (m, s)
        # the class prior's constant forecast may size no position: no trade, no Sharpe (NaN)
        never_trades = s == "class_prior" and r["max_drawdown"] == 0
        assert never_trades or (r["sharpe"] is not None and np.isfinite(r["sharpe"])), (m, s)
    assert np.isfinite(rows[(market, "supsup_soft")]["log_loss"])
    continual = {r["strategy"]: r for r in summary["continual"]}
    assert continual["supsup_auto"]["bwt"] == 0.0
    assert summary["storage_bytes"]["supermasks (1 bit per weight)"] < summary["storage_bytes"]["dense per market and regime (fp32)"]
    assert all(v > 0 for v in summary["equity_final"].values())
    # one reliability panel per strategy that gives probabilities (the rules give none)
    ece = summary["reliability"]["ece"]
    assert summary["reliability"]["panels"] == len(ece)
    assert {"supsup_soft", "dense", "class_prior"} <= set(ece) and not {"buy_and_hold", "hmm_rule"} & set(ece)
    assert set(ece) <= set(summary["strategies"]) and all(0.0 <= v <= 1.0 for v in ece.values()), ece
