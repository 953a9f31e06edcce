"""Conffiles in detail, inside the sandbox: what dpkg and ucf leave behind.

The replay keeps the sysadmin's version of a conffile both changed (dpkg's
--force-confold, ucf's non-interactive default); each tool then leaves the
new version beside it (.dpkg-dist, .ucf-dist), or the old one when told to
take the new (.dpkg-old, .ucf-old). Files that appear during the replay are
exactly the ones where the real run asks, and the diff between the two says
what the sysadmin will be asked about. Diffs can hold secrets: they go only
to the root-only report, never to the terminal.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

SUFFIXES = (".dpkg-dist", ".dpkg-old", ".dpkg-new", ".ucf-dist", ".ucf-old", ".ucf-new")
SEARCH_DIRS = ("/etc",)
UCF_REGISTRY = "/var/lib/ucf/registry"
DIFF_LINES = 80
REPLACED_LINES = 40  # lines of yours the new version has otherwise, paired with its closest
MAX_BYTES = 1 << 20  # a conffile larger than this gets no diff


def leftovers() -> list[str]:
    found = []
    for top in SEARCH_DIRS:
        for directory, _subdirs, names in os.walk(top):
            found += [os.path.join(directory, n) for n in names if n.endswith(SUFFIXES)]
    return sorted(found)


def ucf_owners() -> dict[str, str]:
    """ucf's registry: conffile -> the package that registered it."""
    owners = {}
    try:
        with open(UCF_REGISTRY, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2:
                    owners[parts[1]] = parts[0]
    except OSError:
        pass
    return owners


def _text(path: str) -> list[str] | None:
    try:
        if os.path.getsize(path) > MAX_BYTES:
            return None
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if b"\0" in data:
        return None
    return data.decode("utf-8", "replace").splitlines()


def diff_summary(local_path: str, new_path: str) -> dict[str, Any]:
    """How the sysadmin's file and the package's new one differ."""
    local, new = _text(local_path), _text(new_path)
    if local is None or new is None:
        return {"diff": None, "added": None, "removed": None}
    lines = list(
        difflib.unified_diff(local, new, fromfile=f"{local_path} (yours)", tofile=f"{new_path} (new)", lineterm="", n=1)
    )
    added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
    if not _world_readable(local_path):
        # The saved report is readable by the adm group: what only root may
        # read (a password in /etc/mysql/debian.cnf) stays out of it.
        return {"diff": None, "diff_withheld": "your file is readable by root only", "added": added, "removed": removed}
    return {
        "diff": lines[:DIFF_LINES],
        "diff_truncated": len(lines) > DIFF_LINES,
        "added": added,
        "removed": removed,
        "replaced_lines": replaced_lines(local, new),
    }


def replaced_lines(local: list[str], new: list[str]) -> list[dict[str, Any]]:
    """Each line of the sysadmin's file that the new version has otherwise,
    with the new version's closest line: what the package says instead when
    a daemon rejects one of the kept lines (checks/problems)."""
    rows: list[dict[str, Any]] = []
    matcher = difflib.SequenceMatcher(None, local, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag not in ("replace", "delete"):
            continue
        for index in range(i1, i2):
            yours = local[index]
            if not yours.strip() or yours.lstrip().startswith(("#", ";")):
                continue
            best, best_ratio = None, 0.0
            for other in range(j1, j2):
                ratio = difflib.SequenceMatcher(None, yours.strip(), new[other].strip()).ratio()
                if ratio > best_ratio:
                    best, best_ratio = other, ratio
            rows.append(
                {
                    "line": index + 1,
                    "yours": yours,
                    "new": new[best] if best is not None and best_ratio >= 0.4 else None,
                    "new_line": best + 1 if best is not None and best_ratio >= 0.4 else None,
                }
            )
            if len(rows) >= REPLACED_LINES:
                return rows
    return rows


def _world_readable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


def new_leftovers(before: list[str], after: list[str]) -> list[dict[str, Any]]:
    """Each leftover file the run created, with whose it is and the diff."""
    owners = ucf_owners()
    rows = []
    for path in sorted(set(after) - set(before)):
        suffix = next(s for s in SUFFIXES if path.endswith(s))
        base = path[: -len(suffix)]
        tool = "ucf" if suffix.startswith(".ucf") else "dpkg"
        row: dict[str, Any] = {
            "path": base,
            "leftover": path,
            "tool": tool,
            "suffix": suffix,
            "ucf_package": owners.get(base) if tool == "ucf" else None,
        }
        if suffix.endswith("-dist"):  # the new version beside the sysadmin's
            row.update(diff_summary(base, path))
        elif suffix.endswith("-old"):  # the sysadmin's version beside the new
            row.update(diff_summary(path, base))
        rows.append(row)
    return rows
