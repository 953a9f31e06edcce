"""The forked helper that reads the host's facts beside the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from apt_rehearse.model.errors import RehearsalError
from apt_rehearse.sandbox.forked import ForkedCall

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_result_comes_back_and_the_child_is_reaped() -> None:
    call = ForkedCall(lambda n: {"doubled": n * 2, "pid": os.getpid()}, 21)
    pid = call.pid
    answer = call.result()
    assert answer["doubled"] == 42 and answer["pid"] == pid != os.getpid()
    assert call.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by result()
    call.cancel()  # harmless afterwards


def test_an_exception_is_one_rehearsal_error() -> None:
    with pytest.raises(RehearsalError, match="ZeroDivisionError"):
        ForkedCall(lambda: 1 / 0).result()


def test_cancel_kills_and_reaps() -> None:
    call = ForkedCall(time.sleep, 60)
    pid = call.pid
    started = time.monotonic()
    call.cancel()
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_child_dies_with_its_parent_and_skips_atexit(tmp_path: Path) -> None:
    """SIGKILL the rehearsal: its helper does not live on, and it never ran
    the parent's atexit handlers (the janitor's wait, for one)."""
    marker = tmp_path / "atexit-ran"
    script = textwrap.dedent(
        f"""
        import atexit, os, signal, sys, time
        sys.path.insert(0, {SRC!r})
        from apt_rehearse.sandbox.forked import ForkedCall
        atexit.register(lambda: open({str(marker)!r}, "a").write(str(os.getpid()) + "\\n"))
        quick = ForkedCall(lambda: 7)
        assert quick.result() == 7
        slow = ForkedCall(time.sleep, 60)
        print(slow.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.strip())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)
    assert not marker.exists()  # neither the quick child nor the killed parent ran atexit


def test_the_child_can_be_niced_below_us() -> None:
    ours = os.nice(0)
    assert ForkedCall(os.nice, 0, niceness=5).result() == min(ours + 5, 19)
    assert ForkedCall(os.nice, 0).result() == ours
    assert os.nice(0) == ours  # ours is untouched
