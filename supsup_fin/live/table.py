"""The forecasts table: one parquet file in the workspace, one row per (as_of, market, model_version).

Appending is idempotent (rows whose key is already stored are skipped, never duplicated or
overwritten), atomic (the new table is written beside the old one, then renamed over it) and
serialised across processes by a lock file beside the table (a scheduled forecast and a manual
one writing at once both land).
Nested fields (regime posterior, masks) are stored as JSON strings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from supsup_fin._atomic import atomic_file
from supsup_fin.workspace import Workspace

log = logging.getLogger(__name__)

KEY = ("as_of", "market", "model_version")
TABLE = "forecasts.parquet"


def table_path(workspace: Workspace) -> Path:
    """``<workspace>/forecasts/forecasts.parquet``."""
    return workspace.forecasts_dir / TABLE


def read_forecasts(workspace: Workspace) -> pd.DataFrame:
    """The whole table (empty frame when nothing was stored yet)."""
    path = table_path(workspace)
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=list(KEY))


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in row.items()}


def append_forecasts(workspace: Workspace, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Append ``rows`` (forecast dicts with at least the key columns); returns the rows added.

    A row whose (as_of, market, model_version) is already in the table is skipped.
    """
    if not rows:
        return pd.DataFrame(columns=list(KEY))
    missing = sorted({k for r in rows for k in KEY if k not in r})
    if missing:
        raise ValueError(f"forecast rows need the key columns {list(KEY)}; missing {missing}")
    new = pd.DataFrame([_flat(r) for r in rows])
    new["model_version"] = new["model_version"].astype("int64")
    return append_keyed(table_path(workspace), new, KEY, "forecasts table")


LOCK_TIMEOUT_S = 120.0
"""Seconds an append waits for another writer of the same table before it gives up."""


def append_keyed(path: Path, rows: pd.DataFrame, key: tuple[str, ...], what: str) -> pd.DataFrame:
    """Append ``rows`` to the parquet table at ``path``, skipping those whose ``key`` it holds.

    Idempotent (a stored key is never duplicated or overwritten), atomic (the new table is written
    beside the old one, then renamed over it) and serialised across processes by a lock file
    beside the table. Returns the rows added. The forecasts, scores and alerts tables are such tables.
    """
    new = rows.drop_duplicates(list(key), keep="first")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        old = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=list(rows.columns))
        if len(old):
            seen = set(old[list(key)].astype(new[list(key)].dtypes.to_dict()).itertuples(index=False, name=None))
            new = new[[k not in seen for k in new[list(key)].itertuples(index=False, name=None)]]
        if new.empty:
            log.info("%s: all %d rows already stored", what, len(rows))
            return new.reset_index(drop=True)
        table = pd.concat([old, new], ignore_index=True) if len(old) else new.reset_index(drop=True)
        with atomic_file(path) as tmp:
            table.to_parquet(tmp, index=False)
    log.info("%s: %d new rows (%d in all) in %s", what, len(new), len(table), path)
    return new.reset_index(drop=True)
