"""Verdicts already reached, so the real run is not rehearsed twice.

A transaction rehearsed by ``apt-rehearse ...`` and then run for real with the
identical change set, .deb files and dpkg status has the same identity: the
hook finds the verdict here instead of rehearsing again. ``apt-rehearse
gate`` also records an *approval*: the whole unattended-upgrades set, so
each of its minimal steps (a subset, applied on a state somewhere along the
way) is a hit too.

Trust: the directory is root's and 0700, every entry must be a regular file
owned by root and writable by nobody else, and must check out (its identity
is the file's name and the transaction's own); anything else is ignored.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, Callable

from apt_rehearse.model.transaction import INSTALLING_ACTIONS, Transaction
from apt_rehearse.store.files import write_atomically

SCHEMA = "apt-rehearse-verdict/1"


def _directory(cache_dir: str) -> str:
    return os.path.join(cache_dir, "verdicts")


def trusted_dir(path: str) -> bool:
    """Root's directory that nobody else may enter or write."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) & 0o077 == 0


def read_trusted(path: str, schema: str = SCHEMA, limit: int = 1 << 20) -> dict[str, Any] | None:
    """A JSON object of ``schema`` from a regular file of root's that nobody else may write, or None."""
    try:
        # O_NONBLOCK: a FIFO planted in place of an entry must not hang the hook (and apt) for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o022:
            return None
        try:
            data = json.loads(handle.read(limit))
        except (ValueError, UnicodeDecodeError):
            return None
    return data if isinstance(data, dict) and data.get("schema") == schema else None


def _write(cache_dir: str, name: str, data: dict[str, Any]) -> str:
    directory = _directory(cache_dir)
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    path = os.path.join(directory, name)
    write_atomically(path, json.dumps(data))
    return path


def record(cache_dir: str, transaction: Transaction, verdict: str, report_path: str | None) -> str:
    identity = transaction.identity
    return _write(
        cache_dir,
        f"{identity}.json",
        {
            "schema": SCHEMA,
            "kind": "exact",
            "id": identity,
            "verdict": verdict,
            "report": report_path,
            "created": time.time(),
            "request": transaction.request,
        },
    )


def record_approval(cache_dir: str, transaction: Transaction, verdict: str, report_path: str | None) -> str:
    """The gate's whole set: any step inside it, on a state along its way, is covered."""
    changes = [[c.package, c.arch, c.from_version, c.to_version, c.action, c.sha256] for c in transaction.changes]
    return _write(
        cache_dir,
        "approval.json",
        {
            "schema": SCHEMA,
            "kind": "approval",
            "id": transaction.identity,
            "verdict": verdict,
            "report": report_path,
            "created": time.time(),
            "changes": changes,
            "root": transaction.root,
        },
    )


def lookup(
    cache_dir: str,
    transaction: Transaction,
    max_age: float,
    installed: dict[str, str | None] | Callable[[], dict[str, str | None]],
) -> dict[str, Any] | None:
    """A trusted, fresh verdict for exactly this transaction, or None.

    ``installed`` maps package:arch -> the version installed now (or is a
    function that reads it: only a gate approval needs it, so an exact hit
    on the hook's hot path never parses dpkg's status); it checks that an
    approval's step starts from a state on the way.
    """
    directory = _directory(cache_dir)
    if not trusted_dir(directory):
        return None
    now = time.time()
    identity = transaction.identity
    entry = read_trusted(os.path.join(directory, f"{identity}.json"))
    if entry and entry.get("id") == identity and now - float(entry.get("created", 0)) <= max_age:
        return entry
    approval = _fresh_approval(directory, transaction, max_age)
    if approval and _covered(
        transaction, approval.get("changes", []), installed() if callable(installed) else installed
    ):
        return approval
    return None


def _fresh_approval(directory: str, transaction: Transaction, max_age: float) -> dict[str, Any] | None:
    """The gate's approval, when it is for this root and young enough."""
    approval = read_trusted(os.path.join(directory, "approval.json"))
    if approval and approval.get("root") == transaction.root:
        if time.time() - float(approval.get("created", 0)) <= max_age:
            return approval
    return None


def approval_of(cache_dir: str, transaction: Transaction, max_age: float) -> dict[str, Any] | None:
    """The gate's fresh approval of exactly this set, or None."""
    directory = _directory(cache_dir)
    if not trusted_dir(directory):
        return None
    approval = _fresh_approval(directory, transaction, max_age)
    return approval if approval and approval.get("id") == transaction.identity else None


def _covered(transaction: Transaction, approved_rows: list[Any], installed: dict[str, str | None]) -> bool:
    approved = {}
    for row in approved_rows:
        if isinstance(row, list) and len(row) == 6:
            approved[(row[0], row[1])] = row
    if not transaction.changes:
        return False
    for change in transaction.changes:
        row = approved.get((change.package, change.arch))
        if row is None:
            return False
        _, _, from_version, to_version, action, sha256 = row
        if change.to_version != to_version or change.sha256 != sha256:
            return False
        if (change.action in INSTALLING_ACTIONS) != (action in INSTALLING_ACTIONS):
            return False
        # The step must start where the approved transaction started, or at
        # a point it passes through (already at the new version: a reinstall).
        now = installed.get(change.name, installed.get(change.package))
        if now not in (from_version, to_version):
            return False
    return True
