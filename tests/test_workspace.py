"""The workspace's named locks: a second holder waits, then is refused naming the first."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from supsup_fin.workspace import Workspace, WorkspaceBusy

HOLD = """
import sys, time
from supsup_fin.workspace import Workspace
with Workspace.resolve(sys.argv[1]).lock("retrain", timeout=5, what="retrain held"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_held_lock_refuses_a_second_holder_naming_the_first_then_frees(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ws = Workspace.resolve(tmp_path)
        with pytest.raises(WorkspaceBusy, match=rf"its retrain lock is held by pid {holder.pid} on .* \(retrain held\); "
                                                r"waited 0 s"):
            with ws.lock("retrain", timeout=0.2):
                pass
        start = time.monotonic()
        with ws.lock("retrain", timeout=30, what="second"):  # waits for the holder to finish
            # the holder released the lock on leaving its block; its interpreter may still be exiting
            assert holder.wait(timeout=30) == 0 and (tmp_path / "retrain.lock.json").exists()
        assert time.monotonic() - start > 0.5 and not (tmp_path / "retrain.lock.json").exists()
    finally:
        holder.kill()
        holder.communicate()
