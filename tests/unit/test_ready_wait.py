"""observe.wait_ready: how long an observation waits for what should answer (pure logic, a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from apt_rehearse.inside import observe


class FakeSystem:
    """The booted system as wait_ready sees it, second by second."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        self.cpu = 0  # services' CPU time so far, microseconds
        self.busy_until = 0.0  # the services use a whole CPU until then
        self.listening: dict[int, float] = {}  # port -> from when it listens
        self.page_ready: dict[int, float] = {}  # port -> from when its page answers 200 (else 404)
        self.probe_ready = float("inf")
        monkeypatch.setattr(observe.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(observe.time, "sleep", self.sleep)
        monkeypatch.setattr(observe, "sockets", self.sockets)
        monkeypatch.setattr(observe, "http_get", self.http_get)
        monkeypatch.setattr(observe, "run_probe", lambda probe: {"ok": self.now >= self.probe_ready})
        monkeypatch.setattr(observe, "_services_cpu_usec", lambda: self.cpu)
        self.probes: list[dict[str, str]] = []
        monkeypatch.setattr(observe, "read_probes", lambda: [dict(p) for p in self.probes])

    def sleep(self, seconds: float) -> None:
        busy = max(0.0, min(self.now + seconds, self.busy_until) - self.now)
        self.cpu += int(busy * 1e6)
        self.now += seconds

    def sockets(self) -> list[dict[str, Any]]:
        return [
            {"proto": "tcp", "family": 4, "address": "127.0.0.1", "port": port, "unit": "app.service"}
            for port, since in self.listening.items()
            if self.now >= since
        ]

    def http_get(self, host: str, port: int, path: str, tls: bool = False) -> dict[str, Any] | None:
        if self.now < self.listening.get(port, float("inf")):
            return None
        return {"status": 200 if self.now >= self.page_ready.get(port, 0.0) else 404}


def baseline(*ports: int, probes: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "sockets": [
            {"proto": "tcp", "family": 4, "address": "127.0.0.1", "port": port, "unit": "app.service"} for port in ports
        ],
        "http": {f"{port}/": {"status": 200} for port in ports},
        "probes": {name: {"ok": True} for name in probes},
    }


def test_nothing_missing_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    system = FakeSystem(monkeypatch)
    system.listening = {8080: 0.0}
    assert observe.wait_ready(60, baseline(8080)) == {"seconds": 0.0, "missing": []}


def test_a_busy_service_is_waited_for_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tomcat: listening at once, its WAR deployed (and the probe passing) 14 s later, busy meanwhile.
    system = FakeSystem(monkeypatch)
    system.listening, system.page_ready, system.busy_until = {8080: 0.0}, {8080: 14.0}, 14.0
    system.probes, system.probe_ready = [{"name": "war"}], 14.0
    result = observe.wait_ready(60, baseline(8080, probes=("war",)))
    assert result == {"seconds": 14.0, "missing": []}
    # In the baseline too (no expectations but the probes).
    system.now, system.cpu = 0.0, 0
    assert observe.wait_ready(60)["seconds"] == 14.0


def test_an_idle_system_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # A service that broke: nothing works on it, nothing is coming.
    system = FakeSystem(monkeypatch)
    system.busy_until = 3.0
    result = observe.wait_ready(60, baseline(8083))
    assert (
        result["missing"]
        == [
            "tcp port 8083",
        ]
        and result.get("idle") is True
    )
    assert 5.0 <= result["seconds"] <= 7.0


def test_the_timeout_and_a_probes_own_wait_bound_it(monkeypatch: pytest.MonkeyPatch) -> None:
    system = FakeSystem(monkeypatch)
    system.busy_until = float("inf")  # always busy (a database at work)
    result = observe.wait_ready(10, baseline(8083))
    assert result["seconds"] == 10.0 and result["missing"] == ["tcp port 8083"]
    system.now = 0.0
    system.probes = [{"name": "expected-to-fail", "wait": "0"}, {"name": "slow", "wait": "5"}]
    result = observe.wait_ready(60)
    assert result == {"seconds": 6.0, "missing": []}  # each probe given up at its Wait


def test_ports_the_kernel_picks_and_failed_baseline_probes_are_not_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    system = FakeSystem(monkeypatch)
    system.busy_until = float("inf")
    system.probes = [{"name": "never"}]
    before = baseline(45232)
    before["probes"] = {"never": {"ok": False}}
    assert observe.wait_ready(60, before) == {"seconds": 0.0, "missing": []}


def test_without_cgroup_figures_only_the_timeout_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    system = FakeSystem(monkeypatch)
    monkeypatch.setattr(observe, "_services_cpu_usec", lambda: None)
    assert observe.wait_ready(7, baseline(8083))["seconds"] == 7.0
    assert system.now == 7.0
