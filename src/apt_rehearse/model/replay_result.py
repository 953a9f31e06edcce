"""What the replay hands back from inside the sandbox, typed.

It crosses the sandbox's boundary as JSON (one "result" line on the
Channel); rehearse.py turns it into a ReplayResult once, and everything
downstream (the checks, the report) reads attributes, not nested keys."""

from __future__ import annotations

import dataclasses
from typing import Any

from apt_rehearse.model.hazard_facts import HazardFacts


@dataclasses.dataclass
class CommandRun:
    """A command of the rehearsed system: dpkg --audit, apt-get check, apt-mark."""

    exit_status: int = 0
    output: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "CommandRun":
        data = data or {}
        return cls(int(data.get("exit_status") or 0), data.get("output") or "")


@dataclasses.dataclass
class AptRun:
    """The replay's apt-get: what it printed, how it ended."""

    exit_status: int = 0
    output: str = ""
    timed_out: bool = False
    stopped_for_room: int | None = None  # free bytes left when the disk upper's watch stopped apt
    argv: list[str] = dataclasses.field(default_factory=list)
    status_lines: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    status_times: list[float] = dataclasses.field(default_factory=list)  # seconds since apt started, per status line

    def log(self) -> str:
        """apt's output, then its status lines with their times: the saved
        .log, where a sysadmin sees which step of the run took long."""
        if not self.status_times:
            return self.output
        timed = "".join(f"{at:9.3f}  {line}\n" for at, line in zip(self.status_times, self.status_lines))
        return f"{self.output.rstrip()}\n\n--- apt's status (seconds since apt started)\n{timed}"

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "AptRun":
        data = data or {}
        return cls(
            int(data.get("exit_status") or 0),
            data.get("output") or "",
            bool(data.get("timed_out")),
            data.get("stopped_for_room"),
            list(data.get("argv") or []),
            list(data.get("status_lines") or []),
            float(data.get("seconds") or 0.0),
            [float(t) for t in data.get("status_times") or []],
        )


@dataclasses.dataclass
class ReplayResult:
    apt: AptRun
    before: dict[str, dict[str, str]]  # dpkg's packages: name:arch -> {version, status}
    after: dict[str, dict[str, str]]
    audit: CommandRun = dataclasses.field(default_factory=CommandRun)
    check: CommandRun = dataclasses.field(default_factory=CommandRun)
    auto_marks: CommandRun = dataclasses.field(default_factory=CommandRun)
    upper_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    growth: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    upper_free_bytes: int = 1 << 40
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # The hazard facts before and after apt (libraries, boot chain, conffile
    # leftovers, kernel settings, release facts); None when not collected.
    hazards: HazardFacts | None = None
    source_cache: str | None = None  # "reused" or "rebuilt": the release's prepared apt cache
    # --fix: the configuration changes made in the copy, {path, line, applied[, why]}
    config_fixes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # With the services live: the probes and unit transitions during the run (inside/downtime).
    watched: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ReplayResult":
        return cls(
            apt=AptRun.from_json(data.get("apt")),
            before=data.get("before") or {},
            after=data.get("after") or {},
            audit=CommandRun.from_json(data.get("audit")),
            check=CommandRun.from_json(data.get("check")),
            auto_marks=CommandRun.from_json(data.get("auto_marks")),
            upper_bytes=data.get("upper_bytes") or {},
            growth=data.get("growth") or {},
            upper_free_bytes=int(data.get("upper_free_bytes", 1 << 40)),
            timings=data.get("timings") or {},
            hazards=HazardFacts.from_json(data.get("hazards")),
            source_cache=data.get("source_cache"),
            config_fixes=list(data.get("config_fixes") or []),
            watched=data.get("watched"),
        )
