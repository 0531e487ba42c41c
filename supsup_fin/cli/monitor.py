"""``supsup-fin monitor``: score the champion's matured forecasts, run the checks, raise alerts."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pipelines import prefect_defaults
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
    progress_bar,
    table,
)
from supsup_fin.config import load_config

ALERT_EXIT = 3
"""Exit code of ``monitor --fail-on-alert`` when there is an alert."""

_COLUMNS = ["market", "version", "n", "log_loss", "prior_log_loss", "gap", "hit_rate", "ece", "position_return"]


def show_monitor(rep: dict[str, Any], window: int) -> None:
    """Print a monitoring pass: the rolling scores, what was scored, the alerts, the MLflow run."""
    rows = [s | {"version": f"v{s['model_version']}", "position_return": s["total_position_return"]}
            for s in rep["summary"]]
    out.print(table(f"Rolling scores of the last {window} matured forecasts per market and version (gap: log loss "
                    "minus the class prior's, below 0 beats knowing nothing; ECE: top-label calibration error; "
                    "position return: sum of the recommended positions' returns, before costs)", rows, _COLUMNS))
    skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in rep["skipped"].items() if n)
    out.print(f"{rep['model_name']} v{rep['model_version']} (champion): {rep['backfilled']} forecasts backfilled, "
              f"{rep['scored']} scored now, {rep['pending']} waiting for their horizon"
              + (f", skipped: {skipped}" if skipped else ""), highlight=False)
    checks = _check_rows(rep["checks"])
    if checks:
        out.print(table("Checks on each market's recent rows (drift: input features whose PSI passed their "
                        "training-calibrated level, and the HMM's recent log-likelihood against its training "
                        "range; novel regime: SupSup's rule and the HMM test, both needed)", checks,
                        ["market", "features_drifted", "hmm_log_likelihood", "novel_regime", "challenger"]))
    lines = [("new " if a["new"] else "open") + f" {a['kind']}: {a['message']}" for a in rep["alerts_open"]]
    lines += [f"new  {a['kind']}: {a['message']}" for a in rep["alerts"] if a["model_version"] != rep["model_version"]]
    out.print(f"alerts: {len(lines) or 'none'}", highlight=False)
    for line in lines:
        out.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)
    out.print(f"tracking: {rep['tracking_uri']}  run {rep['run_id']}  ({rep['elapsed_s']:.1f} s)", soft_wrap=True,
              highlight=False, markup=False)
    out.print(f"MLflow run: {rep['run_url']}  (served by `supsup-fin ui`)", soft_wrap=True, highlight=False,
              markup=False)


def _check_rows(checks: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per market from the drift and novel-regime check rows."""
    rows: dict[str, dict[str, Any]] = {}
    for r in checks.get("drift", []):
        row = rows.setdefault(r["market"], {"market": r["market"]})
        if r["check"] == "psi":
            n, hits = row.get("_n", 0) + 1, row.get("_hits", []) + ([r["name"]] if r["breach"] else [])
            row |= {"_n": n, "_hits": hits, "features_drifted": f"{len(hits)}/{n}" + (f": {', '.join(hits)}" if hits else "")}
        elif r["check"] == "hmm":
            row["hmm_log_likelihood"] = f"{r['value']:.3f} ({'below' if r['breach'] else 'above'} {r['threshold']:.3f})"
        else:
            row["features_drifted"] = r["detail"]
    for v in checks.get("novel_regime", []):
        row = rows.setdefault(v["market"], {"market": v["market"]})
        if v["entropy"] is None:
            row["novel_regime"] = "no training reference (retrain)"
        else:
            said = [k for k, on in (("rule", v["rule_novel"]), ("HMM", v["hmm_novel"])) if on]
            row["novel_regime"] = f"novel since {v['since']}" if v["novel"] else \
                f"no ({' and '.join(said) + ' only' if said else 'neither test fires'})"
        row["challenger"] = v.get("challenger", "")
    return [{k: val for k, val in r.items() if not k.startswith("_")} for r in rows.values()]


@app.command()
@fails_cleanly
def monitor(
    config: ConfigOpt,
    backfill: Annotated[int | None, typer.Option(
        "--backfill", min=0, help="First forecast and store the champion's forecasts on each market's last N dates, "
        "each from the prices up to its date only (default: the config's monitor.backfill).")] = None,
    fail_on_alert: Annotated[bool, typer.Option(
        "--fail-on-alert", help=f"Exit with code {ALERT_EXIT} (after printing everything) when the pass raised an "
        "alert or a check still fires for the champion.")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Score the champion's matured forecasts against what happened, run the checks, raise alerts.

    Forecasts in the workspace's forecasts table (stored by `forecast --store`, the forecast
    flow or --backfill) are scored once their horizon has passed; rolling scores per market and
    model version, the alerts and plots go to one MLflow run. Re-running adds nothing.
    Exit codes: 0 done, 1 error, 3 alerts with --fail-on-alert.
    """
    cfg = load_config(config)
    prefect_defaults()  # first: Prefect reads its settings when it is first imported
    from pipelines.monitor import run_monitor

    with progress_bar(not as_json and err.is_terminal):
        rep = run_monitor(cfg, home, backfill)
    print_json(rep) if as_json else show_monitor(rep, cfg.monitor.window)
    if fail_on_alert and (rep["alerts"] or rep["alerts_open"]):
        raise typer.Exit(ALERT_EXIT)
