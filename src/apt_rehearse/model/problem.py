"""A problem: the findings one cause explains, and what to do about it.

The report leads with problems, a sysadmin's unit of work ("PHP is removed,
so the site serves its source"); the findings stay, each in the problem its
cause belongs to."""

from __future__ import annotations

import dataclasses
from typing import Any

from apt_rehearse.model.policy import SEVERITIES, Finding

# What a problem costs the sysadmin, most first: the way into the machine,
# then its data, then what it serves, then the rest.
AREAS = ("remote-access", "data", "site", "system")


@dataclasses.dataclass
class Fix:
    """Packages of the target release to add to the transaction, and
    configuration changes to make (never made on the host: shown as diffs)."""

    packages: list[str] = dataclasses.field(default_factory=list)
    diffs: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {path, diff}
    why: str = ""

    def __bool__(self) -> bool:
        return bool(self.packages or self.diffs)

    def to_json(self) -> dict[str, Any]:
        return {"packages": self.packages, "diffs": self.diffs, "why": self.why}


def line_change(path: str, line: int, old: str, new: str, unit: str = "") -> dict[str, Any]:
    """A one-line configuration fix: the diff the sysadmin reads, and what
    --fix needs to make the change in the copy (inside/config_fixes)."""
    return {"path": path, "diff": line_diff(path, line, old, new), "line": line, "old": old, "new": new, "unit": unit}


def line_diff(path: str, line: int, old: str, new: str) -> str:
    return f"--- {path}\n+++ {path}\n@@ -{line} +{line} @@\n-{old}\n+{new}\n"


@dataclasses.dataclass
class Cause:
    text: str
    file: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "file": self.file, "line": self.line}


@dataclasses.dataclass
class Problem:
    key: str  # stable across rehearsals of the same system: "removal:php8.2", "service:nginx.service"
    title: str
    area: str
    cause: Cause
    findings: list[Finding]
    fix: Fix = dataclasses.field(default_factory=Fix)
    # After --fix: True (the fix worked), False (it did not), None (not tried).
    verified: bool | None = None
    verified_detail: str = ""

    @property
    def severity(self) -> str:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default="info")

    def to_json(self, finding_index: dict[int, int]) -> dict[str, Any]:
        """``finding_index``: id(finding) -> its place in the report's findings."""
        return {
            "key": self.key,
            "title": self.title,
            "severity": self.severity,
            "area": self.area,
            "cause": self.cause.to_json(),
            "findings": [finding_index[id(f)] for f in self.findings if id(f) in finding_index],
            "fix": self.fix.to_json() if (self.fix or self.fix.why) else None,
            "verified": self.verified,
            "verified_detail": self.verified_detail,
        }
