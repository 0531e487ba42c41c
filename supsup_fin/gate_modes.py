"""The regime gate's modes, named once for the forecaster and the config (no dependencies).

``hard``, ``soft``, ``ensemble``, ``infer`` and ``market``: see
:mod:`supsup_fin.forecaster.gating` for what each computes. ``auto`` is not a mode of its own: it
names, per market, the mode chosen on held-out rows (:mod:`supsup_fin.forecaster.choose`).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["AUTO", "GATE_MODES", "GateChoice", "GateMode", "check_gate_mode"]

GateMode = Literal["hard", "soft", "ensemble", "infer", "market"]
GATE_MODES: tuple[str, ...] = get_args(GateMode)
AUTO = "auto"
GateChoice = Literal["hard", "soft", "ensemble", "infer", "market", "auto"]
"""A mode, or ``auto`` (each market's mode chosen on its held-out rows)."""


def check_gate_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`GATE_MODES`; ``ValueError`` listing them otherwise."""
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; valid: {list(GATE_MODES)}")
    return mode
