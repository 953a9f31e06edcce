"""Run the real CLI, or real apt with the real hook, and SIGKILL it at a phase.

The phase is read off the process table and the filesystem, never off a hook
in the product: the first child forked (setup), the rehearsed system's
systemd (service boot), a probe's marker sleep (observation), a maintainer
script's marker sleep (replay), the first file in the report directory
(report; inotify, so the kill lands while the report is being written).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import tempfile
import dataclasses
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import rel_host
from conftest import SRC

from rel_scenario import OBSERVE_MARK, REPLAY_MARK

PHASES = ("setup", "service boot", "observation", "replay", "report")
PYTHON = "/usr/bin/python3"
IN_CREATE, IN_MOVED_TO = 0x100, 0x80
REAPER = Path(__file__).resolve().parent / "rel_reaper.py"


def cli_argv(tree: Path, log: Path, cache: Path, *args: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "apt_rehearse",
        "--root",
        str(tree),
        "-o",
        f"APT::Rehearse::Log-Dir={log}",
        "-o",
        f"APT::Rehearse::Cache-Dir={cache}",
        *args,
    ]


def hook_command(base: Path) -> str:
    """The hook as the package installs it (hooks/apt-hook), run from the source tree.
    A script path: apt finds its Version/InfoFD options by the command's text."""
    path = base / "apt-hook"
    path.write_text(
        f'#!/bin/sh\nexec {PYTHON} -I -c \'import sys; sys.path.insert(0, "{SRC}"); '
        "from apt_rehearse.fronts.hook import run; run()'\n"
    )
    path.chmod(0o755)
    return str(path)


def fake_dpkg(base: Path, tree: Path) -> Path:
    """apt's dpkg for runs against a tree from the host: queries go to the
    tree's dpkg database; anything that would change a system is refused and
    recorded (so a test sees whether apt went on, and nothing is changed)."""
    path = base / "fake-dpkg"
    marker = base / "dpkg-ran"
    path.write_text(
        f"""#!/bin/sh
for a in "$@"; do
  case "$a" in
    --unpack|--configure|--install|-i|--remove|-r|--purge|-P|--triggers-only|--set-selections|--clear-selections)
      echo "$*" >> {marker}; echo "fake dpkg: refusing $a (the real run)" >&2; exit 1;;
  esac
done
exec /usr/bin/dpkg --root={tree} "$@"
"""
    )
    path.chmod(0o755)
    return path


def apt_argv(tree: Path, base: Path, log: Path, cache: Path, *args: str, on_error: str = "block") -> list[str]:
    """apt-get of the host on the tree (Dir=), with the hook as the package registers it."""
    hook = hook_command(base)
    return [
        "apt-get",
        "-y",
        "-o",
        f"Dir={tree}/",
        "-o",
        f"Dir::State::status={tree}/var/lib/dpkg/status",
        "-o",
        f"Dir::Bin::dpkg={fake_dpkg(base, tree)}",
        "-o",
        "APT::Sandbox::User=root",
        "-o",
        f"DPkg::Pre-Install-Pkgs::={hook}",
        "-o",
        f"DPkg::Tools::Options::{hook}::Version=3",
        "-o",
        f"DPkg::Tools::Options::{hook}::InfoFD=20",
        "-o",
        f"APT::Rehearse::Log-Dir={log}",
        "-o",
        f"APT::Rehearse::Cache-Dir={cache}",
        "-o",
        f"APT::Rehearse::On-Error={on_error}",
        *args,
    ]


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    env.pop("APT_REHEARSE", None)
    return env


class _Inotify:
    def __init__(self, directory: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        directory.mkdir(parents=True, exist_ok=True)
        if self.libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CREATE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def fired(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        os.read(self.fd, 4096)
        return True

    def close(self) -> None:
        os.close(self.fd)


@dataclasses.dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    killed_at: str | None  # the phase the kill landed in; None: ran to the end
    target: int | None  # the pid killed (the CLI, or the hook under apt)
    seen: dict[int, str]  # every process seen below the target while it ran
    left: dict[str, str]  # what was still running below the run after it ended (and a grace period)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _target(child: int, hook: bool) -> int | None:
    if not hook:
        return child
    for pid in rel_host.descendants(child):
        line = rel_host.cmdline(pid)
        if line.startswith(PYTHON) and "apt_rehearse.fronts.hook" in line:
            return pid
    return None


def _in_phase(phase: str, below: dict[int, str], target: int, report_fired: bool) -> bool:
    if phase == "setup":
        # The sandbox's first process is a fork of the target (planning
        # runs dpkg and apt's methods before that: not yet the sandbox).
        return any(comm.startswith("python3") for comm in below.values())
    if phase == "service boot":
        return any(comm == "systemd" for comm in below.values())
    if phase == "observation":
        return any(OBSERVE_MARK in rel_host.cmdline(pid) for pid, comm in below.items() if comm == "sleep")
    if phase == "replay":
        return any(REPLAY_MARK in rel_host.cmdline(pid) for pid, comm in below.items() if comm == "sleep")
    if phase == "report":
        return report_fired
    raise ValueError(phase)


def run_and_kill(
    argv: list[str],
    phase: str | None,
    *,
    hook: bool = False,
    log: Path | None = None,
    timeout: float = 900,
    lazy_reaper: bool = False,
) -> Outcome:
    """Run argv; SIGKILL the CLI (or the hook apt runs) once it is in ``phase``."""
    watcher = _Inotify(log) if phase == "report" and log is not None else None
    scratch = Path(tempfile.mkdtemp(prefix="rel-run-", dir="/var/tmp"))
    pidfile, reportfile = scratch / "pid", scratch / "report"
    argv = [PYTHON, str(REAPER), str(pidfile), str(reportfile), *argv]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=dict(environment(), **({"REL_LAZY_REAPER": "1"} if lazy_reaper else {})),
        text=True,
    )
    seen: dict[int, str] = {}
    killed_at = None
    target = None
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if phase is None:
                time.sleep(0.05)
                continue
            if not pidfile.exists():
                time.sleep(0.005)
                continue
            target = target or _target(int(pidfile.read_text()), hook)
            if target is None:
                time.sleep(0.01)
                continue
            fired = watcher.fired(0.005) if watcher else False
            below = rel_host.descendants(target)
            seen.update(below)
            if _in_phase(phase, below, target, fired):
                try:
                    os.kill(target, signal.SIGKILL)
                    killed_at = phase
                except ProcessLookupError:
                    pass
                break
            if not watcher:
                time.sleep(0.01)
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if watcher:
            watcher.close()
    report = json.loads(reportfile.read_text()) if reportfile.exists() else {"status": None, "left": {"?": "no report"}}
    shutil.rmtree(scratch, ignore_errors=True)
    return Outcome(report["status"], stdout, stderr, killed_at, target, seen, report["left"])
