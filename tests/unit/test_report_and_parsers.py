from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest

from apt_rehearse.checks.problems import problems_of
from apt_rehearse.sandbox import mountinfo
from apt_rehearse.plan import release
from apt_rehearse.store import report
from apt_rehearse.model.policy import Finding
from apt_rehearse.model.rehearsal import Rehearsal
from apt_rehearse.sandbox.namespaces import SandboxSpec, plan_sandbox
from apt_rehearse.model.transaction import Change, Transaction

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 254:1 / /boot rw,relatime - ext2 /dev/vda1 rw
41 40 254:2 / /boot/efi rw,relatime - vfat /dev/vda2 rw
42 27 254:3 / /srv/my\\040data rw,relatime - xfs /dev/vdb rw
43 27 0:40 / /mnt/nfs rw - nfs4 server:/export rw
44 27 0:41 / /tmp rw - tmpfs tmpfs rw
45 27 254:4 / /run/media/x rw - ext4 /dev/sdb1 rw
46 27 254:5 / /srv/tree rw - ext4 /dev/vdc rw
47 46 254:6 / /srv/tree/var rw - ext4 /dev/vdd rw
"""


def test_state_submounts_are_local_disks_parents_first() -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    targets = [e.target for e in mountinfo.state_submounts("/", entries)]
    assert targets == ["/boot", "/boot/efi", "/srv/my data", "/srv/tree", "/srv/tree/var"]
    assert "/mnt/nfs" not in targets and "/tmp" not in targets and "/run/media/x" not in targets


def test_state_submounts_of_a_directory_root() -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    assert [e.target for e in mountinfo.state_submounts("/srv/tree", entries)] == ["/srv/tree/var"]


def test_plan_describes_every_step_and_never_binds_devices() -> None:
    entries = mountinfo.parse_mountinfo(MOUNTINFO)
    plan = plan_sandbox(
        SandboxSpec(root="/", read_only_binds={"/var/cache/apt-rehearse/archives": "/run/apt-rehearse/debs/0"}), entries
    )
    text = "\n".join(plan.describe())
    assert "overlay on /run/root: lower /" in text
    assert "overlay on /run/root/boot/efi" in text
    assert "mknod" in text and "pivot_root" in text
    assert "bind /dev" not in text and "bind /run " not in text
    assert [layer.mountpoint for layer in plan.layers] == [
        "/",
        "/boot",
        "/boot/efi",
        "/srv/my data",
        "/srv/tree",
        "/srv/tree/var",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("deb http://deb.debian.org/debian bookworm main\n", "deb http://deb.debian.org/debian trixie main\n"),
        (
            "deb [signed-by=/k.gpg arch=amd64] http://x/debian bookworm-updates main contrib\n",
            "deb [signed-by=/k.gpg arch=amd64] http://x/debian trixie-updates main contrib\n",
        ),
        (
            "deb http://security.debian.org/debian-security bookworm-security main\n",
            "deb http://security.debian.org/debian-security trixie-security main\n",
        ),
        ("# deb http://x bookworm main\n", "# deb http://x bookworm main\n"),
        ("deb http://x/ubuntu bookwormish main\n", "deb http://x/ubuntu bookwormish main\n"),
    ],
)
def test_one_line_sources_rewrite(line: str, expected: str) -> None:
    assert release.rewrite_one_line(line, "bookworm", "trixie")[0] == expected


def test_deb822_sources_rewrite() -> None:
    text = (
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://example.org/other\nSuites: stable\nComponents: main\n"
    )
    rewritten, count = release.rewrite_deb822(text, "bookworm", "trixie")
    assert count == 2
    assert "Suites: trixie trixie-updates" in rewritten
    assert "Suites: stable" in rewritten
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in rewritten


def _rehearsal(findings: list[Finding], verdict: str) -> Rehearsal:
    changes = [
        Change("php8.2", "amd64", "8.2.29-1~deb12u1", None, "remove", manual=True),
        Change("apache2", "amd64", "2.4.62-1~deb12u2", "2.4.65-2", "upgrade", deb="/d/a.deb", sha256="0" * 64),
        Change("libnew1", "amd64", None, "1.0", "install", deb="/d/n.deb", sha256="1" * 64),
    ]
    tx = Transaction(changes, request="dist-upgrade --release trixie", dpkg_status_sha256="f" * 64, kept_back=["held"])
    started = datetime.datetime(2026, 11, 26, 10, 0, tzinfo=datetime.timezone.utc)
    return Rehearsal(tx, findings, verdict, started, 12.5, [("plan", 1.0), ("replay", 10.0)])


# The schema the package ships (/usr/share/apt-rehearse/report.schema.json).
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "data" / "report.schema.json"


def _validator() -> Any:
    """jsonschema's validator of SCHEMA_FILE (imported here: the other tests run without it)."""
    try:
        import jsonschema
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must validate the report: python3-jsonschema is not installed")
        pytest.skip("python3-jsonschema is not installed (the report's contract is not checked)")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: Any, document: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def _observation(units: dict[str, tuple[str, str]], sockets: list[tuple[str, int, int]], http: dict[str, int]) -> dict:
    return {
        "units": {name: {"load": "loaded", "active": active, "sub": sub} for name, (active, sub) in units.items()},
        "sockets": [
            {
                "proto": proto,
                "family": family,
                "address": "0.0.0.0" if family == 4 else "::",
                "port": port,
                "unit": "apache2.service",
            }
            for proto, port, family in sockets
        ],
        "http": {
            page: {
                "status": status,
                "content_type": "text/html",
                "sha256": "2" * 64,
                "length": 10,
                "snippet": "<html>",
                "php_source": False,
                "stable": True,
            }
            for page, status in http.items()
        },
        "config_tests": {"apache2ctl -t": {"exit_status": 0, "output": ["Syntax OK"]}},
        "probes": {},
        "journal": {name: ["failed to start"] for name, (active, _) in units.items() if active == "failed"},
        "seconds": 0.4,
    }


