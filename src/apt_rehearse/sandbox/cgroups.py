"""A cgroup subtree of the sandbox's own, for the init it boots.

On a host whose PID 1 is systemd (cgroup v2), the tree belongs to systemd:
apt-rehearse asks it for a transient scope with Delegate=yes (and the memory
limit the sysadmin set), the way systemd-run --scope does. Elsewhere (a
container, or a host whose PID 1 is not systemd) it makes a directory of its
own in the cgroup2 hierarchy. Either way the booted systemd gets that
subtree as the root of its cgroup namespace, and it is removed afterwards.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time

from apt_rehearse.sandbox import janitor
from apt_rehearse.model.errors import UnsupportedSystem
from apt_rehearse.sandbox.mountinfo import read_mountinfo

PREFIX = "apt-rehearse-"


def cgroup2_mount() -> str | None:
    mounts = [entry.target for entry in read_mountinfo() if entry.fstype == "cgroup2"]
    if "/sys/fs/cgroup" in mounts:
        return "/sys/fs/cgroup"
    return mounts[0] if mounts else None


def host_runs_systemd() -> bool:
    return os.path.isdir("/run/systemd/system") and os.path.realpath("/proc/1/exe").endswith("/systemd")


def own_cgroup() -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("0::"):
                return line.strip()[3:] or "/"
    return "/"


class SandboxCgroup:
    """Where the sandbox's processes live; boots get sub-cgroups of it."""

    def __init__(
        self, name: str, memory_max: int | None = None, cpu_weight: int | None = None, io_weight: int | None = None
    ) -> None:
        self.name = name
        self.memory_max = memory_max
        # The weights go with the sandbox: a scope of its own would otherwise leave the
        # prepare service's CPUWeight=/IOWeight= behind (the booted services run in it).
        self.weights = {"cpu.weight": cpu_weight, "io.weight": io_weight}
        self.path: str | None = None
        self.scope = False

    def adopt(self, pid: int) -> str:
        """Put ``pid`` (the keeper) into a fresh subtree; returns its path."""
        mount = cgroup2_mount()
        if mount is None:
            raise UnsupportedSystem("no cgroup2 hierarchy is mounted; services cannot be booted (use --no-services)")
        if mount == "/sys/fs/cgroup" and host_runs_systemd():
            self._scope(pid, mount)
        else:
            remove_stale(mount)
            self.path = os.path.join(mount, f"{PREFIX}{self.name}-{os.getpid()}")
            # A killed rehearsal cannot remove its cgroup: a janitor does. It
            # is there before the directory, so no kill can fall in between.
            janitor.after_death(functools.partial(remove_tree, self.path))
            os.mkdir(self.path, 0o755)
            limits = {"memory.max": self.memory_max, **self.weights}
            for name, value in limits.items():
                if value:
                    try:
                        with open(os.path.join(self.path, name), "w", encoding="ascii") as handle:
                            handle.write(str(value))
                    except OSError:
                        pass  # no such controller here (cgroup v1 hybrid): the limit cannot be set
            with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write(str(pid))
        return self.path or ""

    def _scope(self, pid: int, mount: str) -> None:
        unit = f"{PREFIX}{self.name}-{os.getpid()}.scope"
        properties = ["PIDs", "au", "1", str(pid), "Delegate", "b", "true"]
        count = 2
        if self.memory_max:
            properties += ["MemoryMax", "t", str(self.memory_max)]
            count += 1
        for name, value in (("CPUWeight", self.weights["cpu.weight"]), ("IOWeight", self.weights["io.weight"])):
            if value:
                properties += [name, "t", str(value)]
                count += 1
        proc = subprocess.run(
            [
                "busctl",
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "StartTransientUnit",
                "ssa(sv)a(sa(sv))",
                unit,
                "fail",
                str(count),
                *properties,
                "0",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise UnsupportedSystem(f"systemd would not give the sandbox a delegated scope: {proc.stderr.strip()}")
        self.scope = True
        for _ in range(100):
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
                text = handle.read()
            if unit in text:
                relative = next(line[3:].strip() for line in text.splitlines() if line.startswith("0::"))
                self.path = mount + relative
                return
            time.sleep(0.02)
        raise UnsupportedSystem(f"systemd did not move the sandbox into {unit}")

    def remove(self) -> None:
        """Empty cgroups, deepest first; a scope systemd removes by itself."""
        if self.path and os.path.isdir(self.path):
            remove_tree(self.path, keep_top=self.scope)


def remove_tree(path: str, keep_top: bool = False) -> None:
    for current, dirs, _ in sorted(os.walk(path), key=lambda item: -item[0].count("/")):
        if current == path and keep_top:
            continue
        for _ in range(50):
            try:
                os.rmdir(current)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)  # processes still leaving


def remove_stale(mount: str) -> None:
    """Subtrees of rehearsals that were killed: their pid is gone."""
    try:
        names = os.listdir(mount)
    except OSError:
        return
    for name in names:
        if name.startswith(PREFIX):
            pid = name.rsplit("-", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                remove_tree(os.path.join(mount, name))
