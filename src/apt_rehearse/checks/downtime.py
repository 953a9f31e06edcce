"""The downtime forecast: how long each service will be unavailable during
the real run, from what the rehearsal measured while apt ran with the
services live (inside/downtime).

A unit's outage is a stretch of time in which a target it serves (a port, a
page) did not answer at all; a page that answered otherwise is a degraded
stretch, not an outage. A unit nothing probes (no port) is out from its
"Stopping" to its next "Started" in systemd's journal. The cause of a stretch
is what ran when it began: the maintainer script seen running (from /proc),
else apt's step of the run (its status line).

The forecast scales each measured stretch to the real run: the rehearsal
writes to memory and has nothing else to do, the real run syncs to disk
beside the live system, so the real stretch is taken to be between the
measured one (less one probe interval) and Downtime-Slowdown times it (plus
one interval): a range, never a false precision.
"""

from __future__ import annotations

from typing import Any

from apt_rehearse.model.downtime import Stretch, UnitDowntime, describe, forecast_range, span
from apt_rehearse.model.policy import Finding

# journal events after which a unit is not serving, and the ones after which it is again
OUT_EVENTS = ("stopping", "stopped", "failed", "start-limit")
RESTART_AFTER = ("stopping", "stopped", "failed", "restart-scheduled", "start-limit")


def _windows(states: list[list[Any]], end: float, wanted: str) -> list[tuple[float, float]]:
    """The stretches a target spent in state ``wanted``, once it had been up."""
    windows = []
    seen_up = False
    for place, (at, state) in enumerate(states):
        seen_up = seen_up or state == "up"
        if state != wanted or not seen_up:
            continue
        until = states[place + 1][0] if place + 1 < len(states) else end
        windows.append((float(at), float(until)))
    return windows


