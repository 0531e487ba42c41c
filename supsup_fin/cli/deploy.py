"""Deployment commands: ``models``, ``promote``, ``rollback``, ``serve``, ``schedule``, ``ui``."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
    table,
)
from supsup_fin.config import Config, demo_config_path, load_config
from supsup_fin.workspace import Workspace

PortOpt = Annotated[int | None, typer.Option("--port", "-p", help="Port on 127.0.0.1 (default: from the config's schedule section).")]
UIPortOpt = Annotated[int | None, typer.Option("--port", "-p", min=1, max=65535,
                                              help="Port on 127.0.0.1 (default: 5000 if free, else any free one).")]
UIConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Config naming the tracking store "
                                                  "(default: the demo config).")]


def _client(config: Path, home: Path | None) -> tuple[Config, Any]:
    """The config and an MLflow client on its store (MLflow imported lazily: a fast CLI start)."""
    from supsup_fin.tracking import connect

    cfg = load_config(config)
    return cfg, connect(cfg.tracking, Workspace.resolve(home))


@app.command()
@fails_cleanly
def models(config: ConfigOpt, as_json: JsonOpt = False, home: HomeOpt = None, verbose: VerboseOpt = False) -> None:
    """List the registered versions: aliases, what the retrain decided, state, scores and data ranges.

    ``decision`` is the champion gate's at registration (promoted, kept champion vN, below the
    class prior, blocked: why); ``aliases`` say where the champion is now (``promote`` and
    ``rollback`` move it); ``state`` is ok, pruned (model files deleted by retention),
    incomplete (its retrain stopped before deciding) or prune failed.
    """
    from supsup_fin.tracking.versions import list_versions

    cfg, client = _client(config, home)
    rows = list_versions(client, cfg.tracking.model_name)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        r["aliases"] = ",".join(r["aliases"])
        r["data"] = f"{r['data_start']}..{r['data_end']}" if r["data_start"] else ""
    out.print(table(f"Registered model {cfg.tracking.model_name} (valid {rows[0]['metric'] or ''})", rows,
                    ["version", "aliases", "decision", "state", "valid_score", "baseline", "data", "markets",
                     "carried_masks", "created"]))


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

    Starts ``prefect server`` on 127.0.0.1 unless PREFECT_API_URL names one, and prints its UI and
    the PREFECT_API_URL=... the prefect CLI needs to reach it; Ctrl-C stops both.
    """
    cfg, ws = load_config(config), Workspace.resolve(home)
    prefect_defaults()  # first: Prefect reads its settings when it is first imported
    from pipelines.schedule import deployments, prefect_server, serve_deployments

    with _sigterm_as_ctrl_c(), prefect_server(ws, port or cfg.schedule.prefect_port) as api_url:
        ui = api_url.removesuffix("/api")
        info = {"api_url": api_url, "ui": ui, "env": {"PREFECT_API_URL": api_url}, "timezone": cfg.schedule.timezone,
                "deployments": [{"name": f"{d.flow_name}/{d.name}", "cron": d.schedules[0].schedule.cron}
                                for d in deployments(cfg, ws)]}
        if as_json:
            print_json(info, one_line=True)
        else:
            out.print(table(f"Prefect UI: {ui}  prefect CLI: PREFECT_API_URL={api_url}  "
                            f"(crons in {cfg.schedule.timezone}; Ctrl-C stops)", info["deployments"], ["name", "cron"]))
        try:
            serve_deployments(cfg, ws, api_url)
        except KeyboardInterrupt:
            err.print("stopping: deployments paused, Prefect server shutting down")


@app.command()
@fails_cleanly
def ui(
    config: UIConfigOpt = None, port: UIPortOpt = None, as_json: JsonOpt = False, home: HomeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Open the MLflow UI on the workspace's tracking store at 127.0.0.1 (Ctrl-C stops it).

    Runs MLflow's server on the store the other commands write to (runs, registered models and
    their artifacts) and prints its URL once it answers; --json prints one line with url,
    tracking_uri and pid. The server's output goes to <home>/logs/mlflow-ui.log (stderr with -v).
    """
    from supsup_fin.tracking.ui import experiment_url, mlflow_ui

    cfg, ws = load_config(config or demo_config_path()), Workspace.resolve(home)
    log_file = None if verbose else ws.log_file.with_name("mlflow-ui.log")
    try:
        with _sigterm_as_ctrl_c(), mlflow_ui(cfg.tracking, ws, port, log_file) as running:
            if as_json:
                print_json({"url": running.url, "tracking_uri": running.tracking_uri, "pid": running.pid}, one_line=True)
            else:
                out.print(f"MLflow UI: {running.url}  experiment {cfg.tracking.experiment!r}: "
                          f"{experiment_url(running.url, running.experiment_id)}  store: {running.tracking_uri}"
                          f"{'  (Ctrl-C stops)' if running.pid else ''}", soft_wrap=True)
            if running.pid is None:  # the tracking store is a server: that is its UI
                return
            running.wait()
    except KeyboardInterrupt:
        pass
    err.print("MLflow UI stopped")


def ui_hint(home: Path | None = None, config: Path | None = None) -> str:
    """The command line that opens the MLflow UI on a workspace (``--config`` left out for the demo's)."""
    args = [*(["--config", str(config)] if config else []), *(["--home", str(home)] if home else [])]
    return f"MLflow UI: supsup-fin ui {' '.join(args)}".rstrip()


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """In the block, SIGTERM stops the command as Ctrl-C does (a ``KeyboardInterrupt``: the servers
    it started are stopped on the way out)."""

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
