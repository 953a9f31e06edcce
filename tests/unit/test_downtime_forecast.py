"""The downtime forecast's logic (checks/downtime): probe states and systemd's
transitions in, outages with causes, a range for the real run, and the
policy's findings out."""

from __future__ import annotations

import pytest

from apt_rehearse.checks import downtime
from apt_rehearse.model.downtime import describe, forecast_range
from apt_rehearse.inside.downtime import MAINTAINER_SCRIPT, parse_unit_events, probe_targets
from apt_rehearse.model.policy import apply_policy


def watched(targets, units=(), scripts=(), seconds=10.0, apt_started=0.5):
    return {
        "interval": 0.1,
        "seconds": seconds,
        "apt_started": apt_started,
        "targets": targets,
        "units": [list(u) for u in units],
        "scripts": [list(s) for s in scripts],
    }


def target(unit, states, kind="tcp", port=3306):
    return {"unit": unit, "kind": kind, "host": "127.0.0.1", "port": port, "path": "/", "states": states}


def test_an_outage_is_measured_by_the_probes_and_caused_by_the_script_seen_then() -> None:
    data = watched(
        [target("mariadb.service", [[0.0, "up"], [2.0, "down"], [7.0, "up"]])],
        units=[(1.95, "mariadb.service", "stopping", ""), (6.9, "mariadb.service", "started", "")],
        scripts=[(0.0, []), (1.9, ["mariadb-server postinst configure"]), (7.2, [])],
    )
    [entry] = downtime.forecast(data, [], [])
    [outage] = entry.outages
    assert (outage.start_s, outage.seconds) == (2.0, 5.0)
    assert outage.cause == "mariadb-server postinst (configure)"
    assert entry.restarts == 1 and not entry.start_limit_hit
    low, high = entry.to_json(1.5, 0.1)["forecast_s"]
    assert (low, high) == (4.9, 7.7)


def test_without_a_script_seen_the_cause_is_apts_step() -> None:
    data = watched(
        [target("apache2.service", [[0.0, "up"], [3.0, "down"], [3.4, "up"]], kind="http", port=80)],
        units=[(2.95, "apache2.service", "stopping", ""), (3.3, "apache2.service", "started", "")],
        apt_started=1.0,
    )
    lines = ["pmstatus:apache2:10.0:Preparing apache2 (amd64)", "pmstatus:apache2:20.0:Unpacking apache2 (amd64)"]
    [entry] = downtime.forecast(data, lines, [1.0, 2.5])  # at 2.0 and 3.5 of the watch
    assert entry.outages[0].cause == "while apt was at 'Preparing apache2 (amd64)'"
    assert entry.probed == ["http/80/"]


def test_a_page_answering_otherwise_is_degraded_not_down() -> None:
    data = watched([target("nginx.service", [[0.0, "up"], [4.0, "degraded"], [5.0, "up"]], kind="http", port=80)])
    [entry] = downtime.forecast(data, [], [])
    assert entry.outages == [] and [(d.start_s, d.seconds) for d in entry.degraded] == [(4.0, 1.0)]


def test_two_targets_of_one_unit_make_one_outage_and_a_reload_none() -> None:
    data = watched(
        [
            target("apache2.service", [[0.0, "up"], [1.0, "down"], [2.0, "up"]], kind="http", port=80),
            target("apache2.service", [[0.0, "up"], [1.5, "down"], [2.5, "up"]], kind="http", port=443),
            target("nginx.service", [[0.0, "up"]], kind="http", port=8080),
        ],
        units=[(5.0, "nginx.service", "reloading", ""), (5.1, "nginx.service", "reloaded", "")],
    )
    apache, nginx = downtime.forecast(data, [], [])
    assert [(o.start_s, o.seconds) for o in apache.outages] == [(1.0, 1.5)]
    assert nginx.outages == [] and nginx.reloads == 1 and nginx.restarts == 0
    assert describe(nginx.to_json(1.5, 0.1)) == "nginx.service: 1 reload(s), no outage"


