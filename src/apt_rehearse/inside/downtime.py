"""Inside the booted sandbox, while apt runs: when each service stops answering.

A watcher probes what the baseline observation found (every TCP port a unit
listens on, every page that answered, the sysadmin's tcp and http probes)
about ten times a second, one thread per target so that a hanging service
holds up only its own probe, and samples which maintainer scripts run. When
it stops, systemd's journal gives each unit's transitions (stopping, started,
reloaded, the start limit), with the same monotonic clock. Raw data only:
checks/downtime turns it into outages, causes and a forecast.
"""

from __future__ import annotations

import glob
import json
import re
import threading
import time
from typing import Any

from apt_rehearse.inside.commands import run_command
from apt_rehearse.inside.observe import http_get

INTERVAL = 0.1  # seconds between two probes of one target
HTTP_TIMEOUT = 2.0
MAX_TARGETS = 32
# After apt, the watch goes on while a target that answered before is down,
# at most this long: a service restarted at the very end is seen coming back.
GRACE = 10.0
MAINTAINER_SCRIPT = re.compile(
    r"^/var/lib/dpkg/(?:info/(?P<package>[^/]+)\.|tmp\.ci/)(?P<script>(?:pre|post)(?:inst|rm))$"
)

# systemd's catalogue (sd-messages.h): the job messages PID 1 logs for a unit.
UNIT_MESSAGES = {
    "7d4958e842da4a758f6c1cdc7b36dcc5": "starting",
    "39f53479d3a045ac8e11786248231fbf": "started",
    "be02cf6855d2428ba40df7e9d022f03d": "failed",
    "de5b426a63be47a7b6ac3eaac82e2f6f": "stopping",
    "9d1aaa27d60140bd96365438aad20286": "stopped",
    "d34d037fff1847e6ae669a370e694725": "reloading",
    "7b05ebc668384222baa8881179cfda54": "reloaded",
    "5eb03494b6584870a536b337290809b3": "restart-scheduled",
    "d9b373ed55a64feb8242e02dbe79a49c": "result",
}


def probe_targets(baseline: dict[str, Any], probes: list[dict[str, str]]) -> list[dict[str, Any]]:
    """What to probe during the run, from the observation taken just before it."""
    owners = {(s["proto"], s["port"]): s.get("unit", "") for s in baseline.get("sockets", [])}
    targets: list[dict[str, Any]] = []
    pages = baseline.get("http", {})
    for key, page in sorted(pages.items()):
        port_text, _, path = key.partition("/")
        port = int(port_text)
        targets.append(
            {
                "unit": owners.get(("tcp", port), ""),
                "kind": "http",
                "host": "127.0.0.1",
                "port": port,
                "path": "/" + path,
                "status": page.get("status"),
                "content_type": page.get("content_type", ""),
                "sha256": page.get("sha256") if page.get("stable") else None,
                "tls": bool(page.get("tls")),
            }
        )
    http_ports = {t["port"] for t in targets}
    for sock in baseline.get("sockets", []):
        unit = sock.get("unit", "")
        if sock["proto"] != "tcp" or sock["port"] in http_ports or not unit.endswith(".service"):
            continue
        host = "127.0.0.1" if sock["family"] == 4 else "::1"
        if sock["address"] not in ("0.0.0.0", "::", "127.0.0.1", "::1"):
            host = sock["address"]
        targets.append({"unit": unit, "kind": "tcp", "host": host, "port": sock["port"]})
    for probe in probes:
        kind = probe.get("type", "").lower()
        if kind == "tcp" and probe.get("port", "").isdigit():
            port = int(probe["port"])
            targets.append(
                {
                    "unit": owners.get(("tcp", port), ""),
                    "kind": "tcp",
                    "host": probe.get("host", "127.0.0.1"),
                    "port": port,
                    "probe": probe["name"],
                }
            )
        match = re.match(r"^(https?)://([^/:]+)(?::(\d+))?(/.*)?$", probe.get("url", "")) if kind == "http" else None
        if match:
            port = int(match.group(3) or (443 if match.group(1) == "https" else 80))
            targets.append(
                {
                    "unit": owners.get(("tcp", port), ""),
                    "kind": "http",
                    "host": match.group(2),
                    "port": port,
                    "path": match.group(4) or "/",
                    "status": int(probe.get("expect-status", "200")),
                    "expect_body": probe.get("expect-body", ""),
                    "tls": match.group(1) == "https",
                    "probe": probe["name"],
                }
            )
        # A command probe is too costly to run ten times a second.
    unique = {(t["kind"], t["host"], t["port"], t.get("path")): t for t in targets}
    return list(unique.values())[:MAX_TARGETS]


def sample_state(target: dict[str, Any]) -> str:
    """up, degraded (answers, but not as before) or down (no answer)."""
    if target["kind"] == "tcp":
        # A bare port is up while something listens on it: read from the
        # kernel's table rather than connected to, ten times a second, which
        # would cost every forking daemon (sshd, postgres, exim) a process
        # and a log line each time, and slow the run being measured.
        return "up" if target["port"] in listening_ports() else "down"
    page = http_get(
        target["host"], target["port"], target.get("path", "/"), tls=bool(target.get("tls")), timeout=HTTP_TIMEOUT
    )
    if page is None:
        return "down"
    if page["status"] != target.get("status"):
        return "degraded"
    if target.get("content_type") and page["content_type"] != target["content_type"]:
        return "degraded"
    if target.get("sha256") and page["sha256"] != target["sha256"]:
        return "degraded"
    if target.get("expect_body") and target["expect_body"] not in page["_body"]:
        return "degraded"
    return "up"


