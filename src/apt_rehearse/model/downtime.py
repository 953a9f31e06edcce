"""The downtime forecast, as the report and fleet tools read it: a unit's
outages and degraded stretches during the run, with their causes, and the
range they forecast for the real run (checks/downtime computes them)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class Stretch:
    start_s: float
    seconds: float
    cause: str
    until_end: bool = False  # the run (and the watch's grace after it) ended with it still out

    def to_json(self, slowdown: float, interval: float) -> dict[str, Any]:
        low, high = forecast_range(self.seconds, slowdown, interval)
        return {
            "start_s": self.start_s,
            "seconds": self.seconds,
            "forecast_s": [low, high],
            "cause": self.cause,
            "until_end": self.until_end,
        }


@dataclasses.dataclass
class UnitDowntime:
    unit: str
    outages: list[Stretch] = dataclasses.field(default_factory=list)
    degraded: list[Stretch] = dataclasses.field(default_factory=list)
    restarts: int = 0
    reloads: int = 0
    start_limit_hit: bool = False
    probed: list[str] = dataclasses.field(default_factory=list)  # "tcp/3306", "http/80/"
    events: list[list[Any]] = dataclasses.field(default_factory=list)  # systemd's: [seconds, event]

    @property
    def seconds(self) -> float:
        return round(sum(o.seconds for o in self.outages), 3)

    def to_json(self, slowdown: float, interval: float) -> dict[str, Any]:
        low, high = forecast_range(self.seconds, slowdown, interval) if self.outages else (0.0, 0.0)
        return {
            "unit": self.unit,
            "seconds": self.seconds,
            "forecast_s": [low, high],
            "outages": [o.to_json(slowdown, interval) for o in self.outages],
            "degraded": [d.to_json(slowdown, interval) for d in self.degraded],
            "restarts": self.restarts,
            "reloads": self.reloads,
            "start_limit_hit": self.start_limit_hit,
            "probed": self.probed,
            "events": self.events[:50],
        }


def forecast_range(seconds: float, slowdown: float, interval: float) -> tuple[float, float]:
    low = max(0.0, seconds - interval)
    high = (seconds + interval) * max(slowdown, 1.0)
    # To a tenth of a second, outwards (rounded first: 20.2 - 0.1 is 20.0999...).
    return math.floor(round(low * 10, 6)) / 10, math.ceil(round(high * 10, 6)) / 10


def describe(entry: dict[str, Any]) -> str:
    """One line: "mariadb.service: down once, 20-30 s (mariadb-server postinst)"."""
    parts = []
    outages = entry["outages"]
    if outages:
        low, high = entry["forecast_s"]
        times = {1: "once", 2: "twice"}.get(len(outages), f"{len(outages)} times")
        causes = list(dict.fromkeys(o["cause"] for o in outages))
        still = " and still down when the run ended" if outages[-1]["until_end"] else ""
        parts.append(f"down {times}, {span(low, high)}{still} ({'; '.join(causes)})")
    if entry["degraded"]:
        parts.append(f"answered otherwise {len(entry['degraded'])} time(s)")
    if entry["restarts"]:
        parts.append(f"{entry['restarts']} restart(s)")
    if entry["reloads"]:
        parts.append(f"{entry['reloads']} reload(s)")
    if entry["start_limit_hit"]:
        parts.append("hit its start limit: systemd stopped restarting it")
    if not outages and entry["probed"]:
        parts.append("no outage")
    return f"{entry['unit']}: {', '.join(parts)}"


def span(low: float, high: float) -> str:
    if high < 1:
        return "under 1 s"
    return f"{low:g}-{high:g} s"
