"""Compare observations of the booted services: before, after, after a reboot.

Pure functions over the JSON observations (observe.py), so each rule can be
tested without booting anything. Only what worked in the baseline can break:
a unit already failed before the upgrade is not a finding.
"""

from __future__ import annotations

import os
import re

from apt_rehearse.model.observation import Observation, kernel_picked
from apt_rehearse.model.policy import Finding
from apt_rehearse.model.problem import line_diff

GOOD_STATES = ("active", "reloading", "activating")


def _superseded(name: str, before: Observation, after: Observation) -> bool:
    """A unit stopped (not failed) whose every listening port another unit
    now serves: the package moved its daemon to another unit (trixie's
    postfix: postfix@-.service to postfix.service)."""
    ports = {(s["proto"], s["port"]) for s in before.sockets if s.get("unit") == name}
    owners = {(s["proto"], s["port"]): s.get("unit") for s in after.sockets}
    return bool(ports) and all(owners.get(port) not in (None, name) for port in ports)


def _moved_by_kernel(port: int, before: Observation, after: Observation) -> bool:
    """A port in the kernel's ephemeral range whose unit listens again after,
    elsewhere: one the kernel picks at every start (a socket bound to port 0:
    squid's DNS sockets, containerd's stream server), not one a client knows."""
    if not kernel_picked(port):
        return False
    units = {s.get("unit") for s in before.sockets if s["port"] == port} - {None, ""}
    return any(s.get("unit") in units for s in after.sockets)


def _units_lost(before: Observation, after: Observation, when: str) -> list[Finding]:
    findings = []
    for name, state in sorted(before.units.items()):
        if state["active"] != "active" or not name.endswith(".service"):
            continue
        now = after.units.get(name)
        # "activating (auto-restart)": it failed and systemd waits to start it
        # again (named with a rejected option, until its start limit).
        if now is not None and now["active"] in GOOD_STATES and now.get("sub") != "auto-restart":
            continue
        if (now is None or now["active"] == "inactive") and _superseded(name, before, after):
            continue
        if state["sub"] == "exited" and (now is None or now["active"] != "failed"):
            continue  # a oneshot that ran at boot: only its failure means something
        what = (
            "gone" if now is None or now["load"] == "not-found" else now["active"] + (f" ({now['sub']})" if now else "")
        )
        findings.append(
            Finding(
                "service",
                ["Service-Failed"],
                name,
                f"{name} was active before and is {what} {when}",
                {
                    "before": state,
                    "after": now,
                    "when": when,
                    "journal": after.journal.get(name, [])[-15:],
                    "output_tail": after.journal.get(name, [])[-5:],
                },
            )
        )
    return findings


def _sockets_lost(before: Observation, after: Observation, when: str) -> list[Finding]:
    findings = []
    now = {(s["proto"], s["port"]) for s in after.sockets}
    reported = set()
    for sock in before.sockets:
        key = (sock["proto"], sock["port"])
        if key in now or key in reported:
            continue
        reported.add(key)
        unit = sock.get("unit") or "a process"
        new_ports = sorted({s["port"] for s in after.sockets if s.get("unit") == sock.get("unit") and sock.get("unit")})
        if _moved_by_kernel(sock["port"], before, after):
            continue
        elsewhere = f"; {unit} now listens on {', '.join(map(str, new_ports))}" if new_ports else ""
        findings.append(
            Finding(
                "socket",
                ["Lost-Socket"],
                unit,
                f"{sock['proto'].upper()} port {sock['port']} ({unit}) no longer listens {when}{elsewhere}",
                {"before": sock, "now_listening": new_ports, "when": when},
            )
        )
    return findings


def _http_changed(before: Observation, after: Observation, when: str) -> list[Finding]:
    findings = []
    for key, page in sorted(before.http.items()):
        new = after.http.get(key)
        port = key.split("/", 1)[0]
        subject = f"http://localhost:{key}"
        if new is None and _moved_by_kernel(int(port), before, after):
            continue  # that page is now on the port the kernel gave its unit this time
        if new is None:
            findings.append(
                Finding(
                    "http",
                    ["Http-Changed"],
                    subject,
                    f"{subject} answered HTTP {page['status']} before and does not answer {when}",
                    {"before": page, "after": None, "when": when, "port": int(port)},
                )
            )
            continue
        if new.get("php_source") and not page.get("php_source"):
            message = f"{subject} now serves PHP source instead of its page ({new['content_type'] or 'no type'}) {when}"
        elif new["status"] != page["status"]:
            message = f"{subject} answered HTTP {page['status']} before, HTTP {new['status']} {when}"
        elif new["content_type"] != page["content_type"]:
            message = f"{subject} changed content type from {page['content_type']} to {new['content_type']} {when}"
        elif page.get("stable") and new["sha256"] != page["sha256"]:
            findings.append(
                Finding(
                    "http",
                    ["Http-Body-Changed"],
                    subject,
                    f"{subject} serves a different page {when} (same status {new['status']})",
                    {"before": page, "after": new, "when": when, "port": int(port)},
                )
            )
            continue
        else:
            continue
        findings.append(
            Finding(
                "http",
                ["Http-Changed"],
                subject,
                message,
                {"before": page, "after": new, "when": when, "port": int(port)},
            )
        )
    return findings


