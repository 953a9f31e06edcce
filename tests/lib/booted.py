"""A system tree booted with systemd as its PID 1, as a machine: the tests'
stand-in for a real Debian server, where apt-rehearse's units really run
and its rehearsals nest under a systemd host (cgroup v2, a delegated scope).

The boot follows the sandbox's own rules (DESIGN.md, lab/05): private
mount, pid, net, uts, ipc and cgroup namespaces, a cgroup2 subtree of its
own, fresh /proc, read-only /sys, /dev as a tmpfs with nodes made by mknod
(never the host's), fresh /run and /tmp. Commands run inside with nsenter.
Leaving the context powers the machine off, kills what is left by its pid
and removes its cgroup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

BOOT_SETUP = r"""
set -e
R=$1
# pivot_root needs a mount point; a booted system is not in a chroot (systemd
# 257 re-executed by its own upgrade does not come back up in one).
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid,size=16m tmpfs "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5; mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8; mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
# A private node for the console: systemd chowns and chmods /dev/console.
mknod -m 600 "$R/dev/console" c 1 3
ln -s /proc/self/fd "$R/dev/fd"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
hostname rh-booted
cd "$R"
mkdir -p .rh-old-root
pivot_root . .rh-old-root
exec /usr/bin/env -i container=apt-rehearse-tests TERM=dumb /bin/sh -c \
    'umount -l /.rh-old-root && rmdir /.rh-old-root && exec /sbin/init'
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cgroup2_root() -> Path:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = [line.split(" - ", 1) for line in handle]
    targets = [left.split()[4] for left, right in mounts if right.split()[0] == "cgroup2"]
    if not targets:
        raise RuntimeError("no cgroup2 hierarchy mounted")
    return Path("/sys/fs/cgroup" if "/sys/fs/cgroup" in targets else targets[0])


class BootedMachine:
    def __init__(self, tree: Path, name: str) -> None:
        self.tree = tree
        self.cgroup = cgroup2_root() / f"rh-test-{name}-{os.getpid()}"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.console = tree.parent / f"{name}.console"

    def __enter__(self) -> "BootedMachine":
        self.cgroup.mkdir()
        cgroup_procs = str(self.cgroup / "cgroup.procs")

        def into_cgroup() -> None:
            with open(cgroup_procs, "w") as handle:
                handle.write(str(os.getpid()))

        with open(self.console, "wb") as console:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--cgroup", "--fork"]
                + ["--propagation", "private", "sh", "-c", BOOT_SETUP, "sh", str(self.tree)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=into_cgroup,
            )
        try:
            self._wait_running()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_running(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the machine ended while booting: {self.console.read_text()[-2000:]}")
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                state = self.run("systemctl is-system-running", timeout=20).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the machine did not finish booting (state {state!r})")

    def _find_leader(self) -> int | None:
        # unshare's child is the namespace's PID 1: systemd once it has exec'd.
        for task in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
                except OSError:
                    continue
        return None

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """A shell command inside, as root at a login (PATH, LANG; no terminal)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "-r", "-w"]
            + ["/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.leader is not None:
                # systemd's own signal for "poweroff" (systemd(1)): no bus, no logind to wait for.
                os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.leader is not None:
                    os.kill(self.leader, 9)  # the namespace's PID 1: everything inside dies with it
                self.process.wait(timeout=30)
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        for _ in range(50):
            try:
                for directory in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                    if directory.is_dir():
                        directory.rmdir()
                self.cgroup.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"cgroup {self.cgroup} could not be removed")
