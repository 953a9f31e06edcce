"""A rehearsal waited for goes on at normal priority (sandbox/priority).

Real processes, real scheduler settings and real cgroups: a holder of a
transaction's lock at the prepare service's priority (SCHED_IDLE, nice 19,
idle I/O, an idle cgroup v1 cpu group, as on this hybrid VM) with a child
in it; a waiter lifts both, and only what holds the lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from apt_rehearse.sandbox import priority
from apt_rehearse.store import inflight

pytestmark = pytest.mark.integration

SRC = str(Path(__file__).resolve().parents[2] / "src")
V1_CPU = "/sys/fs/cgroup/cpu"

HOLDER = """
import os, subprocess, sys
from apt_rehearse.store import inflight
cache, group = sys.argv[1], sys.argv[2]
with inflight.claim(cache, "t1", "apt-rehearse prepare"):
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.nice(19)
    subprocess.run(["ionice", "-c", "3", "-p", str(os.getpid())], check=True)
    child = subprocess.Popen(["sleep", "300"])
    if group:
        os.mkdir(group)
        for name, value in (("cpu.shares", "2"), ("cpu.idle", "1"), ("cgroup.procs", str(child.pid))):
            with open(os.path.join(group, name), "w") as handle:
                handle.write(value)
    print(child.pid, flush=True)
    sys.stdin.read()
    child.kill()
    child.wait()
"""


def _state(pid: int) -> tuple[int, int, str]:
    io = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True, check=True).stdout.strip()
    return os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid), io


@contextlib.contextmanager
def _holder(cache: str, wrap: list[str], group: str = ""):
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-c", HOLDER, cache, group],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        yield proc, child
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.communicate(timeout=30)
        if group and os.path.isdir(group):
            for _ in range(100):
                with contextlib.suppress(OSError):
                    os.rmdir(group)
                    break
                time.sleep(0.05)


def _wait_briefly(cache: str, lifter: priority.Lifter) -> None:
    with pytest.raises(TimeoutError):
        with inflight.claim(cache, "t1", "the apt hook", timeout_s=0.3, on_held=lifter):
            pass


@pytest.fixture()
def cache():
    directory = tempfile.mkdtemp(prefix="rh-lift-", dir="/var/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_waiter_lifts_the_holder_its_children_and_its_cgroup(cache: str) -> None:
    group = os.path.join(V1_CPU, f"apt-rehearse-lifttest-{os.getpid()}") if os.path.isfile(f"{V1_CPU}/cpu.idle") else ""
    with _holder(cache, [], group) as (proc, child):
        low = (os.SCHED_IDLE, 19, "idle")
        assert _state(proc.pid) == low and _state(child) == low
        lifter = priority.Lifter()
        _wait_briefly(cache, lifter)
        assert lifter.raised == 2
        assert _state(proc.pid) == (os.SCHED_OTHER, 0, "none: prio 0")
        assert _state(child) == (os.SCHED_OTHER, 0, "none: prio 0")
        if group:
            assert Path(group, "cpu.idle").read_text().strip() == "0"
            assert Path(group, "cpu.shares").read_text().strip() == "1024"


def test_a_holder_in_another_pid_namespace_is_not_touched(cache: str) -> None:
    """Its pid means another process here: the waiter only waits."""
    with _holder(cache, ["unshare", "--pid", "--fork", "--mount-proc"]) as (proc, _child):
        lifter = priority.Lifter()
        _wait_briefly(cache, lifter)
        assert lifter.raised == 0
        [python] = [p for p in priority.descendants(proc.pid) if "python" in Path(f"/proc/{p}/comm").read_text()]
        assert _state(python) == (os.SCHED_IDLE, 19, "idle")


def test_a_pid_that_does_not_hold_the_lock_is_not_touched(cache: str) -> None:
    other = subprocess.Popen(["chrt", "-i", "0", "nice", "-n", "19", "sleep", "300"])
    try:
        time.sleep(0.2)
        fd = os.open(os.path.join(cache, "lockfile"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert priority.lift_holder(other.pid, fd) == 0
        finally:
            os.close(fd)
        assert _state(other.pid)[:2] == (os.SCHED_IDLE, 19)
    finally:
        other.kill()
        other.wait()