def _merge(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _subtract(windows: list[tuple[float, float]], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    result = []
    for start, end in windows:
        pieces = [(start, end)]
        for hole_start, hole_end in holes:
            pieces = [
                piece
                for s, e in pieces
                for piece in ((s, min(e, hole_start)), (max(s, hole_end), e))
                if piece[1] - piece[0] > 1e-3
            ]
        result += pieces
    return result


def _label(script: str) -> str:
    package, _, rest = script.partition(" ")
    name, _, action = rest.partition(" ")
    return f"{package} {name}" + (f" ({action})" if action else "")


class Causes:
    """What ran at a moment of the watch: maintainer scripts, else apt's step."""

    def __init__(self, watched: dict[str, Any], status_lines: list[str], status_times: list[float]) -> None:
        self.scripts = [(float(at), list(names)) for at, names in watched.get("scripts") or []]
        offset = float(watched.get("apt_started") or 0.0)
        self.steps = [
            (offset + float(at), line.split(":", 3)[3])
            for line, at in zip(status_lines, status_times)
            if line.startswith("pmstatus:") and line.count(":") >= 3
        ]
        self.interval = float(watched.get("interval") or 0.1)

    def at(self, moment: float) -> str:
        # A script seen up to one interval after the moment started before it
        # (sampled), or ran through it.
        current: list[str] = []
        for at, names in self.scripts:
            if at > moment + self.interval:
                break
            current = names
        if current:
            return ", ".join(_label(name) for name in current)
        step = ""
        for at, line in self.steps:
            if at > moment:
                break
            step = line
        return f"while apt was at '{step}'" if step else "not during a maintainer script"


def forecast(watched: dict[str, Any] | None, status_lines: list[str], status_times: list[float]) -> list[UnitDowntime]:
    """Per unit: outages, degraded stretches, restarts, reloads, the start limit."""
    if not watched:
        return []
    end = float(watched.get("seconds") or 0.0)
    causes = Causes(watched, status_lines, status_times)
    events: dict[str, list[tuple[float, str, str]]] = {}
    for at, unit, event, result in watched.get("units") or []:
        if unit.endswith(".service"):
            events.setdefault(unit, []).append((float(at), event, result))
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for target in watched.get("targets") or []:
        if target.get("unit", "").endswith(".service"):
            by_unit.setdefault(target["unit"], []).append(target)
    result = []
    for unit in sorted(set(by_unit) | set(events)):
        entry = UnitDowntime(unit)
        unit_events = events.get(unit, [])
        _count_events(entry, unit_events)
        entry.events = [[at, event] for at, event, _ in unit_events]
        targets = by_unit.get(unit, [])
        if targets:
            entry.probed = sorted({_target_name(t) for t in targets})
            down = _merge([w for t in targets for w in _windows(t.get("states") or [], end, "down")])
            degraded = _merge([w for t in targets for w in _windows(t.get("states") or [], end, "degraded")])
            degraded = _subtract(degraded, down)
            down = _split_at_restarts(down, unit_events)
        elif unit_events and unit_events[0][1] in ("starting", "started"):
            # Started by the run (a user manager for a maintainer script's
            # runuser, a oneshot): not serving before it, so never out.
            down, degraded = [], []
        else:
            down, degraded = _journal_windows(unit_events, end), []
        entry.outages = [_stretch(start, stop, end, causes, unit_events) for start, stop in down]
        entry.degraded = [_stretch(start, stop, end, causes, unit_events) for start, stop in degraded]
        if entry.outages or entry.degraded or entry.restarts or entry.reloads or entry.start_limit_hit:
            result.append(entry)
    return result


def _target_name(target: dict[str, Any]) -> str:
    if target["kind"] == "http":
        return f"http/{target['port']}{target.get('path', '/')}"
    return f"tcp/{target['port']}"


def _count_events(entry: UnitDowntime, unit_events: list[tuple[float, str, str]]) -> None:
    was_out = False
    for _, event, result in unit_events:
        if event in RESTART_AFTER:
            was_out = True
        # A simple service's start job is done at once: "Started" without "Starting".
        if event in ("starting", "started") and was_out:
            entry.restarts += 1
            was_out = False
        if event == "reloaded":
            entry.reloads += 1
        if event == "start-limit" or result == "start-limit-hit":
            entry.start_limit_hit = True


def _split_at_restarts(
    windows: list[tuple[float, float]], unit_events: list[tuple[float, str, str]]
) -> list[tuple[float, float]]:
    """A unit stopped again before it answered: back-to-back outages, each
    with its own cause (two packages restarting it in turn), not one."""
    result = []
    for start, end in windows:
        cut = start
        started = False
        for at, event, _ in unit_events:
            if not cut < at < end:
                continue
            if event == "started":
                started = True
            elif event in OUT_EVENTS and started:
                result.append((cut, at))
                cut, started = at, False
        result.append((cut, end))
    return result


def _journal_windows(unit_events: list[tuple[float, str, str]], end: float) -> list[tuple[float, float]]:
    windows = []
    out_since: float | None = None
    for at, event, _ in unit_events:
        if event in OUT_EVENTS and out_since is None:
            out_since = at
        elif event == "started" and out_since is not None:
            windows.append((out_since, at))
            out_since = None
    if out_since is not None:
        windows.append((out_since, end))
    return windows


def _stretch(
    start: float, stop: float, end: float, causes: Causes, unit_events: list[tuple[float, str, str]]
) -> Stretch:
    # The probe sees a stop up to one interval late: systemd's own "Stopping"
    # just before says when it began, and so what stopped it.
    began = start
    for at, event, _ in unit_events:
        if event in OUT_EVENTS and start - 2 * causes.interval <= at <= start:
            began = at
            break
    return Stretch(round(start, 3), round(stop - start, 3), causes.at(began), until_end=stop >= end - 1e-3)


def host_seconds(entries: list[UnitDowntime]) -> float:
    """How long at least one service was out: the host's own downtime."""
    windows = _merge([(o.start_s, o.start_s + o.seconds) for e in entries for o in e.outages])
    return round(sum(stop - start for start, stop in windows), 3)


def findings(
    entries: list[UnitDowntime],
    slowdown: float,
    interval: float,
    overall_max: float | None,
    unit_max: dict[str, float],
) -> list[Finding]:
    """A Downtime finding per unit out during the run (info by default);
    Downtime-Max when the forecast passes the sysadmin's limit."""
    found = []
    for entry in entries:
        if not entry.outages and not entry.start_limit_hit:
            continue
        data = entry.to_json(slowdown, interval)
        kinds = ["Downtime"]
        limit = unit_max.get(entry.unit)
        message = f"during the real run {describe(data)}"
        if limit is not None and data["forecast_s"][1] > limit:
            kinds.append("Downtime-Max")
            message += f"; more than APT::Rehearse::Downtime-Max::{entry.unit} ({limit:g} s)"
        found.append(Finding("downtime", kinds, entry.unit, message, data))
    if overall_max is not None:
        total = host_seconds(entries)
        low, high = forecast_range(total, slowdown, interval) if total else (0.0, 0.0)
        if high > overall_max:
            found.append(
                Finding(
                    "downtime",
                    ["Downtime-Max"],
                    "this host",
                    f"during the real run a service of this host would be down {span(low, high)} in all, more "
                    f"than APT::Rehearse::Downtime-Max ({overall_max:g} s)",
                    {"seconds": total, "forecast_s": [low, high], "max_s": overall_max},
                )
            )
    return found
