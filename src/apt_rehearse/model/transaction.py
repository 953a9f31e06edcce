"""What apt will do: one data type shared by the CLI and the apt hook.

The CLI computes a Transaction with python-apt; the hook builds the same type
from apt's version-3 hook stream. Its identity hashes the exact change set,
the .deb files and the dpkg status it applies to, so a verdict can be reused
only for the very same transaction on the very same system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

ACTIONS = ("install", "upgrade", "downgrade", "reinstall", "remove", "purge")
INSTALLING_ACTIONS = ("install", "upgrade", "downgrade", "reinstall")
REMOVING_ACTIONS = ("remove", "purge")


@dataclasses.dataclass(frozen=True)
class Change:
    """One package that the transaction installs, upgrades or removes."""

    package: str
    arch: str
    from_version: str | None
    to_version: str | None
    action: str
    manual: bool = False
    deb: str | None = None  # absolute path of the .deb on the host, for installing actions
    sha256: str | None = None
    requested: bool = False  # named by the user on the command line

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r} for {self.package}")

    @property
    def name(self) -> str:
        """package:arch, the way dpkg and apt name a package unambiguously."""
        return f"{self.package}:{self.arch}"

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "arch": self.arch,
            "from": self.from_version,
            "to": self.to_version,
            "action": self.action,
            "manual": self.manual,
            "deb": self.deb,
            "sha256": self.sha256,
            "requested": self.requested,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(
            package=data["package"],
            arch=data["arch"],
            from_version=data.get("from"),
            to_version=data.get("to"),
            action=data["action"],
            manual=bool(data.get("manual", False)),
            deb=data.get("deb"),
            sha256=data.get("sha256"),
            requested=bool(data.get("requested", False)),
        )


@dataclasses.dataclass
class Transaction:
    """The exact change set plus what it applies to and how apt is configured."""

    changes: list[Change]
    root: str = "/"
    request: str = ""  # e.g. "dist-upgrade", "install foo"; informational
    dpkg_status_sha256: str = ""
    # Dpkg::Options and the other apt settings the real run uses, as name -> value
    # or name -> list of values, so the replay can use exactly the same ones.
    apt_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    kept_back: list[str] = dataclasses.field(default_factory=list)
    release: str | None = None
    # Private apt state (sources and lists) of a --release rehearsal.
    private_apt_dir: str | None = None
    # removed package -> the target release's likely replacement (advice,
    # not part of the identity)
    replacements: dict[str, str] = dataclasses.field(default_factory=dict)
    # removed package -> the package this very transaction installs that
    # provides its name (a rename: libfoo1 -> libfoo1t64); nothing that
    # depends on the old name loses it
    successors: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def identity(self) -> str:
        """A stable hash of exactly what would change on exactly which state."""
        canonical = {
            "changes": sorted(
                ([c.package, c.arch, c.from_version, c.to_version, c.action, c.sha256] for c in self.changes),
                key=lambda row: (row[0], row[1]),
            ),
            "dpkg_status": self.dpkg_status_sha256,
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()

    def by_action(self, *actions: str) -> list[Change]:
        return sorted((c for c in self.changes if c.action in actions), key=lambda c: (c.package, c.arch))

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.identity,
            "root": self.root,
            "request": self.request,
            "release": self.release,
            "dpkg_status_sha256": self.dpkg_status_sha256,
            "changes": [c.to_json() for c in sorted(self.changes, key=lambda c: (c.package, c.arch))],
            "kept_back": sorted(self.kept_back),
            "replacements": dict(sorted(self.replacements.items())),
            "successors": dict(sorted(self.successors.items())),
        }


def find_successors(changes: list[Change], provides: dict[str, Iterable[str]]) -> dict[str, str]:
    """Each removed package whose name a package installed by the same
    changes provides (``provides``: installed package -> the names it
    provides). Renames such as the t64 transition (libmagic1 ->
    libmagic1t64, "Provides: libmagic1") and dropped -dev aliases
    (libncurses5-dev, provided by libncurses-dev) keep every dependency on
    the old name satisfied: they are not lost the way a dropped package is."""
    installing = {c.package for c in changes if c.action in INSTALLING_ACTIONS}
    removed = {c.package for c in changes if c.action in REMOVING_ACTIONS}
    successors: dict[str, str] = {}
    for package in sorted(installing):
        for name in provides.get(package, ()):
            if name in removed and name != package:
                successors.setdefault(name, package)
    return successors


VERSION_IN_NAME = re.compile(r"\d+(?:\.\d+)*")


def replacement_pattern(name: str) -> re.Pattern[str] | None:
    """php8.2-mysql -> ^php[\\d.]+-mysql$: the same name with any version in it."""
    parts = VERSION_IN_NAME.split(name)
    if len(parts) == 1:
        return None
    return re.compile("^" + r"[\d.]+".join(re.escape(part) for part in parts) + "$")


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def classify(from_version: str | None, to_version: str | None, compare: Any) -> str:
    """The action for a package going from one version to another.

    ``compare`` is apt_pkg.version_compare (passed in so this stays pure).
    """
    if to_version is None:
        return "remove"
    if from_version is None:
        return "install"
    order = compare(to_version, from_version)
    if order > 0:
        return "upgrade"
    if order < 0:
        return "downgrade"
    return "reinstall"