def test_json_report_follows_the_contract() -> None:
    validator = _validator()
    findings = [
        Finding(
            "conffile",
            ["Conffile-Prompt"],
            "apache2",
            "/etc/apache2/apache2.conf: changed",
            {"path": "/etc/apache2/apache2.conf"},
            "warn",
        ),
        Finding(
            "removal",
            ["Remove-Module"],
            "php8.2",
            "php8.2 would be REMOVED",
            {"manual": True, "replacement": "php8.4"},
            "block",
        ),
        Finding(
            "release", ["Source-Missing"], "http://x", "http://x offers nothing for trixie", {"apt": "404"}, "info"
        ),
    ]
    rehearsal = _rehearsal(findings, "block")
    rehearsal.problems = problems_of(findings, rehearsal.transaction)
    rehearsal.upper_bytes = {"/": 123456}
    rehearsal.disk = [
        {
            "mount": "/",
            "host_path": "/",
            "upper_bytes": 123456,
            "growth_bytes": -20,
            "peak_extra_bytes": 4096,
            "free_bytes": 1 << 30,
            "size_bytes": 1 << 34,
        }
    ]
    rehearsal.notes = ["a note"]
    before = _observation(
        {
            "apache2.service": ("active", "running"),
            "mariadb.service": ("active", "running"),
            "dbus.socket": ("active", "running"),
        },
        [("tcp", 80, 6), ("tcp", 3306, 4), ("udp", 5353, 4)],
        {"80/": 200, "80/index.php": 200},
    )
    after = _observation(
        {
            "apache2.service": ("active", "running"),
            "mariadb.service": ("failed", "failed"),
            "dbus.socket": ("active", "running"),
        },
        [("tcp", 80, 6), ("tcp", 80, 4)],
        {"80/": 200, "80/index.php": 200},
    )
    rehearsal.observations = {
        "cgroup": {"path": "/sys/fs/cgroup/x", "systemd_scope": False},
        "boot": {"state": "running", "seconds": 0.7, "jobs": []},
        "baseline": before,
        "settle_after_upgrade": {"state": "degraded", "seconds": 1.2, "jobs": []},
        "upgraded": after,
    }
    with_services = report.build(rehearsal)
    without_services = report.build(_rehearsal([], "pass"))
    for document in (with_services, without_services):
        assert json.loads(json.dumps(document)) == document  # plain JSON: no tuples, sets or dates
        assert _errors(validator, document) == []
    # What the schema cannot say: the report's figures are the rehearsal's own.
    document = with_services
    assert document["id"] == rehearsal.transaction.identity
    assert datetime.datetime.fromisoformat(document["started"]) == rehearsal.started
    assert [f["severity"] for f in document["findings"]] == ["block", "warn", "info"]  # the worst first
    assert [c["package"] for c in document["transaction"]["changes"]] == ["apache2", "libnew1", "php8.2"]
    assert document["suggestion"] == {
        "also": ["php8.4"],
        "command": "apt-rehearse dist-upgrade --release trixie --also php8.4",
    }
    # The block and the warning are two problems, the site's first; the info finding makes none.
    problems = document["problems"]
    assert [(p["key"], p["severity"], p["area"]) for p in problems] == [
        ("removal:php8.2", "block", "site"),
        ("conffile:/etc/apache2/apache2.conf", "warn", "site"),
    ]
    assert [document["findings"][place]["subject"] for place in problems[0]["findings"]] == ["php8.2"]
    assert problems[0]["fix"]["packages"] == ["php8.4"] and problems[0]["verified"] is None
    services = document["services"]
    assert services["baseline"] == {
        "active_services": 2,
        "failed": [],
        "listening": ["tcp/3306", "tcp/80", "udp/5353"],
        "http": {"80/": 200, "80/index.php": 200},
    }
    assert services["upgraded"]["active_services"] == 1 and services["upgraded"]["failed"] == ["mariadb.service"]
    assert services["upgraded"]["listening"] == ["tcp/80"]
    assert services["settle_after_upgrade"] == {"state": "degraded", "seconds": 1.2}
    assert without_services["services"] is None and without_services["observations"] == {}


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("verdict",), "maybe", "verdict"),
        (("schema",), "apt-rehearse/2", "schema"),
        (("id",), "not-a-hash", "id"),
        (("started",), "26/11/2026 10:00", "started"),
        (("transaction", "changes", 0, "action"), "frobnicate", "transaction/changes/0/action"),
        (("transaction", "changes", 0, "to"), "9.9", "transaction/changes/0"),  # a removal has no new version
        (("transaction", "changes", 1, "from"), None, "transaction/changes/1"),  # an upgrade has an old one
        (("findings", 0, "severity"), "fatal", "findings/0/severity"),
        (("phases", 0, "seconds"), "1.0", "phases/0/seconds"),
    ],
)
def test_the_schema_refuses_a_report_that_breaks_the_contract(path: tuple, value: object, where: str) -> None:
    validator = _validator()
    finding = Finding("removal", ["Remove-Manual"], "php8.2", "php8.2 would be REMOVED", {"manual": True}, "block")
    document = report.build(_rehearsal([finding], "block"))
    changes = document["transaction"]["changes"]
    assert (changes[0]["action"], changes[1]["action"]) == ("upgrade", "install")  # sorted by package
    document["transaction"]["changes"] = [changes[2], changes[0], changes[1]]  # remove, upgrade, install
    assert _errors(validator, document) == []
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = _errors(validator, document)
    assert errors and all(error.startswith(where) for error in errors), errors


