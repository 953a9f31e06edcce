"""One observation of the booted services, as the checks read it.

It crosses the sandbox's boundary as JSON (observe.observe's result); the
saved report keeps that JSON as it is (its "observations" key)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Linux's default net.ipv4.ip_local_port_range: where a socket bound to port 0
# lands, another port at every start (squid's DNS sockets, containerd's stream
# server): not a port a client knows.
EPHEMERAL = (32768, 60999)


def kernel_picked(port: int) -> bool:
    return EPHEMERAL[0] <= port <= EPHEMERAL[1]


@dataclasses.dataclass
class Observation:
    units: dict[str, dict[str, str]]  # unit -> {load, active, sub}
    sockets: list[dict[str, Any]]  # listening: {proto, family, address, port, unit}
    http: dict[str, dict[str, Any]]  # "port/path" -> {status, content_type, sha256, snippet, php_source, stable}
    config_tests: dict[str, dict[str, Any]]  # the daemons' own config tests: {exit_status, output | modules}
    probes: dict[str, dict[str, Any]]  # the sysadmin's probes: {ok, detail, probe}
    journal: dict[str, list[str]]  # failed unit -> its last journal lines
    seconds: float = 0.0
    # unix: sockets the web servers' configuration names: {file, line, text, path, exists, beside}
    socket_references: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Observation":
        return cls(
            data.get("units") or {},
            data.get("sockets") or [],
            data.get("http") or {},
            data.get("config_tests") or {},
            data.get("probes") or {},
            data.get("journal") or {},
            float(data.get("seconds") or 0.0),
            data.get("socket_references") or [],
        )
