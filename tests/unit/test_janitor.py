"""The janitor removes what a process leaves, however the process ends."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SRC

SCRIPT = """
import os, sys
from apt_rehearse.sandbox import janitor
janitor.after_death(lambda: os.rmdir(sys.argv[1]))
os.mkdir(sys.argv[1])
print("ready", flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_janitor_cleans_up(ending: str) -> None:
    # Not tmp_path: nothing of ours is left in /tmp.
    with tempfile.TemporaryDirectory(prefix="rh-janitor-", dir="/var/tmp") as scratch:
        _check(Path(scratch) / "left-behind", ending)


def _check(target: Path, ending: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(target), ending],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        timeout=30,
        check=False,
    )
    assert proc.stdout.strip() == "ready", proc.stderr
    deadline = time.monotonic() + 10
    while target.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not target.exists()