@pytest.mark.parametrize(
    "key",
    ["schema", "tool_version", "id", "root", "started", "duration_s", "verdict", "transaction", "findings", "phases"],
)
def test_the_schema_refuses_a_report_without_a_key_of_the_contract(key: str) -> None:
    validator = _validator()
    document = report.build(_rehearsal([], "pass"))
    del document[key]
    assert _errors(validator, document) == [f"(top): '{key}' is a required property"]


def test_saved_report_follows_the_contract(tmp_path: Path) -> None:
    """What fleet tools read: the report as saved under the log directory."""
    validator = _validator()
    if os.geteuid() != 0:
        pytest.skip("reports are saved root:adm: run as root to check the saved one")
    from apt_rehearse.model.config import Settings

    rehearsal = _rehearsal(
        [Finding("removal", ["Remove-Manual"], "php8.2", "php8.2 would be REMOVED", {}, "block")], "block"
    )
    document = report.finish(rehearsal, Settings(log_dir=str(tmp_path / "log")), duration_s=12.3456)
    saved = json.loads(Path(document["report_path"]).read_text())
    assert saved == document and saved["duration_s"] == 12.346
    assert Path(saved["report_path"]).parent == tmp_path / "log"
    assert _errors(validator, saved) == []


def test_text_report_is_apt_style() -> None:
    finding = Finding(
        "removal", ["Remove-Manual"], "php8.2", "php8.2 would be REMOVED (manually installed)", {}, "block"
    )
    text = report.render_text(report.build(_rehearsal([finding], "block")))
    lines = text.splitlines()
    assert lines[lines.index("The following packages will be REMOVED:") + 1] == "  php8.2"
    assert "The following NEW packages will be installed:" in lines
    assert "The following packages have been kept back:" in lines
    assert "1 upgraded, 1 newly installed, 0 downgraded, 1 to remove and 1 not upgraded." in lines
    assert "  BLOCK php8.2 would be REMOVED (manually installed)" in lines
    assert lines[-1].startswith("Verdict: BLOCK")
    assert "\033[" not in text


