"""Turn what the rehearsal saw into findings.

Pure functions of the transaction, the facts read from the target and the
replay's raw observations; no I/O, so each can be tested on its own.
"""

from __future__ import annotations

import re
from typing import Any

from apt_rehearse.model.replay_result import ReplayResult
from apt_rehearse.model.package_facts import ConffilePrompt, RemovalFacts
from apt_rehearse.model.policy import Finding
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, REMOVING_ACTIONS, Transaction

SCRIPT_NAMES = {
    "post-installation": "postinst",
    "pre-installation": "preinst",
    "pre-removal": "prerm",
    "post-removal": "postrm",
}
SEGMENT_RE = re.compile(
    r"^(?:Preparing to unpack \S*/(?P<file>[^/_\s]+)_\S+ \.\.\."
    r"|Unpacking (?P<unpack>\S+) "
    r"|Setting up (?P<setup>\S+) "
    r"|Removing (?P<remove>\S+) "
    r"|Purging configuration files for (?P<purge>\S+) "
    r"|Selecting previously unselected package (?P<select>[^\s.]+(?:\.[^\s.]+)*)\.$)"
)
ERROR_HEAD_RE = re.compile(r"^dpkg: error processing (?:package|archive) (?P<subject>\S+) \((?P<action>--[a-z-]+)\):")
SCRIPT_ERROR_RE = re.compile(
    r"^\s*(?:installed |new |old |old-)?(?P<package>\S+) package (?P<script>post-installation|pre-installation|"
    r"pre-removal|post-removal) script subprocess (?:returned error exit status (?P<status>\d+)|was killed by signal \((?P<signal>[^)]*)\))"
)
# apt's status line for each package dpkg failed on (APT::Status-Fd):
# "pmerror:PACKAGE[:ARCH]:PERCENT:MESSAGE", or the .deb's path for an unpack.
PMERROR_RE = re.compile(r"^pmerror:(?P<subject>.+?):(?P<percent>\d+(?:\.\d+)?):(?P<message>.*)$")
CONFFILE_RE = re.compile(r"^Configuration file '(?P<path>[^']+)'")
NO_SPACE_MARKERS = ("No space left on device", "ENOSPC")
# What a program says when the network it reaches for is not there: the
# sandbox has only loopback, the real run has the machine's network.
NETWORK_MARKERS = (
    "Temporary failure in name resolution",
    "Temporary failure resolving",
    "Could not resolve host",
    "Could not resolve",
    "unable to resolve host address",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "Failed to establish a new connection",
    "getaddrinfo",
    "keyserver receive failed",
    "Connection timed out",
    "Failed to connect to",
)
# What the sandbox's confinement refuses (confine.py): the host kernel's
# settings, modules, clock, swap, devices. The real run has them.
KERNEL_MARKERS = re.compile(
    r"/proc/sys/\S*: Read-only file system|sysctl: (permission denied on key|setting key .*Read-only file system)"
    r"|modprobe: ERROR: could not insert .*Operation not permitted|insmod: ERROR: could not insert"
    r"|date: cannot set date: Operation not permitted|settimeofday\(\) failed|clock_settime.*Operation not permitted"
    r"|swapon: .*(swapon failed: )?Operation not permitted|swapoff: .*Operation not permitted"
    r"|mknod: .*Operation not permitted|binfmt_misc.*(Operation not permitted|Read-only file system)"
    r"|kexec_(file_)?load failed.*Operation not permitted"
)
TAIL_LINES = 15
# What a script failed at that the real run has: (what it was doing, what the real run can).
SANDBOX_LIMITS = {
    "Needs-Kernel": ("changing the host kernel's state, which the sandbox refuses", "the real run can"),
    "Needs-Network": ("reaching for the network, which the sandbox does not have", "the real run has it"),
}


def _bare(name: str) -> str:
    return name.split(":", 1)[0]


def segment_output(output: str) -> dict[str, list[str]]:
    """apt/dpkg output split into the lines each package produced."""
    segments: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        match = SEGMENT_RE.match(line)
        if match:
            current = _bare(next(v for v in match.groupdict().values() if v))
        if current is not None:
            segments.setdefault(current, []).append(line)
    return segments


