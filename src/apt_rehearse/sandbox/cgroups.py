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
from apt_rehearse.model.defaults import IDLE_WEIGHT
from apt_rehearse.model.errors import UnsupportedSystem
from apt_rehearse.sandbox.mountinfo import read_mountinfo

PREFIX = "apt-rehearse-"


V1_CPU = "/sys/fs/cgroup/cpu"


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
        self.v1_paths: list[str] = []  # the cpu weight on a hybrid host (cgroup v1's cpu.shares)

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
            if self.weights["cpu.weight"] == IDLE_WEIGHT:
                # As systemd does for CPUWeight=idle (the weight stays, cpu.idle says it).
                limits.update({"cpu.weight": None, "cpu.idle": 1})
            for name, value in limits.items():
                if value:
                    try:
                        with open(os.path.join(self.path, name), "w", encoding="ascii") as handle:
                            handle.write(str(value))
                    except OSError:
                        pass  # no such controller here (cgroup v1 hybrid): the limit cannot be set
            with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write(str(pid))
            if self.weights["cpu.weight"] is not None and not os.path.exists(os.path.join(self.path, "cpu.weight")):
                self._v1_cpu_group(pid)
        return self.path or ""

    def _v1_cpu_group(self, pid: int) -> None:
        """A hybrid host (cgroup v1 controllers, a cgroup2 tree without cpu):
        the weight goes to the v1 cpu hierarchy as cpu.shares. Without it the
        weight is lost, and so is nice: systemd inside the sandbox, and apt's
        session, call setsid(), and with sched_autogroup each new session is
        scheduled as a group of its own at nice 0, whatever the nice of the
        process that made it. A task in a cgroup of the cpu controller is
        not autogrouped."""
        if not os.path.isfile(os.path.join(V1_CPU, "cpu.shares")):
            return
        remove_stale(V1_CPU)
        path = os.path.join(V1_CPU, f"{PREFIX}{self.name}-{os.getpid()}")
        janitor.after_death(functools.partial(remove_tree, path))
        try:
            os.mkdir(path, 0o755)
            # systemd's own conversion of CPUWeight= (100 = the default 1024 shares;
            # idle: the least there is, as systemd gives it on cgroup v1)
            shares = max(2, int(self.weights["cpu.weight"] or 0) * 1024 // 100)
            with open(os.path.join(path, "cpu.shares"), "w", encoding="ascii") as handle:
                handle.write(str(shares))
            if self.weights["cpu.weight"] == IDLE_WEIGHT:
                # The least weight still wins a wakeup against the host's
                # services for a slice; an idle group (Linux 5.15, v1 too)
                # gives way at once, as SCHED_IDLE does.
                try:
                    with open(os.path.join(path, "cpu.idle"), "w", encoding="ascii") as handle:
                        handle.write("1")
                except OSError:
                    pass  # older kernel: the shares alone
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write(str(pid))
        except OSError:
            remove_tree(path)
            return
        self.v1_paths.append(path)

    def _scope(self, pid: int, mount: str) -> None:
        unit = f"{PREFIX}{self.name}-{os.getpid()}.scope"
        properties = ["PIDs", "au", "1", str(pid), "Delegate", "b", "true"]
        count = 2
        if self.memory_max:
            properties += ["MemoryMax", "t", str(self.memory_max)]
            count += 1
        for name, value in (("CPUWeight", self.weights["cpu.weight"]), ("IOWeight", self.weights["io.weight"])):
            if value is not None:  # CPUWeight 0: idle
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
        for path in self.v1_paths:
            if os.path.isdir(path):
                remove_tree(path)


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