def test_colour_only_when_asked() -> None:
    text = report.render_text(report.build(_rehearsal([], "pass")), color=True)
    assert "\033[1;31m" in text and "\033[1;32mPASS" in text


def test_text_report_says_what_the_hazard_checks_covered_and_json_has_the_figures() -> None:
    rehearsal = _rehearsal([], "pass")
    rehearsal.hazards = {
        "libraries": {"checked": True, "objects": 76, "per_object": []},
        "boot": {"kernels": {"6.1.0-40-amd64": {"initrd_bytes": 30 << 20}}, "references": []},
    }
    rehearsal.disk = [{"mount": "/"}, {"mount": "/boot"}]
    document = report.build(rehearsal)
    assert (
        document["libraries"]["objects"] == 76
        and document["boot"]["kernels"]["6.1.0-40-amd64"]["initrd_bytes"] == 30 << 20
    )
    lines = report.render_text(document).splitlines()
    assert (
        "N: also checked the libraries of 76 program(s) and module(s); 1 kernel(s) and their initramfs; "
        "the free space of /, /boot"
    ) in lines


def test_missing_suites_are_told_from_network_errors() -> None:
    missing_suites = release.missing_suites
    # As python-apt joins apt's errors (seen on this machine, apt 2.6).
    file_repo = (
        "E:Failed to fetch file:/srv/repo/dists/trixie/main/binary-amd64/Packages  File not found - "
        "/srv/repo/dists/trixie/main/binary-amd64/Packages (2: No such file or directory), "
        "E:Some index files failed to download. They have been ignored, or old ones used instead."
    )
    assert list(missing_suites(file_repo)) == ["file:/srv/repo trixie"]
    # apt 3.0 (trixie) puts a warning first.
    trixie = (
        "W:Repositories should provide a clear-signed InRelease file, but none found at "
        "file:/srv/repo/dists/trixie/InRelease., " + file_repo
    )
    assert list(missing_suites(trixie)) == ["file:/srv/repo trixie"]
    http_repo = (
        "E:The repository 'https://download.docker.com/linux/debian trixie Release' does not have a Release "
        "file., W:Updating from such a repository can't be done securely, and is therefore disabled by "
        "default., E:Failed to fetch https://download.docker.com/linux/debian/dists/trixie/InRelease  404  "
        "Not Found [IP: 192.0.2.1 443]"
    )
    assert list(missing_suites(http_repo)) == ["https://download.docker.com/linux/debian trixie"]
    # A network error is worth another try, even beside a missing suite.
    offline = (
        "E:Failed to fetch http://deb.debian.org/debian/dists/trixie/InRelease  Temporary failure resolving "
        "'deb.debian.org', E:Some index files failed to download. They have been ignored, or old ones used "
        "instead."
    )
    assert missing_suites(offline) is None
    assert missing_suites(http_repo + ", " + offline) is None
    assert missing_suites("") is None


def test_an_unsigned_source_is_told_from_apt_updates_refusal() -> None:
    # apt 2.6's words, as python-apt joins them: no signature at all, and a key apt does not have.
    unsigned = "E:The repository 'file:/srv/repo trixie Release' is not signed."
    no_key = (
        "W:GPG error: http://repo.example/debian trixie InRelease: The following signatures couldn't be verified "
        "because the public key is not available: NO_PUBKEY 0123456789ABCDEF, E:The repository "
        "'http://repo.example/debian trixie InRelease' is not signed."
    )
    assert release.NOT_SIGNED.search(unsigned).group(1) == "file:/srv/repo trixie"
    assert release.NOT_SIGNED.search(no_key).group(1) == "http://repo.example/debian trixie"
    assert (
        release.NOT_SIGNED.search("E:The repository 'file:/srv/repo trixie Release' does not have a Release file.")
        is None
    )


def test_the_saved_log_times_apt_s_status_lines() -> None:
    from apt_rehearse.model.replay_result import AptRun

    run = AptRun.from_json(
        {
            "output": "Setting up zstd ...\nProcessing triggers for man-db ...\n",
            "status_lines": ["pmstatus:zstd:0.0000:Preparing zstd (amd64)", "pmstatus:zstd:88.8889:Installed zstd"],
            "status_times": [0.372, 0.444],
        }
    )
    assert run.log().splitlines()[-3:] == [
        "--- apt's status (seconds since apt started)",
        "    0.372  pmstatus:zstd:0.0000:Preparing zstd (amd64)",
        "    0.444  pmstatus:zstd:88.8889:Installed zstd",
    ]
    assert AptRun.from_json({"output": "x\n"}).log() == "x\n"  # an older replay: no times, the output as it was
