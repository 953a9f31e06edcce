"""The report: JSON (a versioned contract), apt-style text, and the saved copy.

Saved reports live in /var/log/apt-rehearse/, readable by root and adm only:
conffile details can hold secrets.
"""

from __future__ import annotations

import grp
import json
import os
import textwrap
from typing import Any

from apt_rehearse import __version__
from apt_rehearse.model.downtime import describe as describe_downtime
from apt_rehearse.model.config import Settings
from apt_rehearse.model.rehearsal import Rehearsal
from apt_rehearse.model.transaction import INSTALLING_ACTIONS
from apt_rehearse.store.files import write_atomically

SCHEMA = "apt-rehearse/1"

RED, YELLOW, GREEN, BOLD, RESET = "\033[1;31m", "\033[1;33m", "\033[1;32m", "\033[1m", "\033[0m"


def build(rehearsal: Rehearsal) -> dict[str, Any]:
    transaction = rehearsal.transaction
    tx_json = transaction.to_json()
    findings = sorted(rehearsal.findings, key=_finding_order)
    index = {id(f): place for place, f in enumerate(findings)}
    return {
        "schema": SCHEMA,
        "tool_version": __version__,
        "id": transaction.identity,
        "root": transaction.root,
        "started": rehearsal.started.isoformat(timespec="seconds"),
        "duration_s": rehearsal.duration_s,
        "verdict": rehearsal.verdict,
        "transaction": {
            "request": tx_json["request"],
            "release": tx_json["release"],
            "dpkg_status_sha256": tx_json["dpkg_status_sha256"],
            "changes": tx_json["changes"],
            "kept_back": tx_json["kept_back"],
            "successors": tx_json["successors"],
        },
        "findings": [f.to_json() for f in findings],
        "problems": [p.to_json(index) for p in rehearsal.problems],
        "phases": [{"name": name, "seconds": seconds} for name, seconds in rehearsal.phases],
        "replay_parts": rehearsal.replay_parts,
        "upper_bytes": rehearsal.upper_bytes,
        "disk": rehearsal.disk,
        **rehearsal.hazards,
        "notes": rehearsal.notes,
        "suggestion": _suggestion(rehearsal),
        "services": _services_summary(rehearsal.observations),
        "downtime": rehearsal.downtime,
        "downtime_watch": rehearsal.downtime_watch,
        "observations": rehearsal.observations,
        **({"config_fixes_made": rehearsal.config_fixes} if rehearsal.config_fixes else {}),
    }


def _suggestion(rehearsal: Rehearsal) -> dict[str, Any] | None:
    """The command that rehearses the same upgrade with the problems' package
    fixes added (never one the transaction installs already)."""
    tx = rehearsal.transaction
    installing = {c.package for c in tx.changes if c.action in INSTALLING_ACTIONS}
    also = sorted({name for p in rehearsal.problems for name in p.fix.packages if name not in installing})
    if (
        not also
        or not tx.request.split()[:1]
        or tx.request.split()[0] not in ("upgrade", "dist-upgrade", "full-upgrade")
    ):
        return None
    words = ["apt-rehearse"]
    if tx.root != "/":
        words += ["--root", tx.root]
    words += [w for w in tx.request.split() if w]
    missing = [name for name in also if name not in set(words)]
    if not missing:
        return None  # already rehearsed with them
    words += [item for name in missing for item in ("--also", name)]
    return {"also": missing, "command": " ".join(words)}


def _services_summary(observations: dict[str, Any]) -> dict[str, Any] | None:
    if not observations.get("baseline"):
        return None
    summary: dict[str, Any] = {"cgroup": observations.get("cgroup")}
    for phase in ("boot", "settle_after_upgrade", "reboot"):
        if phase in observations:
            summary[phase] = {"state": observations[phase]["state"], "seconds": observations[phase]["seconds"]}
    for phase in ("baseline", "upgraded", "rebooted"):
        if phase in observations:
            units = observations[phase]["units"]
            summary[phase] = {
                "active_services": sum(
                    1 for n, u in units.items() if n.endswith(".service") and u["active"] == "active"
                ),
                "failed": sorted(n for n, u in units.items() if u["active"] == "failed"),
                "listening": sorted({f"{s['proto']}/{s['port']}" for s in observations[phase]["sockets"]}),
                "http": {k: v["status"] for k, v in observations[phase]["http"].items()},
            }
    return summary


def _finding_order(finding: Any) -> tuple[int, str, str]:
    return ({"block": 0, "warn": 1, "info": 2}.get(finding.severity, 3), finding.check, finding.subject)


