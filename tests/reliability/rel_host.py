"""Watch the host: what a rehearsal must leave exactly as it was.

The machine is shared (other people run rehearsals and tests at the same
time), so "nothing left behind" is judged on what *we* started: every run
goes under a child subreaper (rel_reaper.py), so every process a rehearsal
leaves orphaned is found by ancestry, never by name; mounts,
cgroups and temporary paths are matched against the pids and paths of our
own runs. Anything else that changes on the host is reported as a change
and counts as broken, except paths other people write on this machine
(VOLATILE), which the README lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# What the issue excludes, apt-rehearse's own log and cache, and what other
# users of this shared machine write while we run (their work trees, test
# trees and caches). /run and /tmp are left out by the issue; the product's
# own traces there are checked separately (temp_leftovers).
EXCLUDED = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/log/apt-rehearse", "/var/cache/apt-rehearse")
VOLATILE = (
    "/work",
    "/var/tmp",
    "/var/cache/apt-rehearse-tests",
    "/root/.cache",
    "/root/.bash_history",
    "/root/.pyenv",
    "/root/.npm",
    "/root/.local",
    "/mnt/sandboxing",
    "/var/lib/sudo",
)
# Hashed by content (sha256) as well as by metadata: the system's state.
CONTENT_DIRS = ("/etc", "/boot", "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd", "/usr/lib/apt-rehearse")
CGROUP_BASE = "/sys/fs/cgroup"


# -- processes -----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, starttime, comm) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), comm


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def process_table() -> dict[int, tuple[int, int, str]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _stat(int(name))
            if info is not None:
                table[int(name)] = info
    return table


def descendants(ancestor: int, table: dict[int, tuple[int, int, str]] | None = None) -> dict[int, str]:
    """pid -> comm of every live process below ``ancestor`` (zombies included)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(ancestor, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][2]
        todo += children.get(pid, [])
    return found


