"""Stopping a server started in its own session, with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def stop_process_group(proc: subprocess.Popen, signals: Sequence[tuple[int, float]] = ((signal.SIGTERM, 10.0),)) -> None:
    """Stop the process group ``proc`` leads (started with ``start_new_session``).

    Each ``(signal, wait_s)`` in turn goes to the whole group until ``proc`` exits within its wait;
    then whatever is left of the group (a worker its leader left behind, or all of it) is killed.
    A second Ctrl-C during a wait cuts it short and still kills the group.
    """
    try:
        for sig, wait_s in signals:
            if proc.poll() is not None:
                break
            _signal_group(proc, sig)
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # nothing of the group is left
        pass
