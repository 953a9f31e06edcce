"""Run one command as a child subreaper, the way a session manager would.

    rel_reaper.py PIDFILE REPORTFILE COMMAND...

Every process the command leaves orphaned is re-parented here (not to the
machine's init), reaped at once, and counted. When the command has ended
and a grace period has passed, what is still alive below us is written to
REPORTFILE (JSON), then ended by pid: the machine stays clean and the test
knows exactly what the rehearsal left behind. Shared machines make
"processes by name" meaningless; descent from here is exact.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

GRACE = 20.0


def _children_of(ancestor: int) -> list[int]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            rest = data[data.rindex(b")") + 2 :].split()
            table[int(name)] = (int(rest[1]), rest[0])
    found, todo = [], [ancestor]
    while todo:
        parent = todo.pop()
        for pid, (ppid, state) in table.items():
            if ppid == parent:
                todo.append(pid)
                if state != b"Z":
                    found.append(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")[:200]
    except OSError:
        return ""


def main() -> int:
    pidfile, reportfile, *argv = sys.argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    child = os.fork()
    if child == 0:
        os.execvp(argv[0], argv)
    with open(pidfile + ".tmp", "w") as handle:
        handle.write(str(child))
    os.rename(pidfile + ".tmp", pidfile)
    status = None
    ended_at = None
    if os.environ.get("REL_LAZY_REAPER"):
        # A subreaper that reaps orphans late (only once its own child has
        # ended), as some session managers and CI runners do.
        status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        ended_at = time.monotonic()
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, raw = 0, 0
            if status is not None and not _children_of(os.getpid()):
                break
        if pid == child:
            status = os.waitstatus_to_exitcode(raw)
            ended_at = time.monotonic()
        if pid:
            continue
        if status is not None:
            alive = _children_of(os.getpid())
            if not alive or time.monotonic() - ended_at > GRACE:
                break
        time.sleep(0.02)
    left = {pid: _cmdline(pid) for pid in _children_of(os.getpid())}
    with open(reportfile, "w") as handle:
        json.dump({"status": status, "left": left}, handle)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0 and not _children_of(os.getpid()):
                break
        except ChildProcessError:
            break
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
