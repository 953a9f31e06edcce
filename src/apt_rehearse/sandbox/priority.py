"""Someone waits for a background rehearsal: it goes on at normal priority.

apt-rehearse-prepare.service rehearses at idle priority (SCHED_IDLE, nice
19, idle I/O, idle cgroups), so that it takes only what the host's services
leave. When apt's hook, or the sysadmin by hand, waits for that very
rehearsal's verdict, the wait would last as long as the host stays busy: a
priority inversion (unattended-upgrades at 6 a.m. behind a rehearsal the web
server starves). The waiter gives the holder, the processes it started and
the cgroups it made the priority a rehearsal of its own would have had.

Only what the prepare lowered is raised: SCHED_IDLE and SCHED_BATCH become
SCHED_OTHER, a positive nice 0, idle I/O the default; a service in the booted
copy with a nice or an I/O class of its own keeps it. The holder is trusted
only when it is in this pid namespace (store/inflight says) and holds the
lock file open: a pid read from a file is never enough to touch a process.
"""

from __future__ import annotations

import os
import subprocess

from apt_rehearse.sandbox.cgroups import PREFIX, V1_CPU, cgroup2_mount

# What a lifted cgroup gets: the kernel's and systemd's defaults.
V2_DEFAULTS = {"cpu.idle": "0", "cpu.weight": "100", "io.weight": "default 100"}
V1_DEFAULTS = {"cpu.idle": "0", "cpu.shares": "1024"}


def holds_open(pid: int, lock_fd: int) -> bool:
    """Whether process ``pid`` has the file behind ``lock_fd`` open."""
    wanted = os.fstat(lock_fd)
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            info = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, as /proc shows them now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def _lift_cpu(pid: int) -> bool:
    changed = False
    try:
        if os.sched_getscheduler(pid) in (os.SCHED_IDLE, os.SCHED_BATCH):
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            changed = True
        if os.getpriority(os.PRIO_PROCESS, pid) > 0:
            os.setpriority(os.PRIO_PROCESS, pid, 0)
            changed = True
    except OSError:
        pass  # gone meanwhile
    return changed


def _io_idle(pids: list[int]) -> list[int]:
    idle = []
    for pid in pids:
        proc = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True, check=False)
        if proc.returncode == 0 and proc.stdout.strip() == "idle":
            idle.append(pid)
    return idle


def _own_cgroups(pids: list[int]) -> tuple[set[str], set[str]]:
    """The apt-rehearse cgroups these processes are in (the sandbox's, a
    scope of its own, the prepare service's): cgroup2 directories, and
    cgroup v1 cpu directories. Written directly, also where systemd made
    them: systemd puts the unit's weights back when it next applies them
    (at the next start of the prepare at the latest); set-property would
    have kept the lift for every prepare until the next boot."""
    v2, v1 = set(), set()
    mount = cgroup2_mount()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            parts = path.strip("/").split("/")
            for depth, part in enumerate(parts):
                if not part.startswith(PREFIX):
                    continue
                top = "/" + "/".join(parts[: depth + 1])
                if controllers == "" and mount:
                    v2.add(mount + top)
                elif "cpu" in controllers.split(",") and os.path.isdir(V1_CPU):
                    v1.add(V1_CPU + top)
                break
    return v2, v1


def _write_defaults(directory: str, defaults: dict[str, str]) -> None:
    for name, value in defaults.items():
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                with open(path, "w", encoding="ascii") as handle:
                    handle.write(value)
            except OSError:
                pass  # not this controller, or not this kernel


def lift(pid: int) -> int:
    """Give ``pid`` (a verified holder), its descendants and its cgroups the
    default priority; the number of processes raised."""
    pids = descendants(pid)
    raised = {p for p in pids if _lift_cpu(p)}
    idle_io = _io_idle(pids)
    if idle_io:
        subprocess.run(["ionice", "-c", "0", "-p", *map(str, idle_io)], capture_output=True, check=False)
        raised.update(idle_io)
    v2, v1 = _own_cgroups(pids)
    for directory in v2:
        _write_defaults(directory, V2_DEFAULTS)
    for directory in v1:
        _write_defaults(directory, V1_DEFAULTS)
    # Processes the holder started while the first pass ran inherited the old priority.
    raised.update(p for p in descendants(pid) if p not in pids and _lift_cpu(p))
    return len(raised)


def lift_holder(pid: int, lock_fd: int) -> int:
    """Lift the rehearsal ``pid`` (store/inflight's holder of ``lock_fd``'s
    lock, in this pid namespace) when it has that lock file open; the number
    of processes raised (0: nothing to do, or not ours to touch)."""
    if pid <= 1 or pid == os.getpid() or not holds_open(pid, lock_fd):
        return 0
    return lift(pid)


class Lifter:
    """store/inflight's ``on_held``: lifts the holder a waiter waits for, and
    remembers how many processes it raised (for the waiter's message)."""

    def __init__(self) -> None:
        self.raised = 0

    def __call__(self, pid: int, lock_fd: int) -> None:
        try:
            self.raised = lift_holder(pid, lock_fd)
        except OSError:
            self.raised = 0  # /proc or a cgroup refused: the wait is only longer
