"""Data and regime commands: ``ingest`` and ``regimes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from supsup_fin.cli.common import (
    ConfigOpt,
    HomeOpt,
    JsonOpt,
    VerboseOpt,
    app,
    err,
    fails_cleanly,
    out,
    print_json,
    table,
)
from supsup_fin.config import Config, load_config
from supsup_fin.errors import DataError
from supsup_fin.workspace import Workspace

MarketOpt = Annotated[list[str] | None, typer.Option("--market", "-m", help="Only this market (repeatable).")]

_CHECKS = ("missing", "high_low", "jump", "stale", "gap")


def _markets(cfg: Config, names: list[str] | None) -> list[Any]:
    return [cfg.market(n) for n in names] if names else list(cfg.markets)


def ingest_markets(cfg: Config, home: Path | None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Load every (or the named) market and summarise its health; a failing market gets an ``error``.

    ``ok``: the market loaded and no finding is left unhandled (each was repaired or warned about
    under its policy; a check set to ``error`` fails the load instead).
    """
    from supsup_fin.data import load_prices

    cache = Workspace.resolve(home).cache_dir
    rows = []
    for m in _markets(cfg, names):
        row: dict[str, Any] = {"market": m.name, "source": m.source}
        try:
            lp = load_prices(m, cfg.data, cache)
        except DataError as e:
            rows.append({**row, "ok": False, "error": str(e), "findings": []})
            continue
        rep = lp.health
        row |= {"source": lp.source, "rows_in": rep.rows_in, "rows_out": rep.rows_out,
                "first": lp.frame.index[0].strftime("%Y-%m-%d"), "as_of": lp.as_of.strftime("%Y-%m-%d"),
                "stale_days": lp.stale_days, "columns": list(lp.frame.columns), "data_hash": lp.data_hash[:12],
                "ok": True, "error": None, "findings": rep.to_records()}
        for check in _CHECKS:
            found = rep.find(check)
            row[check] = ", ".join(f"{f.count} {f.action}" for f in found) if found else "-"
        rows.append(row)
    return rows


@app.command()
@fails_cleanly
def ingest(config: ConfigOpt, market: MarketOpt = None, as_json: JsonOpt = False, home: HomeOpt = None,
           verbose: VerboseOpt = False) -> None:
    """Load each market's prices (Yahoo cache updated), run the health checks, print a health table."""
    rows = ingest_markets(load_config(config), home, market)
    failed = [r for r in rows if r["error"]]
    if as_json:
        print_json(rows)
    else:
        out.print(table("Data health (per check: offending rows and the policy applied; ok: loaded, every "
                        "finding handled by its policy)", rows,
                        ["market", "source", "rows_in", "rows_out", "first", "as_of", "stale_days",
                         *_CHECKS, "ok"]))
        details = [{"market": f["market"], "check": f["check"], "count": f["count"], "action": f["action"],
                    "first_date": f["first_date"], "detail": f["detail"]} for r in rows for f in r["findings"]]
        if details:
            out.print(table("Findings", details, ["market", "check", "count", "action", "first_date", "detail"]))
    if failed:
        for r in failed:
            err.print(f"[red]error:[/red] {r['error']}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _bic_text(report: dict[str, Any]) -> str:
    """``BIC per state count (<selection>, lower is better): 2:..., 3:...; chosen 3``, or the one count's BIC."""
    bic = ", ".join(f"{k}:{'unusable' if v is None else f'{v:.1f}'}" for k, v in report["bic"].items())
    if report["selection"] is None:
        return f"BIC {bic} (n_states fixed)"
    return f"BIC per state count ({report['selection']}, lower is better): {bic}; chosen {report['n_states']}"


def regime_reports(cfg: Config, home: Path | None, names: list[str] | None = None,
                   plot_dir: Path | None = None) -> list[dict[str, Any]]:
    """Fit each market's HMM on ``train`` (as the retrain flow does), its stats table and plot."""
    from supsup_fin.data import load_prices
    from supsup_fin.forecaster.prepare import fit_regimes, train_slice
    from supsup_fin.regimes import plot_regimes

    ws = Workspace.resolve(home)
    folder = Path(plot_dir) if plot_dir else ws.root / "regimes"
    reports = []
    for m in _markets(cfg, names):
        lp = load_prices(m, cfg.data, ws.cache_dir)
        rf = fit_regimes(m.name, lp.frame, cfg.regimes, cfg.segments)
        model = rf.model
        train = train_slice(lp.frame, cfg.segments)
        stats = model.regime_stats(train).reset_index()
        path = plot_regimes(lp.frame, model, folder / f"{m.name}.png",
                            title=f"{m.name}: {model.n_states_} regimes fitted on train to {train.index[-1].date()}")
        reports.append({
            "market": m.name, "n_states": model.n_states_, "names": list(model.names_),
            "selection": cfg.regimes.selection if not isinstance(cfg.regimes.n_states, int) else None,
            "bic": {str(k): (v if np.isfinite(v) else None) for k, v in model.bic_.items()},
            "converged": model.converged_,
            "n_iter": model.n_iter_, "covariance_type": model.covariance_type_, "fallback": model.fallback_,
            "train_rows": model.n_train_rows_, "expected_durations": model.expected_durations_.tolist(),
            "stats": stats.to_dict("records"), "plot": str(path),
        })
    return reports


@app.command()
@fails_cleanly
def regimes(config: ConfigOpt, market: MarketOpt = None,
            plot_dir: Annotated[Path | None, typer.Option("--plot-dir", help="Where to write <market>.png "
                                                          "(default <home>/regimes).")] = None,
            as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """Fit each market's regime HMM on train, print its per-regime statistics and write its plot."""
    reports = regime_reports(load_config(config), home, market, plot_dir)
    if as_json:
        print_json(reports)
        return
    for r in reports:
        out.print(table(f"{r['market']}: {r['n_states']} regimes; {_bic_text(r)}; converged={r['converged']}, "
                        f"{r['n_iter']} EM iterations", r["stats"],
                        ["regime", "n_rows", "frequency", "mean_log_return", "ann_volatility",
                         "mean_duration_days", "expected_duration_days"]))
        if r["fallback"]:
            out.print(f"fallback: {r['fallback']}")
        out.print(f"plot: {r['plot']}")


__all__ = ["ingest_markets", "regime_reports"]
