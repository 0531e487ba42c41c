"""Deployment commands: ``models``, ``promote``, ``rollback``, ``serve``, ``schedule``."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
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
    setup_logging,
    table,
)
from supsup_fin.config import Config, load_config
from supsup_fin.workspace import Workspace

PortOpt = Annotated[int | None, typer.Option("--port", "-p", help="Port on 127.0.0.1 (default: from the config's schedule section).")]


def _client(config: Path, home: Path | None) -> tuple[Config, Any]:
    """The config and an MLflow client on its store (MLflow imported lazily: a fast CLI start)."""
    from supsup_fin.tracking import connect

    cfg = load_config(config)
    return cfg, connect(cfg.tracking, Workspace.resolve(home))


@app.command()
@fails_cleanly
def models(config: ConfigOpt, as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """List the registered versions with aliases, validation scores and data ranges."""
    from supsup_fin.tracking.versions import list_versions

    setup_logging(verbose)
    cfg, client = _client(config, home)
    rows = list_versions(client, cfg.tracking.model_name)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        r["aliases"] = ",".join(r["aliases"])
        r["data"] = f"{r['data_start']}..{r['data_end']}" if r["data_start"] else ""
        r["state"] = "pruned" if r["pruned"] else ""
    out.print(table(f"Registered model {cfg.tracking.model_name} (valid {rows[0]['metric'] or ''})", rows,
                    ["version", "aliases", "valid_score", "baseline", "promoted", "data", "markets",
                     "carried_masks", "created", "state"]))


def _show_move(result: dict) -> None:
    out.print(f"{result['model']}: champion v{result['previous_champion']} -> v{result['champion']} "
              f"(recorded in run {result['run_id']})")


@app.command()
@fails_cleanly
def promote(
    config: ConfigOpt, version: Annotated[int, typer.Option("--version", help="The version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the move.")] = "promoted by hand",
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Move the champion alias to --version by hand (recorded as version tags and in a run)."""
    from supsup_fin.tracking import versions

    setup_logging(verbose)
    cfg, client = _client(config, home)
    result = versions.promote(client, cfg.tracking.model_name, version, reason)
    print_json(result) if as_json else _show_move(result)


@app.command()
@fails_cleanly
def rollback(
    config: ConfigOpt, reason: Annotated[str, typer.Option("--reason", help="Recorded with the move.")] = "rolled back by hand",
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Give the champion alias back to the previous champion (recorded like promote)."""
    from supsup_fin.tracking import versions

    setup_logging(verbose)
    cfg, client = _client(config, home)
    result = versions.rollback(client, cfg.tracking.model_name, reason)
    print_json(result) if as_json else _show_move(result)


@app.command()
@fails_cleanly
def serve(
    config: ConfigOpt, port: PortOpt = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="uvicorn worker processes (each loads the model).")] = 1,
    host: Annotated[str, typer.Option("--host", help="Interface to bind. The server has no authentication and no TLS: "
                                      "bind anything but 127.0.0.1 only behind a proxy that adds them.")] = "127.0.0.1",
    example: Annotated[bool, typer.Option("--example", help="Print the JSON payload example and exit.")] = False,
    as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False,
) -> None:
    """Serve the champion on 127.0.0.1, or --host (POST /invocations; GET /ping, /health, /version).

    The champion is downloaded and loaded once first: a model that does not load stops here,
    naming the file. Requests over 2 MiB get a 413, payloads over 2,000 rows of a market a 400.
    """
    from supsup_fin.tracking.serve import serve_command, serving_example

    setup_logging(verbose)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr keeps one line per event
    cfg, ws = load_config(config), Workspace.resolve(home)
    if example:
        print_json(serving_example(cfg.tracking, ws))
        return
    port = port or cfg.schedule.serve_port
    argv, env, version = serve_command(cfg.tracking, ws, port, workers, host)
    url = f"http://{host}:{port}/invocations"
    if as_json:
        print_json({"url": url, "model": cfg.tracking.model_name, "version": version, "argv": argv})
    else:
        err.print(f"serving {cfg.tracking.model_name} v{version} (champion) at {url} with {workers} worker(s); "
                  f"payload example: supsup-fin serve --config {config} --example; Ctrl-C stops")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)  # the server replaces this process: Ctrl-C and signals reach it directly


@app.command()
@fails_cleanly
def schedule(
    config: ConfigOpt, port: PortOpt = None, as_json: JsonOpt = False, home: HomeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the retrain and forecast deployments on a real Prefect server (crons from the config).

    Starts ``prefect server`` on 127.0.0.1 unless PREFECT_API_URL names one; Ctrl-C stops both.
    """
    setup_logging(verbose)
    cfg, ws = load_config(config), Workspace.resolve(home)
    prefect_defaults()  # first: Prefect reads its settings when it is first imported
    from pipelines.schedule import deployments, prefect_server, serve_deployments

    def _stop(signum: int, frame: Any) -> None:  # SIGTERM: the same clean stop as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with prefect_server(ws, port or cfg.schedule.prefect_port) as api_url:
        ui = api_url.removesuffix("/api")
        info = {"api_url": api_url, "ui": ui, "timezone": cfg.schedule.timezone,
                "deployments": [{"name": f"{d.flow_name}/{d.name}", "cron": d.schedules[0].schedule.cron}
                                for d in deployments(cfg, ws)]}
        if as_json:  # one line: readable by a supervising process while this keeps running
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
        else:
            out.print(table(f"Prefect UI: {ui}  (crons in {cfg.schedule.timezone}; Ctrl-C stops)",
                            info["deployments"], ["name", "cron"]))
        try:
            serve_deployments(cfg, ws, api_url)
        except KeyboardInterrupt:
            err.print("stopping: deployments paused, Prefect server shutting down")
