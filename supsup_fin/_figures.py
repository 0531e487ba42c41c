"""Saving matplotlib figures (Agg canvas, no pyplot) without leaving half-written files."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from supsup_fin._atomic import atomic_file


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path``: a temporary file in the same folder, then renamed over it."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path