def test_a_window_over_two_restarts_is_two_outages_each_with_its_cause() -> None:
    data = watched(
        [target("rh.service", [[0.0, "up"], [1.0, "down"], [3.0, "up"]])],
        units=[
            (0.95, "rh.service", "stopping", ""),
            (1.5, "rh.service", "started", ""),
            (1.6, "rh.service", "stopping", ""),
            (2.9, "rh.service", "started", ""),
        ],
        scripts=[(0.9, ["rh postinst configure"]), (1.55, ["rh-plugin postinst configure"]), (3.0, [])],
    )
    [entry] = downtime.forecast(data, [], [])
    assert [(o.start_s, o.seconds, o.cause) for o in entry.outages] == [
        (1.0, 0.6, "rh postinst (configure)"),
        (1.6, 1.4, "rh-plugin postinst (configure)"),
    ]
    assert entry.restarts == 2


def test_a_unit_without_a_port_is_out_from_stopping_to_started() -> None:
    data = watched([], units=[(1.0, "cron.service", "stopping", ""), (1.2, "cron.service", "started", "")])
    [entry] = downtime.forecast(data, [], [])
    assert [(o.start_s, o.seconds) for o in entry.outages] == [(1.0, 0.2)] and entry.restarts == 1
    # Oneshots the run starts are no downtime, nor what the run starts and stops again
    # (the user manager of a maintainer script's runuser).
    assert not downtime.forecast(watched([], units=[(1.0, "x.service", "started", "")]), [], [])
    user = [(2.0, "user@101.service", "starting", ""), (2.1, "user@101.service", "started", "")]
    user += [(3.0, "user@101.service", "stopping", ""), (3.1, "user@101.service", "stopped", "")]
    assert downtime.forecast(watched([], units=user), [], []) == []


def test_the_start_limit_is_named_and_the_outage_lasts_to_the_end() -> None:
    data = watched(
        [target("rh-flaky.service", [[0.0, "up"], [1.0, "down"]])],
        units=[
            (0.9, "rh-flaky.service", "stopping", ""),
            (1.0, "rh-flaky.service", "started", ""),
            (1.1, "rh-flaky.service", "restart-scheduled", ""),
            (1.2, "rh-flaky.service", "started", ""),
            (1.3, "rh-flaky.service", "result", "start-limit-hit"),
        ],
        seconds=12.0,
    )
    [entry] = downtime.forecast(data, [], [])
    assert entry.start_limit_hit and entry.outages[-1].until_end
    text = describe(entry.to_json(1.5, 0.1))
    assert "still down when the run ended" in text and "hit its start limit" in text


def test_a_target_down_from_the_start_is_not_the_runs_doing() -> None:
    data = watched([target("broken.service", [[0.0, "down"]])])
    assert downtime.forecast(data, [], []) == []


def _lookup(key: str, default: str) -> str:
    return default


def test_findings_are_info_until_a_limit_is_passed() -> None:
    data = watched(
        [
            target("mariadb.service", [[0.0, "up"], [2.0, "down"], [7.0, "up"]]),
            target("redis.service", [[0.0, "up"], [6.0, "down"], [8.0, "up"]], port=6379),
        ]
    )
    entries = downtime.forecast(data, [], [])
    plain = apply_policy(downtime.findings(entries, 1.5, 0.1, None, {}), _lookup)
    assert [(f.subject, f.severity) for f in plain] == [("mariadb.service", "info"), ("redis.service", "info")]
    limited = apply_policy(downtime.findings(entries, 1.5, 0.1, 5.0, {"redis.service": 10.0}), _lookup)
    assert [(f.subject, f.severity) for f in limited] == [
        ("mariadb.service", "info"),
        ("redis.service", "info"),  # its own limit, 10 s, is above its 2.1-3.2 s
        ("this host", "block"),  # 2 to 8 s: 6 s with one of them out, forecast up to 9.2 s
    ]
    assert downtime.host_seconds(entries) == 6.0
    unit_limited = apply_policy(downtime.findings(entries, 1.5, 0.1, None, {"mariadb.service": 5.0}), _lookup)
    assert [f.severity for f in unit_limited] == ["block", "info"]


@pytest.mark.parametrize(
    "seconds, slowdown, expected", [(0.0, 1.5, (0.0, 0.2)), (5.0, 1.0, (4.9, 5.1)), (20.2, 1.5, (20.1, 30.5))]
)
def test_the_forecast_is_a_range(seconds: float, slowdown: float, expected: tuple[float, float]) -> None:
    assert forecast_range(seconds, slowdown, 0.1) == expected