def script_failures(status_lines: list[str], output: str) -> list[dict[str, Any]]:
    """Every package dpkg failed on: apt's status lines name each one with
    dpkg's message (pmerror:); the output adds what dpkg was doing and the
    lines the package printed."""
    lines = output.splitlines()
    actions = {head.group("subject"): head.group("action") for head in map(ERROR_HEAD_RE.match, lines) if head}
    segments = segment_output(output)
    failures = []
    for line in status_lines:
        error = PMERROR_RE.match(line)
        if not error:
            continue
        subject, message = error.group("subject").strip(), error.group("message").strip()
        script_match = SCRIPT_ERROR_RE.match(message)
        archive = subject.endswith(".deb")
        package = _bare(script_match.group("package") if script_match else subject.rsplit("/", 1)[-1].split("_", 1)[0])
        action = actions.get(subject) or ("--unpack" if archive else "--configure")
        entry: dict[str, Any] = {"package": package, "dpkg_action": action, "message": message}
        if script_match:
            entry["script"] = SCRIPT_NAMES[script_match.group("script")]
            if script_match.group("status") is not None:
                entry["exit_status"] = int(script_match.group("status"))
            else:
                entry["signal"] = script_match.group("signal")
        own = segments.get(package, [])
        cut = [ln for ln in own if not ln.startswith("dpkg: error processing")]
        entry["output_tail"] = cut[-TAIL_LINES:]
        failures.append(entry)
    return failures


def needs_network(lines: list[str]) -> str | None:
    """The line that says a script wanted the network, if one does."""
    for line in lines:
        if any(marker in line for marker in NETWORK_MARKERS):
            return line.strip()[:200]
    return None


def needs_kernel(lines: list[str]) -> str | None:
    """The line that says a script reached for the host kernel, if one does."""
    for line in lines:
        if KERNEL_MARKERS.search(line):
            return line.strip()[:200]
    return None


def removal_findings(transaction: Transaction, facts: dict[str, RemovalFacts]) -> list[Finding]:
    findings = []
    for change in transaction.by_action(*REMOVING_ACTIONS):
        fact = facts.get(change.name, RemovalFacts([], []))
        successor = transaction.successors.get(change.package)
        kinds, marks = [], []
        if change.requested:
            kinds.append("Remove-Requested")
            marks.append("as requested")
        else:
            kinds.append("Remove")
            if successor and change.manual:
                # Renamed, not lost: what needs the old name still has it. The
                # sysadmin's "manual" does not pass to the new name, though.
                kinds.append("Remove-Renamed")
                automatic = any(c.package == successor and not c.manual for c in transaction.changes)
                marks.append(
                    f"manually installed; renamed: {successor} provides it"
                    + (" and is marked automatic" if automatic else "")
                )
            elif successor:
                marks.append(f"renamed: {successor} provides it")
            elif change.manual:
                kinds.append("Remove-Manual")
                marks.append("manually installed")
            if fact.enabled_services:
                kinds.append("Remove-Service")
                marks.append("ships enabled " + ", ".join(fact.enabled_services))
            if fact.web_modules:
                kinds.append("Remove-Module")
                marks.append("ships " + ", ".join(sorted({m.split(":")[0] for m in fact.web_modules})) + " module(s)")
        verb = "PURGED" if change.action == "purge" else "REMOVED"
        replacement = transaction.replacements.get(change.package)
        if replacement and len(kinds) > 1 and not successor:
            marks.append(f"likely replaced by {replacement}")
        message = f"{change.package} {change.from_version} would be {verb}" + (
            f" ({'; '.join(marks)})" if marks else ""
        )
        findings.append(
            Finding(
                "removal",
                kinds,
                change.package,
                message,
                {
                    "arch": change.arch,
                    "version": change.from_version,
                    "manual": change.manual,
                    "requested": change.requested,
                    "enabled_services": fact.enabled_services,
                    "web_modules": fact.web_modules,
                    "action": change.action,
                    "replacement": replacement,
                    "successor": successor,
                },
            )
        )
    return findings


def _installed(state: dict[str, str] | None) -> str | None:
    """The installed version, or None when the package is not (fully) on the system."""
    if not state or not state.get("version"):
        return None
    status = state.get("status", "")
    if len(status) >= 2 and status[1] in ("n", "c"):  # not-installed, config-files
        return None
    return state["version"]


def expected_versions(transaction: Transaction, before: dict[str, dict[str, str]]) -> dict[str, str | None]:
    expected = {name: _installed(state) for name, state in before.items()}
    for change in transaction.changes:
        expected[change.name] = change.to_version if change.action in INSTALLING_ACTIONS else None
        if change.action in INSTALLING_ACTIONS and change.from_version and change.name not in before:
            # An upgrade that changes the architecture (linux-libc-dev: amd64
            # -> all): dpkg knew the old version under the old name:arch.
            for name, state in before.items():
                if name.rsplit(":", 1)[0] == change.package and _installed(state) == change.from_version:
                    expected[name] = None
    return expected


