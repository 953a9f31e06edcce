"""Inside the sandbox: apply the transaction with the system's own apt.

This runs after pivot_root, so it uses only the target system's programs
(apt-get, dpkg, dpkg-query) and modules Python had already imported. It
observes the package state before and after, runs apt with exactly the
transaction's packages and versions, and sends back raw observations; the
checks that turn them into findings run on the host, afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import shutil
import signal
import subprocess
import time
from typing import Any

from apt_rehearse.inside import bootchain
from apt_rehearse.inside.commands import finish_command, run_command, sandbox_env, start_command
from apt_rehearse.inside import config_fixes
from apt_rehearse.inside import conffile_state
from apt_rehearse.inside import downtime
from apt_rehearse.inside import facts
from apt_rehearse.inside import kernel_settings
from apt_rehearse.inside import libraries
from apt_rehearse.model.clock import PhaseClock
from apt_rehearse.model.errors import RehearsalError
from apt_rehearse.sandbox.namespaces import Channel, SandboxSession
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, REMOVING_ACTIONS, Transaction

POLICY_RC_D = "/usr/sbin/policy-rc.d"
EMPTY_DIR = "/run/apt-rehearse/empty"
OUTPUT_LIMIT = 4 << 20  # bytes of apt output kept; the tail matters most
# apt run without the system's sources must not save the cache it builds:
# it would replace /var/cache/apt/*.bin, which match the system's sources,
# with caches of no lists at all, and every apt tool the maintainer scripts
# and dpkg-preconfigure (apt-extracttemplates) start would rebuild them from
# all the lists again. The real run leaves them valid.
NO_CACHE_FILES = ["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]


@dataclasses.dataclass
class ReplayPlan:
    """What to run inside, computed on the host before the fork."""

    transaction: Transaction
    deb_paths: dict[str, str]  # change.name -> path of its .deb inside the sandbox
    apt_options: list[str]  # extra "-o Key=Value" for apt-get, in order
    timeout: float
    private_lists: str | None = None  # inside path of a --release apt state to install
    source_cache: str | None = None  # inside path of its srcpkgcache.bin (release.build_source_cache)
    sources_rewrite: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> new content
    # With the system booted, maintainer scripts stop and restart services
    # exactly as the real run will; without it, a policy-rc.d keeps them down.
    services_live: bool = False
    # Extra directories of software dpkg does not know about (beyond /opt,
    # /usr/local, /srv), whose libraries must still resolve afterwards.
    library_dirs: list[str] = dataclasses.field(default_factory=list)
    # A release upgrade: report what no source offers any more afterwards.
    release_upgrade: bool = False
    # What the host's grub-probe said, for update-grub inside (see bootchain).
    grub_probe_answers: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    # ELF facts of earlier rehearsals (libraries.elf_key -> row): files
    # unchanged since are not parsed again.
    elf_known: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    # A disk upper: bytes its file system must keep free for the host. The
    # estimate checked before may fall short (a postinst that builds a large
    # file): apt is stopped when the room left falls below this.
    room_floor: int | None = None
    # --fix: configuration changes to make after apt, in the copy only
    # (inside/config_fixes): {path, line, old, new, unit}.
    config_fixes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # With the services live: what to probe during the run for the downtime
    # forecast (inside/downtime.probe_targets of the baseline observation).
    watch: list[dict[str, Any]] | None = None
    # The hazard facts before apt, when they were taken while the boot
    # settled (scan_before): the files they read do not change with a boot.
    hazards_before: dict[str, Any] | None = None


DPKG_QUERY_FORMAT = "${Package}\\t${Architecture}\\t${Version}\\t${db:Status-Abbrev}\\n"


def package_states() -> dict[str, dict[str, str]]:
    """Every package dpkg knows, as name:arch -> {version, status}."""
    code, output = run_command(["dpkg-query", "-W", "-f", DPKG_QUERY_FORMAT])
    if code not in (0, 1):
        raise RehearsalError(f"dpkg-query failed inside the sandbox: {output.strip()[-300:]}")
    states = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        package, arch, version, abbrev = parts
        states[f"{package}:{arch}"] = {"version": version, "status": abbrev.strip()}
    return states


def apt_command(plan: ReplayPlan, status_fd: int = 3) -> list[str]:
    """apt-get install with exactly the transaction's packages and versions.

    Each installing change names its .deb file, each removal its package with
    apt's "-" suffix; apt's resolver must then find nothing else to do, and
    any difference is reported. apt-get has no suffix to purge one package
    and remove another: purges are APT::Get::Purge for every removal, which is
    what the real runs that purge (apt-get purge, autoremove --purge) do. A
    transaction with both (aptitude's "_") removes them all, and the
    comparison afterwards reports the purges not done.
    """
    argv = [
        "apt-get",
        "install",
        "--yes",
        "--allow-downgrades",
        "--allow-remove-essential",
        "--allow-change-held-packages",
        "-o",
        f"APT::Status-Fd={status_fd}",
        "-o",
        "Dpkg::Use-Pty=0",
        "-o",
        "APT::Get::AutomaticRemove=false",
        "-o",
        "APT::Install-Recommends=false",
        "-o",
        "APT::Install-Suggests=false",
        "-o",
        "APT::Rehearse::Enable=false",
        "-o",
        "APT::Color=false",
        # apt sees only the installed packages and the transaction's own .debs:
        # it cannot reach for anything else, so what it does is the transaction
        # or a difference we report (and it never tries the network).
        "-o",
        "Dir::Etc::sourcelist=/dev/null",
        "-o",
        f"Dir::Etc::sourceparts={EMPTY_DIR}",
        *NO_CACHE_FILES,
    ]
    for option in plan.apt_options:
        argv += ["-o", option]
    changes = plan.transaction.changes
    if any(c.action == "reinstall" for c in changes):
        argv.append("--reinstall")
    removals = {c.action for c in changes if c.action in REMOVING_ACTIONS}
    if removals == {"purge"}:
        argv += ["-o", "APT::Get::Purge=true"]
    for change in sorted(changes, key=lambda c: c.name):
        if change.action in INSTALLING_ACTIONS:
            argv.append(plan.deb_paths[change.name])
        else:
            # apt names an arch-all package by its native architecture.
            name = change.package if change.arch == "all" else change.name
            argv.append(name + "-")
    return argv


def _run_apt(plan: ReplayPlan, channel: Channel, timeout: float) -> dict[str, Any]:
    status_read, status_write = os.pipe()
    argv = apt_command(plan, status_write)
    output = bytearray()
    status_lines: list[str] = []
    status_times: list[float] = []  # when each status line came, in seconds since apt started
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=sandbox_env(),
        pass_fds=(status_write,),
        start_new_session=True,
    )
    os.close(status_write)
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None
    selector.register(proc.stdout, selectors.EVENT_READ, "out")
    status_file = os.fdopen(status_read, "rb", buffering=0)
    selector.register(status_file, selectors.EVENT_READ, "status")
    pending = b""
    timed_out = False
    stopped_for_room: int | None = None
    open_streams = 2
    while open_streams:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if plan.room_floor is not None and (left := room_left()) < plan.room_floor:
            stopped_for_room = left
            os.killpg(proc.pid, signal.SIGKILL)
            break
        for key, _ in selector.select(timeout=min(remaining, 1.0)):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.data == "out":
                output += chunk
                if len(output) > OUTPUT_LIMIT:
                    del output[: len(output) - OUTPUT_LIMIT]
            else:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    status_lines.append(line)
                    status_times.append(round(time.monotonic() - started, 3))
                    _forward_progress(line, channel)
    selector.close()
    status_file.close()
    code = proc.wait()
    return {
        "argv": argv,
        "exit_status": code,
        "timed_out": timed_out,
        "stopped_for_room": stopped_for_room,
        "output": output.decode("utf-8", "replace"),
        "status_lines": status_lines,
        "status_times": status_times,
        "seconds": round(time.monotonic() - started, 3),
    }


def room_left() -> int:
    """Bytes free where the uppers live: an overlay reports its upper's file system."""
    info = os.statvfs("/")
    return info.f_bavail * info.f_frsize


def _forward_progress(line: str, channel: Channel) -> None:
    # "pmstatus:pkg:percent:message" and "dlstatus:..." (apt's status-fd)
    parts = line.split(":", 3)
    if len(parts) == 4 and parts[0] == "pmstatus":
        try:
            percent = float(parts[2])
        except ValueError:
            return
        channel.send("progress", percent=percent, message=parts[3])


def _write(path: str, content: str, mode: int = 0o644) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(path, mode)


def _install_release_state(plan: ReplayPlan) -> tuple[int, int] | None:
    """Point the rehearsed system at the target release, as the sysadmin would."""
    for path, content in plan.sources_rewrite.items():
        _write(path, content)
    if plan.private_lists:
        lists = "/var/lib/apt/lists"
        for name in os.listdir(lists):
            if name not in ("lock", "partial", "auxfiles"):
                full = os.path.join(lists, name)
                if os.path.isfile(full):
                    os.unlink(full)
        for name in os.listdir(plan.private_lists):
            source = os.path.join(plan.private_lists, name)
            if os.path.isfile(source) and name != "lock":
                # shutil.copy2 keeps the mtime: apt's cache names each list by
                # its path, size and mtime.
                shutil.copy2(source, os.path.join(lists, name))
    if plan.source_cache and os.path.isfile(plan.source_cache):
        # Placed after the sources: apt takes a cache older than them as stale.
        try:
            shutil.copyfile(plan.source_cache, SOURCE_CACHE)
            os.chmod(SOURCE_CACHE, 0o644)
        except OSError:
            return None  # apt builds its own, as it would have
        return _cache_identity()
    return None


SOURCE_CACHE = "/var/cache/apt/srcpkgcache.bin"


def _cache_identity() -> tuple[int, int] | None:
    """Which srcpkgcache.bin is in place: apt replaces one it finds stale."""
    try:
        info = os.stat(SOURCE_CACHE)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


APT_QUIET_OPTIONS = [
    "-o",
    "Dir::Etc::sourcelist=/dev/null",
    "-o",
    f"Dir::Etc::sourceparts={EMPTY_DIR}",
    "-o",
    "APT::Color=false",
    "-o",
    "APT::Rehearse::Enable=false",
    *NO_CACHE_FILES,
]


AUTOREMOVE_ARGV = ["apt-get", "--simulate", "autoremove", *APT_QUIET_OPTIONS]
OBSOLETE_ARGV = ["apt", "list", "-o", "APT::Color=false", "?and(?installed,?obsolete)"]


def parse_autoremovable(code: int, output: str) -> list[str]:
    if code != 0:
        return []
    return sorted(
        {line.split()[1] for line in output.splitlines() if line.startswith("Remv ") and len(line.split()) > 1}
    )


def parse_obsolete(code: int, output: str) -> list[str]:
    """Installed packages that no configured source offers (apt's ?obsolete)."""
    if code != 0:
        return []
    return sorted({line.split("/", 1)[0] for line in output.splitlines() if "/" in line and "[installed" in line})


def scan_before(plan: ReplayPlan) -> dict[str, Any]:
    """The hazard facts before apt of a rehearsal that is not a release
    upgrade (one places the release's apt state first), early: a booted
    rehearsal takes them while its boot settles, off the critical path."""
    return _before_apt(plan)


def _before_apt(plan: ReplayPlan) -> dict[str, Any]:
    """What the checks compare against, taken in the sandbox just before apt runs."""
    autoremove_run = start_command(AUTOREMOVE_ARGV) if plan.release_upgrade else None
    state: dict[str, Any] = {
        "libraries": libraries.scan(plan.library_dirs, known=plan.elf_known),
        "boot": bootchain.boot_state(),
        "conffile_leftovers": conffile_state.leftovers(),
        "kernel": kernel_settings.collect(),
    }
    if plan.release_upgrade:
        state["autoremovable"] = parse_autoremovable(*finish_command(autoremove_run, AUTOREMOVE_ARGV[0]))
    return state


def _after_apt(
    plan: ReplayPlan, before: dict[str, Any], recorders: dict[str, Any], obsolete_run: subprocess.Popen[bytes] | None
) -> dict[str, Any]:
    # The two apt queries run beside the file scans (the second core is idle).
    autoremove_run = start_command(AUTOREMOVE_ARGV) if plan.release_upgrade else None
    after: dict[str, Any] = {
        "libraries": libraries.rescan(before["libraries"], plan.library_dirs, known=plan.elf_known),
        "boot": bootchain.boot_state(),
        "recorded_commands": bootchain.recorded_commands(),
        "recorder_refused": recorders["refused"],
        "grub_probe_unanswered": bootchain.unanswered_grub_probes(),
        "conffile_leftovers": conffile_state.new_leftovers(before["conffile_leftovers"], conffile_state.leftovers()),
        "kernel": kernel_settings.collect(),
    }
    # Which package ships each file that brings a new setting: dpkg's lists as
    # the run leaves them (those of a setting the run drops are the host's).
    changed = kernel_settings.changes(before["kernel"], after["kernel"])
    brought = {row["file"] for row in changed if row["value"] is not None}
    after["kernel_owners"] = facts.owners_of("/", sorted(brought)) if brought else {}
    if plan.release_upgrade:
        after["autoremovable"] = parse_autoremovable(*finish_command(autoremove_run, AUTOREMOVE_ARGV[0]))
        after["obsolete"] = parse_obsolete(*finish_command(obsolete_run, OBSOLETE_ARGV[0]))
    return after


def replay_inside(plan: ReplayPlan, session: SandboxSession | None, channel: Channel) -> dict[str, Any]:
    """The function the sandbox runs: observe, apply, observe."""
    parts = PhaseClock()
    channel.send("phase", name="replay")
    with parts("state before"):
        placed_cache = _install_release_state(plan)
        os.makedirs(EMPTY_DIR, exist_ok=True)
        before = package_states()
    with parts("hazards before"):
        hazards_before = plan.hazards_before if plan.hazards_before is not None else _before_apt(plan)
        recorders = bootchain.install_recorders(plan.grub_probe_answers)
    plan = dataclasses.replace(plan, apt_options=[*plan.apt_options, recorders["dpkg_option"]])
    saved_policy = None
    if os.path.lexists(POLICY_RC_D):
        with open(POLICY_RC_D, "rb") as handle:
            saved_policy = handle.read()
    if not plan.services_live:
        _write(POLICY_RC_D, "#!/bin/sh\n# apt-rehearse: no service starts during the replay\nexit 101\n", 0o755)
    # Started before apt, stopped once the inspection is done: a service the
    # run left down is seen coming back (or not) meanwhile.
    watcher = downtime.Watcher(plan.watch).start() if plan.services_live and plan.watch is not None else None
    try:
        apt_at = round(time.monotonic() - watcher.started, 3) if watcher else 0.0
        with parts("apt"):
            apt_run = _run_apt(plan, channel, plan.timeout)
        cache_after_apt = _cache_identity() if placed_cache else None
    finally:
        if plan.services_live:
            pass
        elif saved_policy is None:
            os.unlink(POLICY_RC_D)
        else:
            with open(POLICY_RC_D, "wb") as handle:
                handle.write(saved_policy)
    applied_fixes = []
    watched = None
    if plan.config_fixes and watcher:
        # --fix's own restarts are not the real run's downtime.
        with parts("downtime"):
            watched = {**watcher.stop(), "apt_started": apt_at}
    if plan.config_fixes:
        with parts("config fixes"):
            applied_fixes = config_fixes.apply(plan.config_fixes, plan.services_live)
    # apt marks .deb files it was given as manually installed; give back the
    # marks the real run would leave.
    # What no source offers does not depend on the marks: asked beside apt-mark.
    obsolete_run = start_command(OBSOLETE_ARGV) if plan.release_upgrade else None
    auto = [c.name for c in plan.transaction.changes if c.action in INSTALLING_ACTIONS and not c.manual]
    marks_status, marks_output = 0, ""
    if auto and not apt_run["timed_out"]:
        with parts("auto marks"):
            # Marks concern installed packages only: no lists to read.
            marks_status, marks_output = run_command(["apt-mark", *APT_QUIET_OPTIONS, "auto", *auto])
    channel.send("phase", name="inspect")
    with parts("state after"):
        after = package_states()
    with parts("hazards after"):
        hazards = _after_apt(plan, hazards_before, recorders, obsolete_run)
    hazards["before"] = {
        "libraries": hazards_before["libraries"],
        "boot": hazards_before["boot"],
        "autoremovable": hazards_before.get("autoremovable"),
        "kernel": hazards_before["kernel"],
    }
    with parts("audit"):
        audit_status, audit_output = run_command(["dpkg", "--audit"])
        check_status, check_output = run_command(["apt-get", "check", *APT_QUIET_OPTIONS])
    if watcher and watched is None:
        with parts("downtime"):
            watched = {**watcher.stop(), "apt_started": apt_at}
    with parts("upper"):
        upper, growth = session.measure() if session else ({}, {})
    return {
        "before": before,
        "after": after,
        "apt": apt_run,
        "audit": {"exit_status": audit_status, "output": audit_output},
        "check": {"exit_status": check_status, "output": check_output},
        "auto_marks": {"exit_status": marks_status, "output": marks_output[-2000:]},
        "upper_bytes": upper,
        "growth": growth,
        "upper_free_bytes": session.upper_free_bytes() if session else 1 << 40,
        "timings": parts.seconds,
        "hazards": hazards,
        "config_fixes": applied_fixes,
        "watched": watched,
        # Whether apt took the release's prepared cache as valid (or read
        # every list again): for --debug and the tests.
        "source_cache": None if placed_cache is None else ("reused" if cache_after_apt == placed_cache else "rebuilt"),
    }
