"""Comparing observations of the booted services (pure logic)."""

from __future__ import annotations

import copy

from apt_rehearse.inside.observe import read_probes
from apt_rehearse.checks.services import service_findings as _service_findings
from apt_rehearse.model.observation import Observation

BASE = {
    "units": {
        "apache2.service": {"load": "loaded", "active": "active", "sub": "running"},
        "ssh.service": {"load": "loaded", "active": "active", "sub": "running"},
        "setup.service": {"load": "loaded", "active": "active", "sub": "exited"},
        "broken.service": {"load": "loaded", "active": "failed", "sub": "failed"},
    },
    "sockets": [
        {"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 80, "unit": "apache2.service"},
        {"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 22, "unit": "ssh.service"},
    ],
    "http": {
        "80/": {
            "status": 200,
            "content_type": "text/html",
            "sha256": "a",
            "snippet": "<h1>ok</h1>",
            "php_source": False,
            "stable": True,
        },
        "80/index.php": {
            "status": 200,
            "content_type": "text/html",
            "sha256": "b",
            "snippet": "ok",
            "php_source": False,
            "stable": True,
        },
    },
    "config_tests": {
        "apache2ctl -M": {"exit_status": 0, "modules": ["core_module", "php_module"]},
        "sshd -t": {"exit_status": 0, "output": []},
    },
    "probes": {"rrd": {"ok": True, "detail": "exit 0"}},
    "journal": {},
}


def after(**changes: object) -> dict:
    observation = copy.deepcopy(BASE)
    observation.update(changes)
    return observation


def service_findings(baseline: dict, upgraded: dict | None, rebooted: dict | None) -> list:
    """The checks on observations as they come back from inside (JSON), typed as rehearse types them."""
    typed = [Observation.from_json(o) if o is not None else None for o in (baseline, upgraded, rebooted)]
    return _service_findings(*typed)


def checks_of(findings: list) -> dict[str, list]:
    result: dict[str, list] = {}
    for finding in findings:
        result.setdefault(finding.check, []).append(finding)
    return result


def test_identical_observations_have_no_findings() -> None:
    assert service_findings(BASE, after(), after()) == []


def test_everything_that_breaks_is_found() -> None:
    broken = after(
        units={
            **BASE["units"],
            "apache2.service": {"load": "loaded", "active": "failed", "sub": "failed"},
            "broken.service": {"load": "loaded", "active": "failed", "sub": "failed"},
        },
        sockets=[{"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 2222, "unit": "ssh.service"}],
        http={
            "80/": {**BASE["http"]["80/"]},
            "80/index.php": {
                "status": 200,
                "content_type": "application/x-httpd-php",
                "sha256": "c",
                "snippet": "<?php echo 1; ?>",
                "php_source": True,
            },
        },
        config_tests={
            "apache2ctl -M": {"exit_status": 0, "modules": ["core_module"]},
            "sshd -t": {"exit_status": 255, "output": ["/etc/ssh/sshd_config line 3: Bad option"]},
        },
        probes={"rrd": {"ok": False, "detail": "exit 1: ERROR: This RRD was created on another architecture"}},
        journal={"apache2.service": ["AH00526: Syntax error"]},
    )
    found = checks_of(service_findings(BASE, broken, None))
    assert [f.subject for f in found["service"]] == ["apache2.service"]  # broken.service was failed already
    assert found["service"][0].details["journal"] == ["AH00526: Syntax error"]
    assert sorted(f.details["before"]["port"] for f in found["socket"]) == [22, 80]
    ssh_socket = next(f for f in found["socket"] if f.details["before"]["port"] == 22)
    assert "now listens on 2222" in ssh_socket.message
    assert "now serves PHP source" in found["http"][0].message
    assert found["module"][0].details["lost"] == ["php_module"]
    assert found["config-test"][0].kinds == ["Config-Test", "Sshd-Config"]
    assert "another architecture" in found["probe"][0].message


def test_oneshot_and_unstable_pages_are_not_false_alarms() -> None:
    units = {**BASE["units"]}
    del units["setup.service"]  # a oneshot that ran at boot: not listed after
    http = copy.deepcopy(BASE["http"])
    base = copy.deepcopy(BASE)
    base["http"]["80/"]["stable"] = False  # a page with a clock in it
    http["80/"]["sha256"] = "different"
    assert service_findings(base, after(units=units, http=http), None) == []


def test_findings_seen_only_after_a_reboot_say_so() -> None:
    rebooted = after(units={**BASE["units"], "ssh.service": {"load": "loaded", "active": "failed", "sub": "failed"}})
    [finding] = service_findings(BASE, after(), rebooted)
    assert finding.subject == "ssh.service" and finding.message.endswith("after a reboot")


def test_a_unit_restarting_after_a_failure_is_failed() -> None:
    # named refusing its configuration, caught between two automatic restarts (corpus, bind9).
    restarting = {"load": "loaded", "active": "activating", "sub": "auto-restart"}
    [finding] = service_findings(BASE, after(), after(units={**BASE["units"], "apache2.service": restarting}))
    assert finding.check == "service" and "activating (auto-restart)" in finding.message
    starting = {"load": "loaded", "active": "activating", "sub": "start"}
    assert service_findings(BASE, after(units={**BASE["units"], "apache2.service": starting}), None) == []


def test_a_unit_whose_ports_another_unit_took_over_is_not_lost() -> None:
    # trixie's postfix: postfix@-.service stops, postfix.service listens on 25 (corpus, postfix-dovecot).
    units = {**BASE["units"], "apache2.service": {"load": "loaded", "active": "inactive", "sub": "dead"}}
    taken = [{**sock, "unit": "httpd.service"} if sock["port"] == 80 else sock for sock in BASE["sockets"]]
    assert service_findings(BASE, after(units=units, sockets=taken), None) == []
    # Stopped with nobody on its port: lost, as before.
    found = checks_of(service_findings(BASE, after(units=units, sockets=BASE["sockets"][1:]), None))
    assert [f.subject for f in found["service"]] == ["apache2.service"]
    # Failed, even with its port served: still a finding.
    failed = {**BASE["units"], "apache2.service": {"load": "loaded", "active": "failed", "sub": "failed"}}
    found = checks_of(service_findings(BASE, after(units=failed, sockets=taken), None))
    assert [f.subject for f in found["service"]] == ["apache2.service"]


def test_a_port_the_kernel_picked_is_not_a_lost_socket() -> None:
    # squid's UDP sockets for DNS replies, another port at every start (corpus, squid).
    def squid(*ports: int) -> list:
        return [{"proto": "udp", "family": 4, "address": "0.0.0.0", "port": p, "unit": "squid.service"} for p in ports]

    base = after(sockets=BASE["sockets"] + squid(3130, 45232))
    assert service_findings(base, after(sockets=BASE["sockets"] + squid(3130, 41464)), None) == []
    # A fixed port lost is still found; an ephemeral one too, when the unit listens nowhere any more.
    [lost] = service_findings(base, after(sockets=BASE["sockets"] + squid(41464)), None)
    assert lost.details["before"]["port"] == 3130
    assert {f.details["before"]["port"] for f in service_findings(base, after(), None)} == {3130, 45232}


def test_a_page_on_a_port_the_kernel_picked_has_not_gone() -> None:
    # containerd's stream server answers 404 on 127.0.0.1:<port 0>: another
    # port at every start (corpus, docker). The page moved with its unit.
    def containerd(port: int) -> dict:
        sock = {"proto": "tcp", "family": 4, "address": "127.0.0.1", "port": port, "unit": "containerd.service"}
        page = {"status": 404, "content_type": "text/plain", "sha256": "c", "snippet": "404 page not found"}
        return {"sockets": BASE["sockets"] + [sock], "http": {**BASE["http"], f"{port}/": {**page, "stable": True}}}

    base = after(**containerd(35935))
    assert service_findings(base, after(**containerd(41211)), None) == []
    # Gone with its unit: still found, as a page and a socket.
    gone = {"sockets": BASE["sockets"], "http": BASE["http"]}
    found = checks_of(service_findings(base, after(**gone), None))
    assert [f.subject for f in found["http"]] == ["http://localhost:35935/"]
    assert [f.details["before"]["port"] for f in found["socket"]] == [35935]
    # A fixed port is no guess: a page gone from port 8080 is a finding even while its unit listens elsewhere.
    fixed = containerd(8080)
    moved = containerd(8081)
    assert [f.subject for f in checks_of(service_findings(after(**fixed), after(**moved), None))["http"]] == [
        "http://localhost:8080/"
    ]


def test_probe_files_are_deb822(tmp_path) -> None:
    (tmp_path / "rrd.probe").write_text(
        "# the monitoring data must stay readable\nName: rrd\nType: command\nCommand: rrdtool info /var/lib/m/a.rrd\n"
        "Expect-Exit: 0\n\nType: http\nURL: http://127.0.0.1/status\nExpect-Status: 200\nExpect-Body: OK\n"
    )
    (tmp_path / "ignored.txt").write_text("Type: tcp\n")
    probes = read_probes(str(tmp_path))
    assert [p["name"] for p in probes] == ["rrd", "rrd.probe#2"]
    assert probes[0]["command"] == "rrdtool info /var/lib/m/a.rrd" and probes[1]["expect-body"] == "OK"
