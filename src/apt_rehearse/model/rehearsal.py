"""One rehearsal's outcome, as the fronts, the report and fleet tools read it."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from apt_rehearse.model.policy import Finding
from apt_rehearse.model.problem import Problem
from apt_rehearse.model.transaction import Transaction


@dataclasses.dataclass
class Rehearsal:
    transaction: Transaction
    findings: list[Finding]
    verdict: str
    started: datetime.datetime
    duration_s: float
    phases: list[tuple[str, float]]
    upper_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    sandbox_plan: list[str] = dataclasses.field(default_factory=list)
    replay_log: str = ""  # apt's and dpkg's own output during the replay
    # The booted services before the upgrade, after it, and after a reboot.
    observations: dict[str, Any] = dataclasses.field(default_factory=dict)
    disk: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Libraries per object, the boot chain, conffile leftovers (figures for fleet tools).
    hazards: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Seconds of each part of the replay and inspection (apt, the hazard scans...).
    replay_parts: dict[str, float] = dataclasses.field(default_factory=dict)
    # The findings grouped by cause, most costly first (checks/problems).
    problems: list[Problem] = dataclasses.field(default_factory=list)
    # --fix: the configuration changes made in the copy, {path, line, applied[, why]}
    config_fixes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # The downtime forecast per unit (checks/downtime, as JSON), and how it was watched.
    downtime: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    downtime_watch: dict[str, Any] | None = None
