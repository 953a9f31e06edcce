"""The system class: what makes two hosts rehearse the same.

A fleet of a thousand servers is a few dozen kinds of server. Two hosts
with the same packages at the same versions, the same enabled (and masked,
and overridden) units, the same local changes to conffiles, facing the same
pending transaction, give the same rehearsal: a fleet tool groups its hosts
by this fingerprint and rehearses one canary per group.

What is left out on purpose: what differs between hosts of one kind without
changing what an upgrade does to them (host name, machine id, host keys,
addresses, the data of services), and the tree's path. What it cannot see:
files no package owns outside /etc/systemd/system (software under /opt, a
site's content), which a rehearsal's probes and library scan do look at.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

import apt_pkg

UNIT_DIR = "etc/systemd/system"
# Conffiles dpkg no longer manages (obsolete) say nothing of what an upgrade does.
IGNORED_FLAGS = ("obsolete", "remove-on-upgrade")
LISTED_CONFFILES = 200  # a report stays readable on a host that changed many


def fingerprint(root: str, changes: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """The class of the system in ``root`` facing ``changes`` (the report's
    transaction changes; None when what is pending is not known)."""
    packages, conffiles = _dpkg_state(root)
    changed = _changed_conffiles(root, conffiles)
    units = _unit_entries(root)
    parts = {
        "packages": _digest(packages),
        "units": _digest(units),
        "conffiles": _digest(f"{path} {digest}" for path, digest in changed),
        "transaction": None if changes is None else _digest(_canonical(changes)),
    }
    return {
        "fingerprint": _digest(f"{name}={value}" for name, value in sorted(parts.items())),
        "parts": parts,
        "counts": {"packages": len(packages), "units": len(units), "conffiles_changed": len(changed)},
        "conffiles_changed": [path for path, _ in changed[:LISTED_CONFFILES]],
    }


def _digest(rows: Iterable[str]) -> str:
    hashed = hashlib.sha256()
    for row in sorted(rows):
        hashed.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return hashed.hexdigest()


def _canonical(changes: Iterable[dict[str, Any]]) -> list[str]:
    return [json.dumps([c.get("package"), c.get("arch"), c.get("from"), c.get("to"), c.get("action")]) for c in changes]


def _dpkg_state(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """dpkg's packages ("name:arch version status") and their conffiles
    (path, md5 dpkg recorded), read with apt's own parser."""
    packages: list[str] = []
    conffiles: list[tuple[str, str]] = []
    try:
        handle = open(os.path.join(root, "var/lib/dpkg/status"), encoding="utf-8", errors="surrogateescape")
    except OSError:
        return packages, conffiles
    with handle:
        for section in apt_pkg.TagFile(handle):
            status = section.get("Status", "")
            if status.endswith(" not-installed"):
                continue
            packages.append(f"{section.get('Package')}:{section.get('Architecture')} {section.get('Version')} {status}")
            for line in section.get("Conffiles", "").splitlines():
                words = line.split()
                if len(words) >= 2 and not set(words[2:]) & set(IGNORED_FLAGS):
                    conffiles.append((words[0], words[1]))
    return packages, conffiles


def _changed_conffiles(root: str, conffiles: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The conffiles whose content is not the one dpkg installed: (path, md5 now, or "missing")."""
    changed = []
    for path, recorded in conffiles:
        try:
            with open(os.path.join(root, path.lstrip("/")), "rb") as handle:
                now = hashlib.file_digest(handle, "md5").hexdigest()
        except FileNotFoundError:
            now = "missing"
        except OSError:
            now = "unreadable"
        if now != recorded:
            changed.append((path, now))
    return sorted(changed)


def _unit_entries(root: str) -> list[str]:
    """What the sysadmin (and the packages' postinsts) set in /etc/systemd/system:
    enablement and masks (links), drop-ins and local units (their content)."""
    base = os.path.join(root, UNIT_DIR)
    entries = []
    for directory, subdirs, files in os.walk(base):
        subdirs.sort()
        for name in sorted(files) + [d for d in subdirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, base)
            if os.path.islink(path):
                entries.append(f"{relative} -> {os.readlink(path)}")
                continue
            try:
                with open(path, "rb") as handle:
                    entries.append(f"{relative} {hashlib.file_digest(handle, 'sha256').hexdigest()}")
            except OSError:
                entries.append(f"{relative} unreadable")
    return entries
