"""The hazard facts the replay collects inside the sandbox, typed.

Like the rest of the replay's result they cross the boundary as JSON (the
code inside runs with preloaded modules and writes plain data);
ReplayResult.from_json turns them into these once, and the checks read
attributes. The libraries' and kernel settings' tables stay the plain data
their own modules (inside/libraries, inside/kernel_settings) define and
compare: they are handed on whole, never picked apart by key here."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class BootState:
    """/boot as inside/bootchain.boot_state sees it."""

    # kernel version -> {kernel, kernel_bytes, initrd, initrd_bytes, initrd_mtime_ns}
    kernels: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    generator: str | None = None  # initramfs-tools, dracut, ...; None: the system boots without one
    # what the bootloader's configuration names: {config, kind, path, exists}
    references: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # /vmlinuz, /initrd.img and their .old -> {target, exists}
    links: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # /sbin/init -> {path, target, exists}; empty from a report older than it
    init: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "BootState":
        data = data or {}
        return cls(
            dict(data.get("kernels") or {}),
            data.get("generator"),
            list(data.get("references") or []),
            dict(data.get("links") or {}),
            dict(data.get("init") or {}),
        )


@dataclasses.dataclass
class HazardSnapshot:
    """What is taken both before and after apt, to be compared."""

    libraries: dict[str, Any] = dataclasses.field(default_factory=dict)  # inside/libraries.scan
    boot: BootState = dataclasses.field(default_factory=BootState)
    kernel: dict[str, Any] = dataclasses.field(default_factory=dict)  # inside/kernel_settings.collect
    autoremovable: list[str] | None = None  # release upgrades only

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "HazardSnapshot":
        data = data or {}
        return cls(
            data.get("libraries") or {},
            BootState.from_json(data.get("boot")),
            data.get("kernel") or {},
            data.get("autoremovable"),
        )


@dataclasses.dataclass
class HazardFacts:
    before: HazardSnapshot = dataclasses.field(default_factory=HazardSnapshot)
    after: HazardSnapshot = dataclasses.field(default_factory=HazardSnapshot)
    # configuration files the run leaves beside the sysadmin's (.dpkg-dist, .ucf-old, ...)
    conffile_leftovers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # grub-install, update-grub, ... that maintainer scripts tried to run: recorded, not run
    recorded_commands: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    recorder_refused: list[Any] = dataclasses.field(default_factory=list)
    grub_probe_unanswered: list[str] = dataclasses.field(default_factory=list)
    # file that brings a new kernel setting -> its package
    kernel_owners: dict[str, str] = dataclasses.field(default_factory=dict)
    obsolete: list[str] | None = None  # release upgrades only: what no source offers any more

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "HazardFacts | None":
        """The replay's "hazards": the after-apt facts at the top, the
        before-apt ones under "before"."""
        if not data:
            return None
        return cls(
            before=HazardSnapshot.from_json(data.get("before")),
            after=HazardSnapshot.from_json(data),
            conffile_leftovers=list(data.get("conffile_leftovers") or []),
            recorded_commands=list(data.get("recorded_commands") or []),
            recorder_refused=list(data.get("recorder_refused") or []),
            grub_probe_unanswered=list(data.get("grub_probe_unanswered") or []),
            kernel_owners=dict(data.get("kernel_owners") or {}),
            obsolete=data.get("obsolete"),
        )