def _wrap(names: list[str], width: int) -> list[str]:
    return textwrap.wrap(
        " ".join(names),
        width=width,
        initial_indent="  ",
        subsequent_indent="  ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def render_text(report: dict[str, Any], color: bool = False, width: int = 80) -> str:
    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    changes = report["transaction"]["changes"]
    lines = _transaction_lines(report, paint, width)
    lines.append("")
    findings = report["findings"]
    if "fix_of" in report:
        lines += _fix_lines(report["fix_of"], paint)
    problems = report.get("problems") or []
    lines += _problem_lines(problems, findings, paint)
    in_problems = {place for problem in problems for place in problem["findings"]}
    # A downtime of no consequence for the verdict is told in its own section.
    shown = {place for place, f in enumerate(findings) if not (f["check"] == "downtime" and f["severity"] == "info")}
    others = [f for place, f in enumerate(findings) if place not in in_problems and place in shown]
    if others:
        lines.append("Other findings:" if problems else "Rehearsal findings:")
        for finding in others:
            lines += _finding_lines(finding, "  ", paint)
    elif changes and not shown:
        lines.append("Rehearsal findings: none")
    lines += _downtime_lines(report)
    if report.get("suggestion"):
        lines.append(
            f"N: the fixes add {', '.join(report['suggestion']['also'])}; rehearse the upgrade with them "
            "(or add --fix, which does it and says what each fixes):"
        )
        lines.append(f"    {report['suggestion']['command']}")
    checked = _checked(report)
    if checked:
        lines.append(f"N: also checked {checked}")
    for note in report.get("notes", []):
        lines.append(f"N: {note}")
    blocking = sum(1 for f in findings if f["severity"] == "block")
    warnings = sum(1 for f in findings if f["severity"] == "warn")
    blocking_problems = sum(1 for p in problems if p["severity"] == "block")
    verdict = report["verdict"]
    summary = {
        "pass": paint(GREEN, "PASS") + ": the rehearsal found nothing against this transaction.",
        "warn": paint(YELLOW, "WARN") + f": {warnings} warning(s); the real run may go ahead.",
        "block": paint(RED, "BLOCK")
        + (f": {blocking_problems} problem(s), " if blocking_problems else ": ")
        + f"{blocking} blocking finding(s); policy stops the real run.",
    }[verdict]
    lines.append(f"Verdict: {summary}")
    return "\n".join(lines) + "\n"


def _transaction_lines(report: dict[str, Any], paint: Any, width: int) -> list[str]:
    """The changes, as apt shows them."""
    changes = report["transaction"]["changes"]
    by_action: dict[str, list[str]] = {}
    for change in changes:
        mark = "*" if change["action"] == "purge" else ""
        by_action.setdefault(change["action"], []).append(change["package"] + mark)
    lines = [
        f"apt-rehearse {report['tool_version']}: {report['transaction']['request'] or 'transaction'} of {report['root']}"
        f" (transaction {report['id'][:12]})"
    ]
    sections = (
        (("remove", "purge"), "The following packages will be REMOVED:", RED),
        (("install",), "The following NEW packages will be installed:", ""),
        (("upgrade",), "The following packages will be upgraded:", ""),
        (("downgrade",), "The following packages will be DOWNGRADED:", YELLOW),
        (("reinstall",), "The following packages will be reinstalled:", ""),
    )
    for actions, title, code in sections:
        names = sorted(n for a in actions for n in by_action.get(a, []))
        if names:
            lines.append(paint(code, title) if code else title)
            lines += _wrap(names, width)
    kept = report["transaction"]["kept_back"]
    if kept:
        lines.append("The following packages have been kept back:")
        lines += _wrap(kept, width)
    count = {a: len(by_action.get(a, [])) for a in ("upgrade", "install", "downgrade", "remove", "purge", "reinstall")}
    lines.append(
        f"{count['upgrade']} upgraded, {count['install']} newly installed, {count['downgrade']} downgraded, "
        f"{count['remove'] + count['purge']} to remove and {len(kept)} not upgraded."
    )
    return lines


def _label(severity: str, paint: Any) -> str:
    return {"block": paint(RED, "BLOCK"), "warn": paint(YELLOW, "WARN "), "info": "info "}[severity]


def _finding_lines(finding: dict[str, Any], indent: str, paint: Any) -> list[str]:
    shown = [f"{indent}{_label(finding['severity'], paint)} {finding['message']}"]
    shown += [f"{' ' * len(indent)}      | {tail}" for tail in finding["details"].get("output_tail", [])[-5:]]
    return shown


def _problem_lines(problems: list[dict[str, Any]], findings: list[dict[str, Any]], paint: Any) -> list[str]:
    """Each problem: title, cause, its findings, its fix, and with --fix whether the fix worked."""
    if not problems:
        return []
    lines = [f"Problems ({len(problems)}), the most costly first:"]
    for number, problem in enumerate(problems, 1):
        lines.append(f"  {_label(problem['severity'], paint)} {number}. {problem['title']}")
        lines.append(f"     cause: {problem['cause']['text']}")
        for place in problem["findings"]:
            lines += _finding_lines(findings[place], "     - ", paint)
        fix = problem.get("fix") or {}
        if fix.get("packages"):
            lines.append(f"     fix: add {' '.join(fix['packages'])}" + (f" ({fix['why']})" if fix.get("why") else ""))
        for diff in fix.get("diffs") or []:
            lines.append(f"     fix: change {diff['path']} (never done for you):")
            lines += [f"       {row}" for row in diff["diff"].splitlines()]
        if not fix.get("packages") and not fix.get("diffs") and fix.get("why"):
            lines.append(f"     fix: none proposed: {fix['why']}")
    return lines


def _fix_lines(fix_of: dict[str, Any] | None, paint: Any) -> list[str]:
    """What --fix found: each problem of the rehearsal without the fixes,
    fixed or not, and the command for the real run."""
    if fix_of is None:
        return ["N: --fix: the rehearsal proposes no package to add; nothing was rehearsed again", ""]
    what = [f"{' '.join(fix_of['added'])} added"] if fix_of["added"] else []
    what += [f"{edit} changed in the copy" for edit in fix_of.get("changed") or []]
    lines = [
        f"Rehearsed again with {' and '.join(what)}. The problems without the fixes "
        f"({fix_of['verdict'].upper()}, report {fix_of.get('report_path') or 'not saved'}):"
    ]
    for number, problem in enumerate(fix_of["problems"], 1):
        state = {True: paint(GREEN, "fixed    "), False: paint(RED, "not fixed"), None: "not tried"}[
            problem["verified"]
        ]
        lines.append(f"  {state} {number}. {problem['title']}")
        if problem.get("verified_detail"):
            lines.append(f"            {problem['verified_detail']}")
    lines += [f"The real run, with the fixes: {fix_of['real_run']}", ""]
    return lines


def _downtime_lines(report: dict[str, Any]) -> list[str]:
    watch = report.get("downtime_watch")
    if not watch:
        return []
    entries = report.get("downtime") or []
    if not entries:
        return [
            f"Downtime: none: no service stopped or stopped answering during the run ({watch['targets']} "
            f"port(s) and page(s) probed every {watch['interval_s']:g} s)"
        ]
    low, high = watch["host_forecast_s"]
    total = f", the host {low:g}-{high:g} s in all" if high else ""
    lines = [f"Downtime during the real run (forecast from the rehearsal's probes{total}):"]
    lines += [f"  {describe_downtime(entry)}" for entry in entries]
    return lines


def _checked(report: dict[str, Any]) -> str:
    """What the hazard checks looked at, in one line: a pass means something."""
    parts = []
    libraries = report.get("libraries") or {}
    if libraries.get("checked"):
        parts.append(f"the libraries of {libraries['objects']} program(s) and module(s)")
    kernels = (report.get("boot") or {}).get("kernels") or {}
    if kernels:
        parts.append(f"{len(kernels)} kernel(s) and their initramfs")
    references = (report.get("boot") or {}).get("references") or []
    if references:
        parts.append(f"{len(references)} bootloader reference(s)")
    kernel = report.get("kernel")
    if kernel:
        parts.append(
            f"the kernel settings for the next boot ({kernel['sysctl']} sysctl key(s), {kernel['modules']} "
            f"module(s) to load, {kernel['binfmt']} binary format(s))"
        )
    if report.get("disk"):
        parts.append("the free space of " + ", ".join(row["mount"] for row in report["disk"]))
    return "; ".join(parts)


def finish(
    rehearsal: Rehearsal, settings: Settings, duration_s: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The final report of a run: built, timed, with the keys the front
    found beside the rehearsal (``extra``: the system class), saved when
    there was something to rehearse."""
    document = build(rehearsal)
    document["duration_s"] = round(duration_s, 3)
    document.update(extra or {})
    if settings.save_report and not rehearsal.transaction.is_empty:
        document["report_path"] = save(document, render_text(document), settings.log_dir, rehearsal.replay_log)
    return document


def save(report: dict[str, Any], text: str, log_dir: str, replay_log: str = "") -> str:
    """Write <log_dir>/<time>-<id>.json, .txt and .log (apt's output), root and adm only."""
    os.makedirs(log_dir, mode=0o750, exist_ok=True)
    try:
        adm = grp.getgrnam("adm").gr_gid
    except KeyError:
        adm = 0
    os.chown(log_dir, 0, adm)
    os.chmod(log_dir, 0o2750)
    stamp = report["started"].replace(":", "").replace("-", "").replace("+0000", "Z")[:15]
    base = os.path.join(log_dir, f"{stamp}-{report['id'][:12]}")
    report = dict(report, report_path=base + ".json")
    files = [(".json", json.dumps(report, indent=2) + "\n"), (".txt", text), (".log", replay_log)]
    for suffix, content in files:
        write_atomically(base + suffix, content, 0o640, adm)
    latest = os.path.join(log_dir, "latest.json")
    try:
        os.unlink(latest)
    except FileNotFoundError:
        pass
    os.symlink(os.path.basename(base + ".json"), latest)
    return base + ".json"
