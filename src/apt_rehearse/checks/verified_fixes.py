"""Whether the proposed fixes work: the problems of a rehearsal against
those of the same request rehearsed again with the fixes' packages added.

Pure functions over the two reports (JSON documents)."""

from __future__ import annotations

from typing import Any


def packages_to_add(document: dict[str, Any]) -> list[str]:
    """The problems' package fixes, less what the transaction installs already."""
    installing = {
        c["package"]
        for c in document["transaction"]["changes"]
        if c["action"] in ("install", "upgrade", "downgrade", "reinstall")
    }
    wanted = {name for p in document.get("problems") or [] for name in (p.get("fix") or {}).get("packages") or []}
    return sorted(wanted - installing)


def verify(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Mark each problem of ``first`` fixed (True), not fixed (False), or
    not tried (None), from what ``second`` (rehearsed with the fixes) found."""
    now = {problem["key"]: problem for problem in second.get("problems") or []}
    for problem in first.get("problems") or []:
        fix = problem.get("fix") or {}
        if not fix.get("packages"):
            problem["verified"] = None
            problem["verified_detail"] = (
                "a configuration change: apply the diff, then rehearse again" if fix.get("diffs") else "no fix to try"
            )
            continue
        added = ", ".join(fix["packages"])
        after = now.get(problem["key"])
        if after is None:
            problem["verified"] = True
            problem["verified_detail"] = f"with {added} added, the rehearsal finds none of it"
        elif after["severity"] != "block" and problem["severity"] == "block":
            problem["verified"] = True
            messages = [second["findings"][place]["message"] for place in after["findings"]]
            problem["verified_detail"] = f"with {added} added, what is left is a warning: " + "; ".join(messages[:2])
        else:
            problem["verified"] = False
            problem["verified_detail"] = f"with {added} added: {after['title']}"


def real_run(command: str, packages: list[str], release: str | None, added: list[str]) -> str:
    """The apt-get command that does what the rehearsal with the fixes did."""
    if command in ("upgrade", "dist-upgrade", "full-upgrade"):
        words = ["apt-get", "dist-upgrade" if command == "full-upgrade" else command, *added]
    elif command == "install":
        words = ["apt-get", "install", *packages, *added]
    else:
        words = ["apt-get", command, *packages, *(f"{name}+" for name in added)]
    line = " ".join(words)
    return f"with the sources switched to {release}: {line}" if release else line


def summary(
    first: dict[str, Any], command: str, packages: list[str], release: str | None, added: list[str]
) -> dict[str, Any]:
    """The report's "fix_of": the rehearsal without the fixes, its problems
    as verified, and the command for the real run."""
    return {
        "id": first["id"],
        "verdict": first["verdict"],
        "report_path": first.get("report_path"),
        "added": added,
        "problems": first.get("problems") or [],
        "real_run": real_run(command, packages, release, added),
    }
