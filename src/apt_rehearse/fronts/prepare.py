"""apt-rehearse prepare: rehearse what is pending before anyone asks.

Run by apt-rehearse-prepare.service after apt-daily's download and after
every successful apt update, it rehearses the transactions apt would run
now: `apt-get upgrade`, `apt-get dist-upgrade` (= `apt full-upgrade`) and
unattended-upgrades' set (the gate's approval), each distinct transaction
once: one with a fresh verdict already is not rehearsed again. The verdicts
go to the verdict cache, where the hook of the real run finds them; a
summary goes to the status file that `apt-rehearse status` and the motd
line read. A blocked set is mailed (APT::Rehearse::Mail) once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

from apt_rehearse.model.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_GO, RehearsalError, one_line
from apt_rehearse.store import inflight, status_file, textfile

# What apt runs, in the order they are rehearsed: the smaller first.
REQUESTS = ("upgrade", "dist-upgrade", "gate")
PREPARE_LOCK = "prepare"
SENDMAIL = "/usr/sbin/sendmail"


def prepare(options: Any, settings: Any, say: Any) -> int:
    """Rehearse each pending transaction once; 10 when one of them blocks."""
    from apt_rehearse.fronts.cli import plan_and_rehearse
    from apt_rehearse.rehearse import publish_metrics

    root = os.path.realpath(options.root)
    rows: list[dict[str, Any]] = []
    with inflight.claim(settings.cache_dir, PREPARE_LOCK, "apt-rehearse prepare") as held:
        if held.waited:
            say("another prepare ran first; its verdicts are reused")
        seen: dict[str, dict[str, Any]] = {}
        for command in REQUESTS:
            row: dict[str, Any] = {"request": command}
            began = time.monotonic()
            try:
                if command == "gate" and not _has_unattended_upgrades(root):
                    row["skipped"] = "unattended-upgrades is not installed"
                    rows.append(row)
                    continue
                say(f"rehearsing what {NAMES[command]} would do ...")
                rehearsal, document = plan_and_rehearse(command, [], options, [], settings, None, began, reuse=True)
            except RehearsalError as error:
                row["error"] = one_line(str(error))
                rows.append(row)
                say(f"{command}: {row['error']}")
                continue
            row.update(_row_of(rehearsal, document, seen))
            row["seconds"] = round(time.monotonic() - began, 3)
            rows.append(row)
            if row.get("id"):
                seen[row["id"]] = row
            say(f"{command}: {_summary(row)}")
    status = status_file.build(root, rows)
    status_file.write(settings.cache_dir, status)
    # The pending requests' metrics, now that the status says what is pending.
    publish_metrics(settings, root, textfile.last_saved(settings.log_dir))
    _mail_blocks(settings, status)
    if any(row.get("verdict") == "block" for row in rows):
        return EXIT_BLOCKED
    # A prepare that could not rehearse fails (the service shows it); the hook then rehearses as usual.
    return EXIT_FAILED if any(row.get("error") for row in rows) else EXIT_GO


def _has_unattended_upgrades(root: str) -> bool:
    return os.path.exists(os.path.join(root, "usr/bin/unattended-upgrade"))


def _row_of(rehearsal: Any, document: dict[str, Any], seen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if rehearsal is None:
        entry, transaction = document["reused"], document["transaction"]
        if entry is None:
            return {"id": None, "changes": 0, "verdict": None, "nothing_pending": True}
        earlier = seen.get(transaction.identity)
        return {
            "id": transaction.identity,
            "changes": len(transaction.changes),
            "verdict": entry.get("verdict"),
            "report": entry.get("report"),
            "rehearsed_at": entry.get("created"),
            "reused": True,
            "problems": (earlier or {}).get("problems") or status_file.problems_of_report(entry.get("report")),
            "downtime": (earlier or {}).get("downtime") or status_file.downtime_of_report(entry.get("report")),
        }
    return {
        "id": document["id"],
        "changes": len(document["transaction"]["changes"]),
        "verdict": document["verdict"],
        "report": document.get("report_path"),
        "rehearsed_at": time.time(),
        "reused": False,
        "problems": status_file.problem_lines(document),
        "downtime": status_file.downtime_lines(document),
    }


def _summary(row: dict[str, Any]) -> str:
    if row.get("nothing_pending"):
        return "nothing to do"
    how = "verdict already there" if row.get("reused") else f"rehearsed in {row.get('seconds', 0):.0f} s"
    return f"{row['changes']} package(s), {str(row.get('verdict')).upper()} ({how})"


def _mail_blocks(settings: Any, status: dict[str, Any]) -> None:
    """Mail the blocked transactions, each once, as unattended-upgrades mails
    its own outcome: to APT::Rehearse::Mail (root by default), through the
    local MTA; with no MTA, nothing is sent."""
    recipient = settings.mail
    blocked = [row for row in status["requests"] if row.get("verdict") == "block" and row.get("id")]
    if not recipient or not blocked or not shutil.which("sendmail", path=os.path.dirname(SENDMAIL)):
        return
    fresh = [row for row in blocked if not status_file.mailed(settings.cache_dir, row["id"])]
    if not fresh:
        return
    host = os.uname().nodename
    body = [f"apt-rehearse rehearsed the pending updates of {host}, and the policy blocks:", ""]
    for row in fresh:
        body.append(f"{row['request']}: {row['changes']} package(s), BLOCK; report {row.get('report')}")
        body += [f"  {line}" for line in row.get("problems") or []]
        body.append("")
    body.append("The real run is stopped before dpkg. See: apt-rehearse status")
    message = (
        f"To: {recipient}\nSubject: apt-rehearse: the pending upgrade of {host} is BLOCKED\n"
        "Content-Type: text/plain; charset=utf-8\n\n" + "\n".join(body) + "\n"
    )
    try:
        subprocess.run([SENDMAIL, "-oi", recipient], input=message.encode(), timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        sys.stderr.write(f"apt-rehearse: W: could not mail {recipient}: {error}\n")
        return
    for row in fresh:
        status_file.mark_mailed(settings.cache_dir, row["id"])


def status_document(root: str, settings: Any) -> dict[str, Any]:
    """The status, as `apt-rehearse status --json` gives it."""
    status = status_file.read(settings.cache_dir)
    if status is not None and status.get("root") != root:
        status = None
    now = time.time()
    document: dict[str, Any] = {
        "schema": status_file.SCHEMA,
        "root": root,
        "prepared": status is not None,
        "written": status.get("written") if status else None,
        "stale": status_file.stale_because(status, root) if status else None,
        "requests": [],
        "prepare_running": inflight.holder_of(settings.cache_dir, PREPARE_LOCK),
        "motd": status_file.motd_line(status, root, now),
    }
    for row in (status or {}).get("requests") or []:
        row = dict(row)
        if row.get("rehearsed_at"):
            row["age_s"] = round(now - float(row["rehearsed_at"]), 1)
            # The hook takes a verdict only while it is fresh (APT::Rehearse::Cache-Max-Age).
            row["expired"] = row["age_s"] > settings.verdict_max_age
        document["requests"].append(row)
    document.update(_pending_summary(document, status, root))
    return document


def _pending_summary(document: dict[str, Any], status: dict[str, Any] | None, root: str) -> dict[str, Any]:
    """At the top, what a fleet tool asks first (the Ansible fact,
    ansible_local.apt_rehearse): the verdict of what apt full-upgrade would
    run now, its problems, transaction, age; and the system class, read now,
    to group hosts that rehearse the same."""
    from apt_rehearse.plan import system_class

    main = status_file.main_row(status) if status else None
    row = next((r for r in document["requests"] if main and r.get("request") == main["request"]), main) or {}
    # The pending changes, while the status still tells them (None: not known).
    pending: list[dict[str, Any]] | None = None
    if status is None or document["stale"]:
        pending = None
    elif main is None:
        pending = None if any(r.get("error") for r in status.get("requests") or []) else []
    else:
        pending = _saved_changes(row.get("report"))
    return {
        "request": row.get("request"),
        "verdict": row.get("verdict"),
        "id": row.get("id"),
        "changes": row.get("changes", 0),
        "problems": row.get("problems") or [],
        "downtime": row.get("downtime") or [],
        "age_s": row.get("age_s"),
        "expired": row.get("expired"),
        "report": row.get("report"),
        "system_class": system_class.fingerprint(root, pending),
    }


def _saved_changes(path: str | None) -> list[dict[str, Any]] | None:
    report = status_file.read_report(path)
    changes = ((report or {}).get("transaction") or {}).get("changes")
    return changes if isinstance(changes, list) else None


NAMES = {"upgrade": "apt-get upgrade", "dist-upgrade": "apt-get dist-upgrade", "gate": "unattended-upgrades"}


def status_lines(document: dict[str, Any]) -> list[str]:
    """The terminal's status: apt-style, short."""
    if not document["prepared"]:
        lines = ["Nothing prepared yet: run 'apt-rehearse prepare' (or start apt-rehearse-prepare.service)."]
    else:
        when = status_file.age(time.time() - float(document["written"] or 0))
        lines = [f"Prepared {when} ago" + (f"; stale: {document['stale']}." if document["stale"] else ".")]
    for row in document["requests"]:
        name = NAMES.get(row["request"], row["request"])
        if row.get("skipped") or row.get("error"):
            lines.append(f"  {name}: {row.get('skipped') or 'failed: ' + row['error']}")
            continue
        if row.get("nothing_pending"):
            lines.append(f"  {name}: nothing to do")
            continue
        verdict = str(row.get("verdict")).upper()
        expired = " (expired: the hook rehearses it again)" if row.get("expired") else ""
        lines.append(
            f"  {name}: {row['changes']} package(s), {verdict}, rehearsed {status_file.age(row.get('age_s', 0))} ago"
            f"{expired}"
        )
        lines += [f"      {line}" for line in row.get("problems") or []]
        lines += [f"      downtime: {line}" for line in row.get("downtime") or []]
        if row.get("report"):
            lines.append(f"      report {row['report']}")
    holder = document.get("prepare_running")
    if holder:
        since = status_file.age(time.time() - float(holder.get("started") or time.time()))
        lines.append(f"A prepare is running (pid {holder.get('pid', '?')}, for {since}).")
    return lines
