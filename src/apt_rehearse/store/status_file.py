"""What the prepare service found for the pending updates: the status
file `apt-rehearse status` and the motd line read.

It is written after each prepare and says on which state it was made (dpkg's
status, the time apt last updated its lists), so that a reader can tell a
status that still holds from one that an apt update or a dpkg run since has
made stale, without planning anything itself (the motd line runs at every
login and must cost nothing).
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any

from apt_rehearse.model.downtime import describe as describe_downtime
from apt_rehearse.store.files import write_atomically
from apt_rehearse.store.verdict_cache import read_trusted

NAME = "status.json"
SCHEMA = "apt-rehearse-status/1"


def lists_updated_at(root: str) -> float:
    """When apt last updated its lists: the newest Release file."""
    newest = 0.0
    for path in glob.glob(os.path.join(glob.escape(root), "var/lib/apt/lists/*Release")):
        try:
            newest = max(newest, os.stat(path).st_mtime)
        except OSError:
            pass
    return newest


def dpkg_state(root: str) -> str:
    from apt_rehearse.store.deb_hashes import digest

    try:
        with open(os.path.join(root, "var/lib/dpkg/status"), "rb") as handle:
            return digest(handle)
    except OSError:
        return ""


def build(root: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "root": root,
        "written": time.time(),
        "dpkg_status_sha256": dpkg_state(root),
        "lists_updated": lists_updated_at(root),
        "requests": rows,
    }


def write(cache_dir: str, status: dict[str, Any]) -> None:
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    # Verdicts and problem titles, no diffs: readable by all, like apt's own lists.
    write_atomically(os.path.join(cache_dir, NAME), json.dumps(status, indent=1), mode=0o644)


def read(cache_dir: str) -> dict[str, Any] | None:
    if not _root_owned(cache_dir):
        return None
    return read_trusted(os.path.join(cache_dir, NAME), SCHEMA)


def _root_owned(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return info.st_uid == 0 and not info.st_mode & 0o022


def stale_because(status: dict[str, Any], root: str) -> str | None:
    """Why the status no longer describes what is pending, or None."""
    if status.get("dpkg_status_sha256") != dpkg_state(root):
        return "packages were installed or removed since"
    if lists_updated_at(root) > float(status.get("lists_updated") or 0) + 1:
        return "apt updated its lists since"
    return None


def problem_lines(document: dict[str, Any]) -> list[str]:
    return [
        f"{p['severity'].upper()} {p['title']}" for p in document.get("problems") or [] if p.get("severity") != "info"
    ]


def downtime_lines(document: dict[str, Any]) -> list[str]:
    """The services the real run would take down, one line each (model/downtime)."""
    return [describe_downtime(entry) for entry in document.get("downtime") or [] if entry.get("outages")]


def downtime_of_report(path: str | None) -> list[str]:
    report = read_report(path)
    return downtime_lines(report) if report is not None else []


def problems_of_report(path: str | None) -> list[str]:
    """The problems of a saved report, one line each ([] when it is gone)."""
    report = read_report(path)
    return problem_lines(report) if report is not None else []


def read_report(path: str | None) -> dict[str, Any] | None:
    """A saved report, or None when it is gone or unreadable."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _mailed_path(cache_dir: str, identity: str) -> str:
    return os.path.join(cache_dir, "verdicts", f"{identity}.mailed")


def mailed(cache_dir: str, identity: str) -> bool:
    return os.path.exists(_mailed_path(cache_dir, identity))


def mark_mailed(cache_dir: str, identity: str) -> None:
    write_atomically(_mailed_path(cache_dir, identity), str(time.time()))


def age(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def main_row(status: dict[str, Any]) -> dict[str, Any] | None:
    """The request a login cares about: dist-upgrade's (apt full-upgrade:
    everything pending), else upgrade's, else the unattended set's."""
    rows = {row["request"]: row for row in status.get("requests") or [] if row.get("id")}
    for request in ("dist-upgrade", "upgrade", "gate"):
        if request in rows:
            return rows[request]
    return None


def motd_line(status: dict[str, Any] | None, root: str, now: float | None = None) -> str:
    """One line for the login banner."""
    now = time.time() if now is None else now
    if status is None:
        return "apt-rehearse: the pending updates are not rehearsed yet (apt-rehearse prepare)"
    stale = stale_because(status, root)
    row = main_row(status)
    if row is None:
        if any(r.get("error") for r in status.get("requests") or []):
            return "apt-rehearse: the last prepare failed; see apt-rehearse status"
        return "apt-rehearse: no updates pending" + (f" when last rehearsed ({stale})" if stale else "")
    when = age(now - float(row.get("rehearsed_at") or status.get("written") or now))
    line = f"apt-rehearse: {row['changes']} updates pending, rehearsed {when} ago: {str(row['verdict']).upper()}"
    problems = row.get("problems") or []
    if row["verdict"] in ("block", "warn") and problems:
        line += f": {len(problems)} problem(s), see apt-rehearse status"
    unattended = next((r for r in status.get("requests") or [] if r["request"] == "gate" and r.get("id")), None)
    if unattended and unattended is not row and unattended.get("verdict") != row.get("verdict"):
        line += f"; unattended-upgrades' {unattended['changes']}: {str(unattended['verdict']).upper()}"
    if stale:
        line += f" (stale: {stale})"
    return line