def state_findings(transaction: Transaction, replay: ReplayResult, timeout: float = 0) -> list[Finding]:
    findings, failures, excused = _script_findings(replay)
    apt = replay.apt
    output = apt.output
    if apt.timed_out:
        findings.append(
            Finding(
                "timeout",
                ["Timeout"],
                "apt",
                f"the replay did not finish within {int(timeout) or 'the'} seconds; "
                "a maintainer script may hang (the rehearsal was stopped)",
                {"output_tail": output.splitlines()[-TAIL_LINES:]},
            )
        )
    findings += _broken_state_findings(replay, excused)
    findings += _mismatch_findings(transaction, replay, {f["package"] for f in failures})
    findings += _apt_and_dpkg_findings(replay, findings, failures)
    return findings


def _script_findings(replay: ReplayResult) -> tuple[list[Finding], list[dict[str, Any]], set[str]]:
    """The maintainer scripts that failed, and which of them failed at the
    sandbox's limits (and the packages left unconfigured under those)."""
    findings: list[Finding] = []
    apt = replay.apt
    output = apt.output
    failures = script_failures(apt.status_lines, output)
    offline = {f["package"]: needs_network(f.get("output_tail", [])) for f in failures}
    offline = {package: line for package, line in offline.items() if line}
    # What the confinement refused: the sandbox's limit, as the network is.
    confined = {f["package"]: needs_kernel(f.get("output_tail", [])) for f in failures if f["package"] not in offline}
    confined = {package: line for package, line in confined.items() if line}
    limited = {**{p: "Needs-Network" for p in offline}, **{p: "Needs-Kernel" for p in confined}}
    # Packages left unconfigured only because a limited one failed under them.
    consequences = {f["package"] for f in failures if limited and "dependency problems" in f["message"]}
    for failure in failures:
        script = failure.get("script", "dpkg")
        status = failure.get("exit_status")
        how = (
            f"exit status {status}"
            if status is not None
            else f"signal {failure.get('signal', '?')}"
            if "signal" in failure
            else failure["message"]
        )
        network = offline.get(failure["package"])
        if failure["package"] in consequences:
            kind = "Needs-Network" if "Needs-Network" in limited.values() else "Needs-Kernel"
            why = "without the network" if kind == "Needs-Network" else "inside the sandbox's confinement"
            findings.append(
                Finding(
                    "script-failure",
                    [kind],
                    failure["package"],
                    f"{failure['package']}: left unconfigured ({how}) because "
                    f"{', '.join(sorted(limited))} could not be rehearsed {why}",
                    failure,
                )
            )
            continue
        reason = confined.get(failure["package"]) or network
        if reason:
            # Not a verdict on the package: the rehearsal could not give it what it reached for.
            kind = "Needs-Kernel" if failure["package"] in confined else "Needs-Network"
            doing, real_run = SANDBOX_LIMITS[kind]
            findings.append(
                Finding(
                    "script-failure",
                    [kind],
                    failure["package"],
                    f"{failure['package']}: {script} failed ({how}) during {failure['dpkg_action']} "
                    f'{doing} ("{reason}"); {real_run}: this step could not be rehearsed',
                    failure,
                )
            )
            continue
        findings.append(
            Finding(
                "script-failure",
                ["Script-Failure"],
                failure["package"],
                f"{failure['package']}: {script} failed ({how}) during {failure['dpkg_action']}",
                failure,
            )
        )
    return findings, failures, set(limited) | consequences


def _broken_state_findings(replay: ReplayResult, excused: set[str]) -> list[Finding]:
    """Packages dpkg leaves unpacked, half-configured, ... (``excused``: said already as the sandbox's limit)."""
    findings: list[Finding] = []
    after = replay.after
    for name, state in sorted(after.items()):
        status = state.get("status", "")
        if _bare(name) in excused:
            continue  # said above: the sandbox's limit, not the package's state
        if len(status) >= 2 and (status[1] in "UFHWt" or status[2:3] == "R"):
            meaning = {
                "U": "unpacked but not configured",
                "F": "half-configured",
                "H": "half-installed",
                "W": "awaiting triggers",
                "t": "with triggers pending",
            }.get(status[1], "needing reinstallation")
            findings.append(
                Finding(
                    "package-state",
                    ["Broken-State"],
                    _bare(name),
                    f"{name} is left {meaning} (dpkg status '{status.strip()}')",
                    {"status": status.strip(), "version": state.get("version")},
                )
            )
    return findings


