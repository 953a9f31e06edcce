"""The status the prepare service leaves, as status and the motd line read it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from apt_rehearse.store import status_file


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text("Package: a\nStatus: install ok installed\n")
    (tmp_path / "var/lib/apt/lists").mkdir(parents=True)
    (tmp_path / "var/lib/apt/lists/example_InRelease").write_text("x")
    return tmp_path


ROWS = [
    {"request": "upgrade", "id": "a" * 64, "changes": 2, "verdict": "block", "problems": ["BLOCK x: a script fails"]},
    {"request": "dist-upgrade", "id": "a" * 64, "changes": 2, "verdict": "block", "problems": ["BLOCK x"]},
    {"request": "gate", "id": "b" * 64, "changes": 1, "verdict": "pass", "problems": []},
]


def test_the_motd_line_says_the_full_upgrade_s_verdict_and_the_unattended_set_s(tmp_path: Path) -> None:
    root = str(_tree(tmp_path))
    status = status_file.build(root, [dict(row, rehearsed_at=time.time() - 7200) for row in ROWS])
    assert status_file.motd_line(status, root) == (
        "apt-rehearse: 2 updates pending, rehearsed 2 h ago: BLOCK: 1 problem(s), see apt-rehearse status; "
        "unattended-upgrades' 1: PASS"
    )
    assert status_file.motd_line(None, root).endswith("not rehearsed yet (apt-rehearse prepare)")


def test_a_dpkg_run_or_an_apt_update_since_makes_it_stale(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    status = status_file.build(str(tree), ROWS)
    assert status_file.stale_because(status, str(tree)) is None
    lists = tree / "var/lib/apt/lists/example_InRelease"
    later = time.time() + 60
    import os

    os.utime(lists, (later, later))
    assert status_file.stale_because(status, str(tree)) == "apt updated its lists since"
    (tree / "var/lib/dpkg/status").write_text("Package: a\nStatus: install ok installed\nVersion: 2\n")
    assert status_file.stale_because(status, str(tree)) == "packages were installed or removed since"
    assert "(stale: packages were installed or removed since)" in status_file.motd_line(status, str(tree))


def test_nothing_pending_and_a_failed_prepare_are_said_as_such(tmp_path: Path) -> None:
    root = str(_tree(tmp_path))
    nothing = status_file.build(root, [{"request": "upgrade", "id": None, "changes": 0, "nothing_pending": True}])
    assert status_file.motd_line(nothing, root) == "apt-rehearse: no updates pending"
    failed = status_file.build(root, [{"request": "upgrade", "error": "the sandbox ended without a result"}])
    assert status_file.motd_line(failed, root) == "apt-rehearse: the last prepare failed; see apt-rehearse status"
    assert [status_file.age(s) for s in (5, 600, 7200, 3 * 86400)] == ["5 s", "10 min", "2 h", "3 days"]


def test_the_status_names_the_services_the_real_run_takes_down(tmp_path: Path) -> None:
    from apt_rehearse.fronts.prepare import status_lines

    outage = {"start_s": 2.0, "seconds": 15.1, "forecast_s": [15.0, 22.8], "cause": "mariadb-server preinst (upgrade)"}
    document = {
        "downtime": [
            {
                "unit": "mariadb.service",
                "seconds": 15.1,
                "forecast_s": [15.0, 22.8],
                "outages": [{**outage, "until_end": False}],
                "degraded": [],
                "restarts": 1,
                "reloads": 0,
                "start_limit_hit": False,
                "probed": ["tcp/3306"],
            },
            {"unit": "apache2.service", "outages": [], "reloads": 2},  # no outage: not a line
        ]
    }
    [line] = status_file.downtime_lines(document)
    assert line == "mariadb.service: down once, 15-22.8 s (mariadb-server preinst (upgrade)), 1 restart(s)"
    report = tmp_path / "r.json"
    report.write_text(json.dumps(document))
    assert status_file.downtime_of_report(str(report)) == [line]
    assert status_file.downtime_of_report(str(tmp_path / "gone.json")) == []
    shown = status_lines(
        {
            "prepared": True,
            "written": 0,
            "stale": None,
            "requests": [
                {"request": "dist-upgrade", "changes": 3, "verdict": "pass", "age_s": 60, "downtime": [line]},
            ],
        }
    )
    assert f"      downtime: {line}" in shown
