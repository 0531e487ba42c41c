"""Where supsup-fin keeps its state: the workspace directory.

``$SUPSUP_FIN_HOME`` or ``./.supsup_fin``: the MLflow sqlite store and artifacts, the price
cache and the forecasts table live under it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace; directories are created on first use."""

    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> Workspace:
        """``root``, else ``$SUPSUP_FIN_HOME``, else ``./.supsup_fin``."""
        chosen = root or os.environ.get("SUPSUP_FIN_HOME") or ".supsup_fin"
        return cls(Path(chosen).expanduser().resolve())

    def _dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def cache_dir(self) -> Path:
        return self._dir("cache")

    @property
    def artifacts_dir(self) -> Path:
        return self._dir("mlartifacts")

    @property
    def forecasts_dir(self) -> Path:
        return self._dir("forecasts")

    @property
    def mlflow_db(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / "mlflow.db"
