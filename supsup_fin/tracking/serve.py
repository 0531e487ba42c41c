"""Serving the champion: MLflow's scoring app behind a request-size limit, run by uvicorn.

The champion is resolved, downloaded into the workspace and loaded once before the server starts
(a model whose files do not load fails then, naming the file, before the port opens); restart it
after a promotion. Each uvicorn worker loads the downloaded copy and serves MLflow's scoring app
(``mlflow.pyfunc.scoring_server``: ``POST /invocations``, ``GET /ping``, ``/health``,
``/version``) wrapped in :class:`BodyLimit`, which answers 413 to a body over
:data:`MAX_BODY_BYTES` before anything parses it, and :class:`PlainErrors`, which makes every
400 one short line saying what is wrong and where (MLflow's own embed the input and a traceback).

Payload: the model's logged input example (``serving_input_example.json``), i.e.
``{"dataframe_split": {"columns": ["market", "date", "close", ...], "data": [[...], ...]}}``;
at most :data:`~supsup_fin.tracking.model.MAX_ROWS_PER_MARKET` rows per market (400 beyond).
Answer: ``{"predictions": [{...one forecast per market...}]}``, each forecast's
``regime_posterior`` and ``masks`` a JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME

from supsup_fin._atomic import atomic_dir
from supsup_fin.config import TrackingConfig
from supsup_fin.errors import DataError, RegistryError, SupsupError
from supsup_fin.forecaster.persist import check_manifest
from supsup_fin.tracking.model import check_payload
from supsup_fin.tracking.registry import CHAMPION, MANIFEST_TAG, champion_version, download_forecaster
from supsup_fin.tracking.store import connect
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 2 * 1024 * 1024
"""Largest request body served: 2 MiB, about 50,000 rows of ``market, date, close`` (``dataframe_split``):
25 markets at :data:`~supsup_fin.tracking.model.MAX_ROWS_PER_MARKET` rows, or hundreds at a model's ``min_rows``."""
DRAIN_FACTOR = 32
"""An oversized body is read and dropped up to this many times :data:`MAX_BODY_BYTES`, then the
connection closes."""
MAX_REASON_CHARS = 200
"""Longest message of a 400 (longer ones are cut, ending with an ellipsis)."""
MODEL_DIR_ENV = "SUPSUP_FIN_SERVE_MODEL_DIR"
"""The downloaded model each worker loads (set by :func:`serve_command`)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request whose body exceeds ``max_bytes`` gets a 413 JSON error
    (``error_code``, ``message`` stating the limit) and never reaches ``app``.

    The body is read before ``app`` runs and handed to it whole; past the limit it is read and
    dropped (up to :data:`DRAIN_FACTOR` times the limit) so that a client still sending can read
    the 413. A client that declares an oversized ``Content-Length`` and waits for
    ``100-continue`` is answered before it sends anything. JSON nested too deeply for Python's
    parser gets a 400 here (the scoring server would answer 500).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"")
        declared = int(length) if length.isdigit() else 0
        if declared > self.max_bytes and headers.get(b"expect", b"").lower() == b"100-continue":
            await self._too_large(send, f"request body is {declared} bytes")
            return
        chunks, size, more = [], 0, True
        while more and size <= self.max_bytes * DRAIN_FACTOR:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            body, more = message.get("body", b""), message.get("more_body", False)
            size += len(body)
            if size <= self.max_bytes:
                chunks.append(body)
        if size > self.max_bytes:
            await self._too_large(send, f"request body {'exceeds' if more else 'is'} {size} bytes")
            return
        body, replayed = b"".join(chunks), False
        if _too_deep(body):
            await _answer(send, 400, "BAD_REQUEST", "request JSON nests too deeply to parse (a payload nests 3 levels)")
            return

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, what: str) -> None:
        await _answer(send, 413, "REQUEST_LIMIT_EXCEEDED", f"{what}; this server accepts at most {self.max_bytes} "
                      f"bytes ({self.max_bytes / 2**20:g} MiB) per request: send fewer rows")


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    """A JSON error in the scoring server's layout: ``{"error_code", "message"}``."""
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _too_deep(body: bytes) -> bool:
    """Whether ``body`` is JSON nested too deeply for Python's parser (the scoring server's: it
    raises ``RecursionError``, a 500). Parsed only when it holds over 500 brackets."""
    if body.count(b"[") + body.count(b"{") <= 500:
        return False
    try:
        json.loads(body)
    except RecursionError:
        return True
    except ValueError:  # not JSON: the scoring server says so
        return False
    return False