def _mismatch_findings(transaction: Transaction, replay: ReplayResult, failed_packages: set[str]) -> list[Finding]:
    """apt inside doing something else than the transaction said."""
    apt = replay.apt
    findings: list[Finding] = []
    after = replay.after
    if not apt.timed_out:
        expected = expected_versions(transaction, replay.before)
        actual = {name: _installed(state) for name, state in after.items()}
        differences = []
        for name in sorted(set(expected) | set(actual)):
            want, got = expected.get(name), actual.get(name)
            if want != got and _bare(name) not in failed_packages:
                differences.append({"package": name, "expected": want, "actual": got})
        for change in transaction.by_action("purge"):
            status = (after.get(change.name) or {}).get("status", "")
            if status[1:2] == "c" and change.package not in failed_packages:
                differences.append({"package": change.name, "expected": "purged", "actual": "config-files"})
        if differences and apt.exit_status == 0:
            summary = ", ".join(
                f"{d['package']} {d['expected'] or 'absent'} -> {d['actual'] or 'absent'}" for d in differences[:5]
            )
            more = f" and {len(differences) - 5} more" if len(differences) > 5 else ""
            findings.append(
                Finding(
                    "replay-mismatch",
                    ["Mismatch"],
                    "transaction",
                    f"apt did not do exactly what the transaction said: {summary}{more}",
                    {"differences": differences},
                )
            )
    return findings


def _apt_and_dpkg_findings(
    replay: ReplayResult, findings: list[Finding], failures: list[dict[str, Any]]
) -> list[Finding]:
    """apt failing by itself, dpkg --audit, apt-get check (``findings``: those made already)."""
    apt = replay.apt
    output = apt.output
    found: list[Finding] = []
    if apt.exit_status != 0 and not failures and not apt.timed_out:
        tail = [line for line in output.splitlines() if line.startswith(("E:", "W:", "dpkg:"))][-TAIL_LINES:]
        found.append(
            Finding(
                "apt",
                ["Apt-Failure"],
                "apt",
                f"apt failed to apply the transaction (exit status {apt.exit_status})"
                + (f": {tail[-1]}" if tail else ""),
                {"output_tail": tail or output.splitlines()[-TAIL_LINES:]},
            )
        )

    audit = replay.audit.output.strip()
    if audit and not any(f.check in ("package-state", "script-failure") for f in findings + found):
        found.append(
            Finding(
                "dpkg-audit",
                ["Broken-State"],
                "dpkg",
                "dpkg --audit reports problems after the run",
                {"output": audit.splitlines()[:40]},
            )
        )
    check = replay.check
    if check.exit_status != 0 and not apt.timed_out:
        found.append(
            Finding(
                "apt-check",
                ["Dependency-Check"],
                "apt",
                "apt-get check finds broken dependencies after the run",
                {"output": check.output.strip().splitlines()[-TAIL_LINES:]},
            )
        )
    return found


def conffile_findings(predicted: list[ConffilePrompt], output: str, nobody_answers: bool = False) -> list[Finding]:
    """Conffile prompts, predicted from checksums and confirmed by dpkg's own words."""
    seen: dict[str, str] = {p.path: p.package for p in predicted}
    segments_owner = None
    confirmed = set()
    for line in output.splitlines():
        segment = SEGMENT_RE.match(line)
        if segment:
            segments_owner = _bare(next(v for v in segment.groupdict().values() if v))
        match = CONFFILE_RE.match(line)
        if match:
            confirmed.add(match.group("path"))
            seen.setdefault(match.group("path"), segments_owner or "?")
    findings = []
    for path, package in sorted(seen.items()):
        kinds = ["Conffile-Prompt", "Conffile-Prompt-Unattended"] if nobody_answers else ["Conffile-Prompt"]
        findings.append(
            Finding(
                "conffile",
                kinds,
                package,
                f"{path}: changed locally and by the new {package}; dpkg will ask which to keep",
                {"path": path, "package": package, "seen_in_replay": path in confirmed},
            )
        )
    return findings


def out_of_room(replay: ReplayResult) -> bool:
    output = replay.apt.output
    return replay.upper_free_bytes < (1 << 20) or any(marker in output for marker in NO_SPACE_MARKERS)


def _megabytes(value: int) -> str:
    return f"{value / 1e6:.0f} MB" if abs(value) >= 1e6 else f"{value / 1e3:.0f} kB"


def disk_findings(rows: list[dict[str, Any]]) -> list[Finding]:
    """Too little room on a real mount for what the run writes there.

    dpkg writes each new file beside the old one before the rename, so the
    largest replaced file is needed for a moment on top of the net growth.
    """
    findings = []
    for row in rows:
        needed = row["growth_bytes"] + row["peak_extra_bytes"]
        if needed <= 0:
            continue
        left = row["free_bytes"] - needed
        where = row["mount"]
        if left < 0:
            findings.append(
                Finding(
                    "disk",
                    ["Disk-Space"],
                    where,
                    f"{where} needs {_megabytes(needed)} more, has {_megabytes(row['free_bytes'])} free",
                    dict(row),
                )
            )
        elif left < max(row["size_bytes"] * 0.05, 0):
            findings.append(
                Finding(
                    "disk",
                    ["Disk-Margin"],
                    where,
                    f"{where} keeps only {_megabytes(left)} free after the run (needs {_megabytes(needed)})",
                    dict(row),
                )
            )
    return findings
