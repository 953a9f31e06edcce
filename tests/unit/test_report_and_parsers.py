from __future__ import annotations

import datetime
import json

import pytest

from apt_rehearse import mountinfo, release, report
from apt_rehearse.policy import Finding
from apt_rehearse.rehearse import Rehearsal
from apt_rehearse.sandbox import SandboxSpec, plan_sandbox
from apt_rehearse.transaction import Change, Transaction

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
    plan = plan_sandbox(SandboxSpec(root="/", read_only_binds={"/var/cache/apt-rehearse/archives": "/run/apt-rehearse/debs/0"}),
                        entries)  # fmt: skip
    text = "\n".join(plan.describe())
    assert "overlay on /run/root: lower /" in text
    assert "overlay on /run/root/boot/efi" in text
    assert "mknod" in text and "pivot_root" in text
    assert "bind /dev" not in text and "bind /run " not in text
    assert [layer.mountpoint for layer in plan.layers] == ["/", "/boot", "/boot/efi", "/srv/my data", "/srv/tree", "/srv/tree/var"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("deb http://deb.debian.org/debian bookworm main\n", "deb http://deb.debian.org/debian trixie main\n"),
        ("deb [signed-by=/k.gpg arch=amd64] http://x/debian bookworm-updates main contrib\n",
         "deb [signed-by=/k.gpg arch=amd64] http://x/debian trixie-updates main contrib\n"),
        ("deb http://security.debian.org/debian-security bookworm-security main\n",
         "deb http://security.debian.org/debian-security trixie-security main\n"),
        ("# deb http://x bookworm main\n", "# deb http://x bookworm main\n"),
        ("deb http://x/ubuntu bookwormish main\n", "deb http://x/ubuntu bookwormish main\n"),
    ],
)  # fmt: skip
def test_one_line_sources_rewrite(line: str, expected: str) -> None:
    assert release.rewrite_one_line(line, "bookworm", "trixie")[0] == expected


def test_deb822_sources_rewrite() -> None:
    text = ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: http://example.org/other\nSuites: stable\nComponents: main\n")  # fmt: skip
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


def test_json_report_follows_the_contract() -> None:
    finding = Finding("removal", ["Remove-Manual"], "php8.2", "php8.2 would be REMOVED", {"manual": True}, "block")
    document = report.build(_rehearsal([finding], "block"))
    json.dumps(document)  # serialisable
    assert document["schema"] == "apt-rehearse/1"
    for key in ("tool_version", "id", "root", "started", "duration_s", "verdict", "transaction", "findings", "phases"):
        assert key in document
    assert document["verdict"] in ("pass", "warn", "block")
    for change in document["transaction"]["changes"]:
        assert set(change) >= {"package", "arch", "from", "to", "action", "manual"}
        assert change["action"] in ("install", "upgrade", "downgrade", "reinstall", "remove", "purge")
    [item] = document["findings"]
    assert set(item) >= {"check", "severity", "subject", "message", "details"}
    assert item["severity"] in ("info", "warn", "block")
    assert document["phases"] == [{"name": "plan", "seconds": 1.0}, {"name": "replay", "seconds": 10.0}]
    assert document["started"] == "2026-11-26T10:00:00+00:00"


def test_text_report_is_apt_style() -> None:
    finding = Finding("removal", ["Remove-Manual"], "php8.2", "php8.2 would be REMOVED (manually installed)", {}, "block")
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
    rehearsal.hazards = {"libraries": {"checked": True, "objects": 76, "per_object": []},
                         "boot": {"kernels": {"6.1.0-40-amd64": {"initrd_bytes": 30 << 20}}, "references": []}}
    rehearsal.disk = [{"mount": "/"}, {"mount": "/boot"}]
    document = report.build(rehearsal)
    assert document["libraries"]["objects"] == 76 and document["boot"]["kernels"]["6.1.0-40-amd64"]["initrd_bytes"] == 30 << 20
    lines = report.render_text(document).splitlines()
    assert ("N: also checked the libraries of 76 program(s) and module(s); 1 kernel(s) and their initramfs; "
            "the free space of /, /boot") in lines


def test_missing_suites_are_told_from_network_errors() -> None:
    missing_suites = release.missing_suites
    # As python-apt joins apt's errors (seen on this machine, apt 2.6).
    file_repo = ("E:Failed to fetch file:/srv/repo/dists/trixie/main/binary-amd64/Packages  File not found - "
                 "/srv/repo/dists/trixie/main/binary-amd64/Packages (2: No such file or directory), "
                 "E:Some index files failed to download. They have been ignored, or old ones used instead.")  # fmt: skip
    assert list(missing_suites(file_repo)) == ["file:/srv/repo trixie"]
    # apt 3.0 (trixie) puts a warning first.
    trixie = ("W:Repositories should provide a clear-signed InRelease file, but none found at "
              "file:/srv/repo/dists/trixie/InRelease., " + file_repo)  # fmt: skip
    assert list(missing_suites(trixie)) == ["file:/srv/repo trixie"]
    http_repo = ("E:The repository 'https://download.docker.com/linux/debian trixie Release' does not have a Release "
                 "file., W:Updating from such a repository can't be done securely, and is therefore disabled by "
                 "default., E:Failed to fetch https://download.docker.com/linux/debian/dists/trixie/InRelease  404  "
                 "Not Found [IP: 192.0.2.1 443]")  # fmt: skip
    assert list(missing_suites(http_repo)) == ["https://download.docker.com/linux/debian trixie"]
    # A network error is worth another try, even beside a missing suite.
    offline = ("E:Failed to fetch http://deb.debian.org/debian/dists/trixie/InRelease  Temporary failure resolving "
               "'deb.debian.org', E:Some index files failed to download. They have been ignored, or old ones used "
               "instead.")  # fmt: skip
    assert missing_suites(offline) is None
    assert missing_suites(http_repo + ", " + offline) is None
    assert missing_suites("") is None


def test_an_unsigned_source_is_told_from_apt_updates_refusal() -> None:
    # apt 2.6's words, as python-apt joins them: no signature at all, and a key apt does not have.
    unsigned = "E:The repository 'file:/srv/repo trixie Release' is not signed."
    no_key = ("W:GPG error: http://repo.example/debian trixie InRelease: The following signatures couldn't be verified "
              "because the public key is not available: NO_PUBKEY 0123456789ABCDEF, E:The repository "
              "'http://repo.example/debian trixie InRelease' is not signed.")  # fmt: skip
    assert release.NOT_SIGNED.search(unsigned).group(1) == "file:/srv/repo trixie"
    assert release.NOT_SIGNED.search(no_key).group(1) == "http://repo.example/debian trixie"
    assert release.NOT_SIGNED.search("E:The repository 'file:/srv/repo trixie Release' does not have a Release file.") is None