class PlainErrors:
    """ASGI middleware: every 400 from ``app`` becomes ``{"error_code", "message"}`` whose message
    is one line of at most :data:`MAX_REASON_CHARS` characters.

    The reason is what :func:`~supsup_fin.tracking.model.check_payload` finds wrong in the
    request's table (a missing column, a value that is not a number: named by market, column,
    row and date), or that the body is not JSON; else ``app``'s own message without the dump of
    the input MLflow puts before it. A traceback in the answer is logged here, not sent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request: list[bytes] = []
        answer: list[bytes] | None = None  # a 400's body, held back until it is whole

        async def recorded() -> Message:
            message = await receive()
            request.append(message.get("body", b""))
            return message

        async def rewritten(message: Message) -> None:
            nonlocal answer
            if message["type"] == "http.response.start" and message["status"] == 400:
                answer = []
            elif answer is None:
                await send(message)
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _answer(send, 400, *_plain_error(b"".join(answer), b"".join(request)))

        await self.app(scope, recorded, rewritten)


def _plain_error(answer: bytes, request: bytes) -> tuple[str, str]:
    """``(error_code, one-line message)`` of a 400 ``answer`` to ``request``."""
    try:
        error = json.loads(answer)
        code, message = str(error["error_code"]), str(error["message"])
    except (ValueError, TypeError, KeyError):
        error, code, message = {}, "BAD_REQUEST", answer.decode(errors="replace")
    if error.get("stack_trace"):
        log.warning("400 %s: %s\n%s", code, _mlflow_reason(message), error["stack_trace"])
    reason = _payload_problem(request) or _mlflow_reason(message)
    return code, reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def _payload_problem(body: bytes) -> str | None:
    """What is wrong with a request body the scoring server refused, when it is not JSON or its
    table fails :func:`~supsup_fin.tracking.model.check_payload`; None otherwise."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    try:
        decoded = json.loads(body)
    except ValueError as err:  # UnicodeDecodeError included
        return (f"request body is not JSON ({' '.join(str(err).split())}); expected "
                '{"dataframe_split": {"columns": [...], "data": [[...], ...]}}')
    except RecursionError:
        return None
    if not isinstance(decoded, dict):
        return None
    try:
        frame = pd.DataFrame(infer_and_parse_data(decoded))  # the table as sent: no types enforced yet
        check_payload(frame)
    except DataError as err:
        return str(err)
    except (MlflowException, ValueError, TypeError):  # not a table: MLflow's message says so
        return None
    return None


_MLFLOW_WRAPPERS = (
    re.compile(r"^Failed to predict data '.*'\. \nError: ", re.DOTALL),
    re.compile(r"^Failed to enforce schema of data '.*' with schema '.*'\. Error: ", re.DOTALL),
)


def _mlflow_reason(message: str) -> str:
    """MLflow's error message without the input it embeds: its first line, the data dumps and
    the note on the MLflow 2.0 protocol change left out."""
    from mlflow.pyfunc.scoring_server import SCORING_PROTOCOL_CHANGE_INFO

    for wrapper in _MLFLOW_WRAPPERS:
        message = wrapper.sub("", message, count=1)
    first = message.replace(SCORING_PROTOCOL_CHANGE_INFO, "").strip().split("\n")[0]
    return " ".join(first.split())


def scoring_app(model: mlflow.pyfunc.PyFuncModel, max_bytes: int = MAX_BODY_BYTES) -> ASGIApp:
    """MLflow's scoring app for ``model`` behind :class:`PlainErrors` and :class:`BodyLimit`."""
    from mlflow.pyfunc import scoring_server

    return BodyLimit(PlainErrors(scoring_server.init(model)), max_bytes)


def app_from_env() -> ASGIApp:
    """uvicorn's app factory in each worker: :func:`scoring_app` on the model in ``$SUPSUP_FIN_SERVE_MODEL_DIR``."""
    return scoring_app(mlflow.pyfunc.load_model(os.environ[MODEL_DIR_ENV]))


def load_served_model(model_dir: Path, label: str, manifest_sha256: str | None = None) -> mlflow.pyfunc.PyFuncModel:
    """Load the pyfunc model in ``model_dir`` (the download of ``label``, e.g. ``models:/name/3``),
    its forecaster's files checked against the manifest whose sha256 was recorded at registration.

    Raises :class:`RegistryError` with a one-line message naming the file (as ``label/<path>``)
    when the model does not load.
    """
    step = "MLmodel: "
    try:
        Model.load(model_dir / MLMODEL_FILE_NAME)
        step = ""
        check_manifest(model_dir / "artifacts" / "forecaster", manifest_sha256)
        return mlflow.pyfunc.load_model(str(model_dir))
    except (SupsupError, MlflowException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as err:
        text = " ".join((err.message if isinstance(err, MlflowException) else str(err)).split())
        raise RegistryError(f"{label} cannot be served: {step}{text.replace(str(model_dir), label)}") from None


def serve_command(
    tracking: TrackingConfig, workspace: Workspace, port: int, workers: int = 1, host: str = LOOPBACK,
) -> tuple[list[str], dict[str, str], int]:
    """``(argv, env, champion version)`` of a uvicorn server for the champion on ``host:port``.

    Downloads the champion to ``<workspace>/serving/<model>-v<version>`` (replaced whole, and only
    by a copy that loads: :func:`load_served_model`), which the server's workers load. Raises
    :class:`RegistryError` when there is no champion or it does not load.
    """
    if workers < 1:
        raise RegistryError(f"--workers expected an int >= 1, got {workers}")
    client = connect(tracking, workspace)
    name = tracking.model_name
    version = champion_version(client, name)
    if version is None:
        raise RegistryError(f"registered model {name!r} has no '{CHAMPION}' alias; "
                            "run `supsup-fin retrain` (or `supsup-fin promote`) first")
    manifest = client.get_model_version(name, str(version)).tags.get(MANIFEST_TAG)
    served = workspace.root / "serving" / f"{name}-v{version}"
    with atomic_dir(served, marker=MLMODEL_FILE_NAME, what="served model") as tmp:
        download_forecaster(name, str(version), str(tmp))  # the whole model version, into tmp
        load_served_model(tmp, f"models:/{name}/{version}", manifest)
    env = {**os.environ, MODEL_DIR_ENV: str(served)}
    argv = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:app_from_env", "--host", host,
            "--port", str(port), "--workers", str(workers)]
    return argv, env, version


def serving_example(tracking: TrackingConfig, workspace: Workspace) -> dict[str, Any]:
    """The champion's logged input example in the server's JSON form."""
    connect(tracking, workspace)
    uri = f"models:/{tracking.model_name}@{CHAMPION}/serving_input_example.json"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except MlflowException as err:
            raise RegistryError(f"cannot read {uri}: {err.message.splitlines()[0]}") from None
        return json.loads(Path(path).read_text())