def listening_ports() -> set[int]:
    """The TCP ports something listens on now (IPv4 and IPv6)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def running_scripts() -> list[str]:
    """The maintainer scripts running now: "PACKAGE SCRIPT ACTION"."""
    found = set()
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as handle:
                argv = handle.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        for place, arg in enumerate(argv[:4]):
            match = MAINTAINER_SCRIPT.match(arg)
            if not match:
                continue
            package = match.group("package") or _script_package(path)
            action = argv[place + 1] if place + 1 < len(argv) else ""
            found.add(f"{package.split(':')[0]} {match.group('script')} {action}".strip())
            break
    return sorted(found)


def _script_package(cmdline_path: str) -> str:
    """The package of a script dpkg runs from its control area (the new
    preinst): dpkg names it in the script's environment."""
    try:
        with open(cmdline_path.replace("cmdline", "environ"), "rb") as handle:
            for entry in handle.read().split(b"\0"):
                if entry.startswith(b"DPKG_MAINTSCRIPT_PACKAGE="):
                    return entry.split(b"=", 1)[1].decode("utf-8", "replace")
    except OSError:
        pass
    return "?"


class Watcher:
    """Probes the targets and samples the scripts until ``stop()``."""

    def __init__(self, targets: list[dict[str, Any]], interval: float = INTERVAL, journal: bool = True) -> None:
        self.targets = targets
        self.journal = journal  # read systemd's journal when stopped (the bench reads it from outside)
        self.interval = interval
        self.started = time.monotonic()
        self.started_epoch = time.time()
        self._stop = threading.Event()
        self._states: list[list[list[Any]]] = [[] for _ in targets]
        self._samples = [0 for _ in targets]
        self._sampled_at = [0.0 for _ in targets]  # when each target's last probe began
        self._scripts: list[list[Any]] = []
        self._threads = [threading.Thread(target=self._probe, args=(i,), daemon=True) for i in range(len(targets))]
        self._threads.append(threading.Thread(target=self._sample_scripts, daemon=True))

    def start(self) -> "Watcher":
        for thread in self._threads:
            thread.start()
        return self

    def _now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def _probe(self, index: int) -> None:
        states = self._states[index]
        while not self._stop.is_set():
            tick = time.monotonic()
            state = sample_state(self.targets[index])
            self._samples[index] += 1
            self._sampled_at[index] = tick
            if not states or states[-1][1] != state:
                states.append([round(tick - self.started, 3), state])
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def _sample_scripts(self) -> None:
        last: list[str] | None = None
        while not self._stop.is_set():
            tick = time.monotonic()
            scripts = running_scripts()
            if scripts != last:
                self._scripts.append([round(tick - self.started, 3), scripts])
                last = scripts
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def _recovering(self) -> bool:
        """A target that answered when the watch began is not up now."""
        return any(states and states[0][1] == "up" and states[-1][1] == "down" for states in self._states)

    def stop(self, grace: float = GRACE) -> dict[str, Any]:
        # Each target probed once more from now: a service that failed just
        # before apt ended is seen down, and then waited for.
        asked = time.monotonic()
        while min(self._sampled_at, default=asked) < asked and time.monotonic() < asked + HTTP_TIMEOUT + 1:
            time.sleep(self.interval / 4)
        deadline = time.monotonic() + grace
        while self._recovering() and time.monotonic() < deadline:
            time.sleep(self.interval)
        ended = self._now()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=HTTP_TIMEOUT + 1)
        return {
            "interval": self.interval,
            "seconds": ended,
            "targets": [
                {**target, "states": states, "samples": samples}
                for target, states, samples in zip(self.targets, self._states, self._samples)
            ],
            "scripts": self._scripts,
            "units": unit_events(self.started, self.started_epoch) if self.journal else [],
            "started_monotonic": self.started,
            "started_epoch": self.started_epoch,
        }


def unit_events(since_monotonic: float, since_epoch: float) -> list[list[Any]]:
    """systemd's transitions of every unit since the watch began:
    [seconds, unit, event, result]."""
    code, output = run_command(journal_argv(since_epoch), timeout=30)
    if code != 0:
        return []
    return parse_unit_events(output, since_monotonic)


def journal_argv(since_epoch: float) -> list[str]:
    return [
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        f"--since=@{int(since_epoch) - 1}",
        "--output-fields=MESSAGE_ID,UNIT,UNIT_RESULT,JOB_RESULT,MESSAGE",
        "_PID=1",
    ]


def parse_unit_events(output: str, since_monotonic: float) -> list[list[Any]]:
    """journalctl -o json lines of PID 1 -> [seconds since the watch began, unit, event, result]."""
    events = []
    for line in output.splitlines():
        try:
            entry = json.loads(line)
            at = int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6 - since_monotonic
        except (ValueError, KeyError, TypeError):
            continue
        event = UNIT_MESSAGES.get(entry.get("MESSAGE_ID", ""))
        unit = entry.get("UNIT")
        if at < 0 or not unit or not isinstance(unit, str):
            continue
        message = entry.get("MESSAGE") if isinstance(entry.get("MESSAGE"), str) else ""
        if event is None and "Start request repeated too quickly" in message:
            event = "start-limit"
        if event is None:
            continue
        result = entry.get("UNIT_RESULT") or entry.get("JOB_RESULT") or ""
        events.append([round(at, 3), unit, event, result if isinstance(result, str) else ""])
    return events