def _config_tests(before: Observation, after: Observation, when: str) -> list[Finding]:
    findings = []
    for name, result in sorted(before.config_tests.items()):
        new = after.config_tests.get(name)
        if "modules" in result:
            if new is None:
                continue
            lost = sorted(set(result["modules"]) - set(new.get("modules", [])))
            if lost:
                owner = "apache" if name.startswith("apache") else "php"
                findings.append(
                    Finding(
                        "module",
                        ["Module-Lost"],
                        owner,
                        f"{owner} loses module(s) {', '.join(lost)} {when} ({name})",
                        {"lost": lost, "test": name, "when": when},
                    )
                )
            continue
        if result["exit_status"] != 0 or new is None or new["exit_status"] == 0:
            continue
        kinds = ["Config-Test"] + (["Sshd-Config"] if name.startswith("sshd") else [])
        findings.append(
            Finding(
                "config-test",
                kinds,
                name.split()[0],
                f"'{name}' passed before and fails {when} (exit status {new['exit_status']})",
                {"test": name, "output_tail": new.get("output", []), "when": when},
            )
        )
    return findings


def _probes(before: Observation, after: Observation, when: str) -> list[Finding]:
    findings = []
    for name, result in sorted(before.probes.items()):
        new = after.probes.get(name)
        if not result["ok"] or new is None or new["ok"]:
            continue
        findings.append(
            Finding(
                "probe",
                ["Probe-Failed"],
                name,
                f"probe {name} passed before and fails {when}: {new['detail']}",
                {"before": result["detail"], "after": new["detail"], "when": when},
            )
        )
    return findings


WEB_SERVER_UNITS = {
    "/etc/nginx/": "nginx.service",
    "/etc/apache2/": "apache2.service",
    "/etc/lighttpd/": "lighttpd.service",
    "/etc/haproxy/": "haproxy.service",
}


def _like(name: str) -> str:
    return re.sub(r"\d+(?:\.\d+)*", "#", name)


def _dangling_sockets(before: Observation, after: Observation, when: str) -> list[Finding]:
    """A web server's configuration names a unix socket that was there before
    the upgrade and is not after it (PHP-FPM's, renamed with its version)."""
    existed = {(r["file"], r["path"]) for r in before.socket_references if r.get("exists")}
    before_beside = {p for r in before.socket_references for p in r.get("beside") or []}
    findings = []
    for ref in after.socket_references:
        if ref.get("exists") or (ref["file"], ref["path"]) not in existed:
            continue
        # A socket beside it now that was not there before, of the same shape: its new name.
        instead = next(
            (
                p
                for p in ref.get("beside") or []
                if p not in before_beside and _like(os.path.basename(p)) == _like(os.path.basename(ref["path"]))
            ),
            None,
        )
        unit = next((u for prefix, u in WEB_SERVER_UNITS.items() if ref["file"].startswith(prefix)), "")
        message = f"{ref['file']} line {ref['line']} points at {ref['path']}, which existed before and does not {when}"
        details = {
            "file": ref["file"],
            "line": ref["line"],
            "path": ref["path"],
            "text": ref["text"],
            "unit": unit,
            "instead": instead,
            "when": when,
        }
        if instead:
            message += f" ({instead} does)"
            new_text = ref["text"].replace(ref["path"], instead)
            details["diff"] = line_diff(ref["file"], ref["line"], ref["text"], new_text)
        findings.append(Finding("socket-reference", ["Dangling-Socket"], ref["file"], message, details))
    return findings


def compare(before: Observation, after: Observation, when: str) -> list[Finding]:
    findings = []
    for rule in (_units_lost, _sockets_lost, _http_changed, _config_tests, _probes, _dangling_sockets):
        findings += rule(before, after, when)
    return findings


def service_findings(
    baseline: Observation, upgraded: Observation | None, rebooted: Observation | None
) -> list[Finding]:
    """Findings after the upgrade; those that show only after a reboot say so."""
    findings = compare(baseline, upgraded, "after the upgrade") if upgraded else []
    seen = {(f.check, f.subject) for f in findings}
    if rebooted:
        for finding in compare(baseline, rebooted, "after a reboot"):
            if (finding.check, finding.subject) not in seen:
                findings.append(finding)
    return findings