def test_probe_targets_come_from_the_baseline() -> None:
    baseline = {
        "sockets": [
            {"proto": "tcp", "family": 4, "address": "127.0.0.1", "port": 3306, "unit": "mariadb.service"},
            {"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 80, "unit": "apache2.service"},
            {"proto": "tcp", "family": 6, "address": "::", "port": 22, "unit": "ssh.service"},
            {"proto": "udp", "family": 4, "address": "0.0.0.0", "port": 53, "unit": "named.service"},
            {"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 631, "unit": "init.scope"},
        ],
        "http": {"80/": {"status": 200, "content_type": "text/html", "sha256": "ab", "stable": True}},
    }
    probes = [
        {"name": "db", "type": "tcp", "port": "5432"},
        {"name": "shop", "type": "http", "url": "http://127.0.0.1/shop/", "expect-body": "Add to cart"},
        {"name": "rrd", "type": "command", "command": "rrdtool info x.rrd"},
    ]
    targets = probe_targets(baseline, probes)
    assert [(t["kind"], t["host"], t["port"], t["unit"]) for t in targets] == [
        ("http", "127.0.0.1", 80, "apache2.service"),
        ("tcp", "127.0.0.1", 3306, "mariadb.service"),
        ("tcp", "::1", 22, "ssh.service"),
        ("tcp", "127.0.0.1", 5432, ""),
        ("http", "127.0.0.1", 80, "apache2.service"),
    ]
    assert targets[-1]["path"] == "/shop/" and targets[-1]["expect_body"] == "Add to cart"
    assert targets[0]["sha256"] == "ab"


@pytest.mark.parametrize(
    "arg, package, script",
    [
        ("/var/lib/dpkg/info/mariadb-server.postinst", "mariadb-server", "postinst"),
        ("/var/lib/dpkg/info/libc6:amd64.prerm", "libc6:amd64", "prerm"),
        ("/var/lib/dpkg/tmp.ci/preinst", None, "preinst"),
    ],
)
def test_maintainer_scripts_are_known_by_their_path(arg: str, package: str | None, script: str) -> None:
    match = MAINTAINER_SCRIPT.match(arg)
    assert match and match.group("package") == package and match.group("script") == script
    assert not MAINTAINER_SCRIPT.match("/var/lib/dpkg/info/mariadb-server.list")


def test_systemds_journal_gives_the_units_transitions() -> None:
    lines = [
        # journalctl -o json of PID 1; monotonic timestamps in microseconds
        '{"__MONOTONIC_TIMESTAMP": "101500000", "UNIT": "mariadb.service",'
        ' "MESSAGE_ID": "de5b426a63be47a7b6ac3eaac82e2f6f", "MESSAGE": "Stopping MariaDB..."}',
        '{"__MONOTONIC_TIMESTAMP": "99000000", "UNIT": "old.service",'
        ' "MESSAGE_ID": "9d1aaa27d60140bd96365438aad20286", "MESSAGE": "Stopped before the watch"}',
        '{"__MONOTONIC_TIMESTAMP": "120000000", "UNIT": "mariadb.service",'
        ' "MESSAGE_ID": "39f53479d3a045ac8e11786248231fbf", "MESSAGE": "Started MariaDB."}',
        '{"__MONOTONIC_TIMESTAMP": "121000000", "UNIT": "rh.service",'
        ' "MESSAGE_ID": "d9b373ed55a64feb8242e02dbe79a49c", "UNIT_RESULT": "start-limit-hit"}',
        '{"__MONOTONIC_TIMESTAMP": "122000000", "UNIT": "rh2.service", "MESSAGE": "Start request repeated too quickly."}',
        '{"__MONOTONIC_TIMESTAMP": "123000000", "MESSAGE": "Reloading."}',
        "not json",
    ]
    events = parse_unit_events("\n".join(lines), 100.0)
    assert events == [
        [1.5, "mariadb.service", "stopping", ""],
        [20.0, "mariadb.service", "started", ""],
        [21.0, "rh.service", "result", "start-limit-hit"],
        [22.0, "rh2.service", "start-limit", ""],
    ]