# -- the filesystem ------------------------------------------------------------


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        return f"unreadable:{error.errno}"
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def root_state(root: str = "/", skip: tuple[str, ...] = (), *, host: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every entry of the root filesystem: type, mode, owner, size, mtime,
    ctime (no write, chmod or rename leaves it as it was) and inode; with
    its sha256 in CONTENT_DIRS. Only the root's own filesystem (st_dev)."""
    root_dev = os.lstat(root).st_dev
    skipped = (EXCLUDED + VOLATILE if host else ()) + tuple(skip)
    state: dict[str, tuple[Any, ...]] = {}

    def examined(full: str) -> os.stat_result | None:
        if _under(full, skipped):
            return None
        try:
            return os.lstat(full)
        except OSError:
            return None

    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for name in dirnames:
            info = examined(os.path.join(dirpath, name))
            if info is None or info.st_dev != root_dev:
                continue  # skipped, gone, or a mount point: another filesystem
            keep.append(name)
        dirnames[:] = keep
        for name in [*filenames, *dirnames]:
            full = os.path.join(dirpath, name)
            info = examined(full)
            if info is None:
                continue
            entry: tuple[Any, ...] = (
                stat.S_IFMT(info.st_mode),
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                info.st_ino,
                info.st_ctime_ns,
            )
            if not stat.S_ISDIR(info.st_mode):
                entry += (info.st_size, info.st_mtime_ns)
            if stat.S_ISREG(info.st_mode) and _under(full, CONTENT_DIRS):
                entry += (_sha256(full),)
            state[full] = entry
    return state


def mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sorted(" ".join(line.split()[3:5]) + " " + line.split(" - ", 1)[1].split()[0] for line in handle)


def cgroups() -> set[str]:
    found = set()
    for dirpath, dirnames, _ in os.walk(CGROUP_BASE):
        for name in dirnames:
            found.add(os.path.join(dirpath, name))
    return found


def digest_of(path: str) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in (
        sorted(os.walk(path)) if os.path.isdir(path) else [(os.path.dirname(path), [], [os.path.basename(path)])]
    ):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            digest.update(full.encode() + b"\0" + _sha256(full).encode())
    return digest.hexdigest()


@dataclasses.dataclass
class HostSnapshot:
    """The host as a rehearsal must leave it."""

    root: dict[str, tuple[Any, ...]]
    dpkg_status: str
    apt_lists: str
    apt_archives: str
    mounts: list[str]
    cgroups: set[str]
    run_tmp: set[str]

    @classmethod
    def take(cls, *, whole_root: bool = True) -> "HostSnapshot":
        return cls(
            root=root_state() if whole_root else {},
            dpkg_status=digest_of("/var/lib/dpkg/status"),
            apt_lists=digest_of("/var/lib/apt/lists"),
            apt_archives=digest_of("/var/cache/apt/archives"),
            mounts=mounts(),
            cgroups=cgroups(),
            run_tmp=_run_tmp(),
        )


def _run_tmp() -> set[str]:
    names = set()
    for directory in ("/run", "/tmp", "/var/tmp", "/dev/shm", "/var/tmp/apt-rehearse"):
        try:
            names.update(os.path.join(directory, n) for n in os.listdir(directory))
        except OSError:
            pass
    return names


def ours(path: str, pids: set[int], paths: tuple[str, ...]) -> bool:
    """A path that belongs to one of our runs: under our base, or named with a pid of ours."""
    if _under(path, paths):
        return True
    tail = path.rstrip("/").rsplit("-", 1)[-1]
    return ("apt-rehearse" in path or "rh-" in path) and tail.isdigit() and int(tail) in pids


def differences(before: HostSnapshot, after: HostSnapshot, pids: set[int], paths: tuple[str, ...]) -> list[str]:
    """What changed on the host that a rehearsal of ours could have changed.

    ``pids``: the pids of our runs (the CLI, the hook); ``paths``: our own
    scratch directories (the test tree lives there, so its mounts and files
    are judged by the tree's own checks)."""
    problems = []
    if before.root:
        for path in sorted(set(before.root) | set(after.root)):
            if before.root.get(path) != after.root.get(path):
                problems.append(f"root: {path} changed ({before.root.get(path)} -> {after.root.get(path)})")
    for name in ("dpkg_status", "apt_lists", "apt_archives"):
        if getattr(before, name) != getattr(after, name):
            problems.append(f"{name} changed")
    added = set(after.mounts) - set(before.mounts)
    removed = set(before.mounts) - set(after.mounts)
    for line in sorted(added | removed):
        target = line.split()[1]
        # Other people's test trees are mounted in /var/tmp, /tmp and /work; ours are under paths.
        if _under(target, ("/var/tmp", "/tmp", "/work")) and not _under(target, paths):
            continue
        problems.append(f"mount {'added' if line in added else 'removed'}: {line}")
    for path in sorted(after.cgroups - before.cgroups):
        # The machine's own tooling makes cgroups all the time; ours are
        # named apt-rehearse-<id>-<pid of the CLI or hook>.
        top = next((part for part in path.split("/") if part.startswith("apt-rehearse-")), None)
        if top and ours(top, pids, ()):
            problems.append(f"cgroup left: {path}")
    for path in sorted(after.run_tmp - before.run_tmp):
        if ours(path, pids, paths) or (
            path.startswith(("/run/", "/dev/shm/")) and "apt-rehearse" in path and not path.rsplit("-", 1)[-1].isdigit()
        ):
            problems.append(f"temporary path left: {path}")
    return problems


# -- the canary ----------------------------------------------------------------

CANARY = r"""
import os, select, socket, sys
log = open(sys.argv[1], "a", buffering=1)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 0)); tcp.listen(16)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(sys.argv[2]); unix.listen(16)
abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
abstract.bind("\0" + sys.argv[3]); abstract.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", tcp.getsockname()[1]))
print(tcp.getsockname()[1], flush=True)
while True:
    ready, _, _ = select.select([tcp, unix, abstract, udp], [], [])
    for sock in ready:
        if sock is udp:
            data, peer = udp.recvfrom(4096)
            log.write(f"udp {peer}\n")
            continue
        conn, peer = sock.accept()
        log.write(f"connection on {sock.getsockname()!r} from {peer!r}\n")
        conn.close()
"""


@dataclasses.dataclass
class Canary:
    """A small host daemon: TCP and UDP on every address, a unix socket in
    /run, an abstract unix socket. It must keep its pid and see nobody."""

    process: subprocess.Popen
    port: int
    unix_path: str
    abstract_name: str
    log: Path
    pid: int
    starttime: int

    @classmethod
    def start(cls, base: Path) -> "Canary":
        log = base / "canary.log"
        log.touch()
        unix_path = f"/run/rel-canary-{os.getpid()}.sock"
        abstract_name = f"rel-canary-{os.getpid()}"
        process = subprocess.Popen(
            [sys.executable, "-c", CANARY, str(log), unix_path, abstract_name],
            stdout=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        port = int(process.stdout.readline())
        info = _stat(process.pid)
        assert info is not None
        return cls(process, port, unix_path, abstract_name, log, process.pid, info[1])

    def connections(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def alive(self) -> bool:
        info = _stat(self.pid)
        return info is not None and info[1] == self.starttime and self.process.poll() is None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        for path in (self.unix_path,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def probe_self(self) -> None:
        """Prove the canary really answers (so "no connection" means something)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass
        deadline = time.monotonic() + 5
        while not self.connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.connections(), "the canary does not log connections"
        self.log.write_text("")
