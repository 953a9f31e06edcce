"""Whether the proposed fixes work: the problems of a rehearsal against
those of the same request rehearsed again with the fixes' packages added.

Pure functions over the two reports (JSON documents)."""

from __future__ import annotations

from typing import Any

from apt_rehearse.model.transaction import INSTALLING_ACTIONS


def packages_to_add(document: dict[str, Any]) -> list[str]:
    """The problems' package fixes, less what the transaction installs already."""
    installing = {c["package"] for c in document["transaction"]["changes"] if c["action"] in INSTALLING_ACTIONS}
    wanted = {name for p in document.get("problems") or [] for name in (p.get("fix") or {}).get("packages") or []}
    return sorted(wanted - installing)


def replacements_of(document: dict[str, Any]) -> dict[str, str]:
    """Removed package -> the package its problem's fix puts in its place:
    what the rehearsal with the fixes judges the removal against."""
    return {
        p["key"].split(":", 1)[1]: p["fix"]["packages"][0]
        for p in document.get("problems") or []
        if p["key"].startswith("removal:") and (p.get("fix") or {}).get("packages")
    }


def config_fixes_to_make(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The problems' configuration changes that --fix can make in the copy."""
    wanted = [d for p in document.get("problems") or [] for d in (p.get("fix") or {}).get("diffs") or []]
    return [{k: d[k] for k in ("path", "line", "old", "new", "unit")} for d in wanted if "old" in d and "new" in d]


def verify(first: dict[str, Any], second: dict[str, Any], changed: set[str] | None = None) -> None:
    """Mark each problem of ``first`` fixed (True), not fixed (False), or
    not tried (None), from what ``second`` (rehearsed with the fixes) found;
    ``changed``: the files whose fix ``second`` made in its copy."""
    now = {problem["key"]: problem for problem in second.get("problems") or []}
    changed = changed or set()
    for problem in first.get("problems") or []:
        fix = problem.get("fix") or {}
        tried_diffs = [d for d in fix.get("diffs") or [] if d["path"] in changed]
        if not fix.get("packages") and not tried_diffs:
            problem["verified"] = None
            problem["verified_detail"] = (
                "a configuration change: apply the diff, then rehearse again" if fix.get("diffs") else "no fix to try"
            )
            continue
        added = ", ".join(fix.get("packages") or []) or "the change of " + ", ".join(d["path"] for d in tried_diffs)
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
    first: dict[str, Any],
    command: str,
    packages: list[str],
    release: str | None,
    added: list[str],
    changed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report's "fix_of": the rehearsal without the fixes, its problems
    as verified, and the command for the real run (after the configuration
    changes, which are the sysadmin's to make)."""
    edits = [f"{c['path']} line {c['line']}" for c in changed or []]
    run = real_run(command, packages, release, added) if added else ""
    if edits:
        run = f"change {', '.join(edits)} as the diff shows" + (f", then: {run}" if run else ", then run the request")
    return {
        "id": first["id"],
        "verdict": first["verdict"],
        "report_path": first.get("report_path"),
        "added": added,
        "changed": edits,
        "problems": first.get("problems") or [],
        "real_run": run,
    }
