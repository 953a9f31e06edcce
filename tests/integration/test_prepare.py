"""Zero-wait verdicts (issue #17): `apt-rehearse prepare` rehearses what is
pending, and the real apt runs take their verdicts from it, on a bookworm
tree run as a machine with the real .deb installed (lib.machine).

rh-p-good and rh-p-bad are installed at 1.0; 2.0 of both is pending, and
rh-p-bad 2.0's postinst fails. unattended-upgrades may take rh-p-good only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from lib.localrepo import LocalRepo, build_deb
from lib.machine import TREE_SETUP, in_tree, install_machine, pending_pair
from lib.trees import bookworm_tree, build_package

pytestmark = pytest.mark.integration

CACHE = "var/cache/apt-rehearse"


@pytest.fixture(scope="module")
def machine(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-prepare-", dir="/var/tmp"))
    try:
        deb = build_package()
        tree = bookworm_tree(base / "tree", variant="frontends")
        debs = base / "debs"
        v1, v2 = pending_pair(tree, debs, "rh-p")
        install_machine(tree, deb, v1 + v2, v1)
        yield {"tree": tree, "debs": debs}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _reports(tree: Path) -> set[str]:
    return {p.name for p in (tree / "var/log/apt-rehearse").glob("2*.json")}


def _version(tree: Path, package: str) -> str:
    return in_tree(tree, f"dpkg-query -W -f='${{Version}}' {package}").stdout.strip()


def _status(tree: Path) -> dict:
    proc = in_tree(tree, "apt-rehearse status --json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_1_nothing_prepared_is_said_so(machine: dict) -> None:
    motd = in_tree(machine["tree"], "apt-rehearse status --motd")
    assert motd.returncode == 0 and motd.stdout.strip() == (
        "apt-rehearse: the pending updates are not rehearsed yet (apt-rehearse prepare)"
    ), motd.stderr
    assert _status(machine["tree"])["prepared"] is False


# The machine's MTA, as far as apt-rehearse sees it: what it is handed is kept.
SENDMAIL = '#!/bin/sh\n{ echo "ARGS: $*"; cat; echo "--- end"; } >> /root/mail.txt\n'


def test_2_prepare_rehearses_each_distinct_transaction_once(machine: dict) -> None:
    tree = machine["tree"]
    sendmail = tree / "usr/sbin/sendmail"
    sendmail.write_text(SENDMAIL)
    sendmail.chmod(0o755)
    before = _reports(tree)
    proc = in_tree(tree, "apt-rehearse prepare")
    assert proc.returncode == 10, proc.stdout + proc.stderr  # dist-upgrade's set blocks
    rows = {row["request"]: row for row in _status(tree)["requests"]}
    assert rows["upgrade"]["verdict"] == "block" and rows["upgrade"]["changes"] == 2
    assert rows["upgrade"]["reused"] is False
    # The same two packages: dist-upgrade's transaction is upgrade's, not rehearsed twice.
    assert rows["dist-upgrade"]["id"] == rows["upgrade"]["id"] and rows["dist-upgrade"]["reused"] is True
    assert rows["gate"]["verdict"] == "pass" and rows["gate"]["changes"] == 1
    assert any("rh-p-bad" in line for line in rows["upgrade"]["problems"]), rows["upgrade"]
    assert len(_reports(tree) - before) == 2  # upgrade's and the gate's
    # A second prepare finds every verdict there.
    again = in_tree(tree, "apt-rehearse prepare")
    assert again.returncode == 10
    assert all(row["reused"] for row in _status(tree)["requests"])
    assert len(_reports(tree) - before) == 2
    # The block was mailed to root once, with its problems; the second prepare did not mail again.
    mail = (tree / "root/mail.txt").read_text()
    assert mail.count("--- end") == 1 and "ARGS: -oi root" in mail, mail
    assert "Subject: apt-rehearse: the pending upgrade of " in mail and "is BLOCKED" in mail
    assert "upgrade: 2 package(s), BLOCK" in mail and "rh-p-bad" in mail
    sendmail.unlink()
    motd = in_tree(tree, "apt-rehearse status --motd").stdout.strip()
    assert motd.startswith("apt-rehearse: 2 updates pending, rehearsed ") and ": BLOCK: 1 problem(s)" in motd, motd
    assert "unattended-upgrades' 1: PASS" in motd
    text = in_tree(tree, "apt-rehearse status").stdout
    assert "apt-get dist-upgrade: 2 package(s), BLOCK" in text and "unattended-upgrades: 1 package(s), PASS" in text


@pytest.mark.parametrize("frontend", ["apt-get -y dist-upgrade", "apt-get -y upgrade"])
def test_3_the_real_runs_take_the_prepared_verdict(machine: dict, frontend: str) -> None:
    tree = machine["tree"]
    before = _reports(tree)
    proc = in_tree(tree, frontend)
    assert proc.returncode != 0
    assert "already rehearsed (an earlier rehearsal): BLOCK" in proc.stderr, proc.stderr
    assert _reports(tree) == before  # no second rehearsal
    assert _version(tree, "rh-p-bad") == "1.0" and _version(tree, "rh-p-good") == "1.0"


def test_4_a_prepare_in_flight_is_joined_by_the_hook(machine: dict) -> None:
    """The verdicts dropped: the hook started while prepare rehearses the
    same transaction waits for it and takes its verdict."""
    tree = machine["tree"]
    shutil.rmtree(tree / CACHE / "verdicts", ignore_errors=True)
    before = _reports(tree)
    prepare = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--ipc", "--uts", "--fork", "--propagation", "private"]
        + [
            "sh",
            "-c",
            TREE_SETUP,
            "sh",
            str(tree),
            "DEBIAN_FRONTEND=noninteractive",
            "sh",
            "-c",
            "apt-rehearse prepare",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _held_transaction_lock(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _held_transaction_lock(tree):
            prepare.kill()
        assert _held_transaction_lock(tree), "prepare never started rehearsing: " + prepare.communicate()[0]
        proc = in_tree(tree, "apt-get -y dist-upgrade")
    finally:
        prepare.communicate(timeout=600)
    assert "is being rehearsed already by apt-rehearse upgrade" in proc.stderr, proc.stderr
    assert "already rehearsed (an earlier rehearsal): BLOCK" in proc.stderr
    assert len(_reports(tree) - before) == 2  # prepare's two; none of the hook's
    assert _version(tree, "rh-p-bad") == "1.0"


def _held_transaction_lock(tree: Path) -> bool:
    from apt_rehearse.store import inflight

    directory = tree / CACHE / "inflight"
    names = [p.name for p in directory.glob("*")] if directory.is_dir() else []
    return any(name != "prepare" and inflight.holder_of(str(tree / CACHE), name) for name in names)


def test_5_unattended_upgrade_takes_the_prepared_approval(machine: dict) -> None:
    tree = machine["tree"]
    before = _reports(tree)
    proc = in_tree(tree, "unattended-upgrade -v")
    # Its one step is the prepared set itself: the exact verdict (a step of a larger set would take the approval).
    assert "already rehearsed (an earlier rehearsal): PASS" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert _version(tree, "rh-p-good") == "2.0" and _version(tree, "rh-p-bad") == "1.0"
    assert _reports(tree) == before


def test_6_a_new_update_is_rehearsed_afresh_never_matched_to_a_stale_verdict(machine: dict) -> None:
    tree = machine["tree"]
    assert _status(tree)["stale"] == "packages were installed or removed since"  # rh-p-good 2.0 went in
    repo = LocalRepo(tree / "srv/rh-repo")
    repo.add(build_deb(machine["debs"], "rh-p-good", "3.0", files={"/usr/share/rh-p-good/v": "3\n"}))
    repo.publish()
    assert in_tree(tree, "APT_REHEARSE=0 apt-get update -q").returncode == 0
    before = _reports(tree)
    proc = in_tree(tree, "apt-get -y install rh-p-good")
    assert proc.returncode == 0 and "rehearsing this transaction" in proc.stderr, proc.stderr
    assert len(_reports(tree) - before) == 1
    assert _version(tree, "rh-p-good") == "3.0"


def test_7_the_units_pass_systemd_analyze_verify_and_the_motd_script_says_the_line(machine: dict) -> None:
    tree = machine["tree"]
    units = " ".join(
        f"/lib/systemd/system/{name}"
        for name in ("apt-rehearse-prepare.service", "apt-daily.service", "apt-daily-upgrade.service")
    )
    proc = in_tree(tree, f"systemd-analyze verify --man=no {units}")
    assert proc.returncode == 0 and "apt-rehearse" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # The drop-ins are there for systemd to merge: apt-daily pulls the prepare in, apt-daily-upgrade waits for it.
    shown = in_tree(tree, "systemd-analyze cat-config systemd/system/apt-daily.service.d/apt-rehearse.conf")
    assert "Wants=apt-rehearse-prepare.service" in shown.stdout, shown.stdout + shown.stderr
    motd = in_tree(tree, "/etc/update-motd.d/92-apt-rehearse")
    assert motd.returncode == 0 and motd.stdout.startswith("apt-rehearse: "), motd.stdout + motd.stderr
    # No systemd as PID 1 here: apt update starts nothing, and says nothing about it.
    update = in_tree(tree, "APT_REHEARSE=0 apt-get update -q")
    assert update.returncode == 0 and "apt-rehearse" not in update.stdout + update.stderr


def test_8_apt_rehearse_as_pid_1_of_a_container_rehearses(machine: dict) -> None:
    """`exec` makes apt-rehearse the pid namespace's PID 1, as a container's
    entry point is: its sandbox once took that for "my parent died"."""
    proc = in_tree(machine["tree"], "exec apt-rehearse --no-services --json remove rh-p-bad")
    assert "without a result" not in proc.stderr and proc.returncode in (0, 10), proc.stderr
    assert json.loads(proc.stdout)["transaction"]["changes"][0]["action"] == "remove"


def test_9_prepare_takes_the_debs_apt_downloaded_instead_of_fetching_them_again(machine: dict) -> None:
    """A copy: source makes apt download into its archives, as apt-daily does from a mirror."""
    tree = machine["tree"]
    repo = LocalRepo(tree / "srv/rh-repo")
    repo.add(build_deb(machine["debs"], "rh-p-good", "4.0", files={"/usr/share/rh-p-good/v": "4\n"}))
    repo.publish()
    sources = tree / "etc/apt/sources.list"
    sources.write_text("deb [trusted=yes] copy:/srv/rh-repo ./\n")
    download = in_tree(tree, "APT_REHEARSE=0 apt-get update -q && apt-get -y -d install rh-p-good")
    assert download.returncode == 0, download.stderr
    apts = tree / "var/cache/apt/archives/rh-p-good_4.0_all.deb"
    assert apts.is_file()
    assert in_tree(tree, "apt-rehearse prepare").returncode in (0, 10)
    ours = tree / CACHE / "archives/rh-p-good_4.0_all.deb"
    assert ours.stat().st_ino == apts.stat().st_ino  # the same file: linked, not downloaded again
    rows = {row["request"]: row for row in _status(tree)["requests"]}
    assert rows["gate"]["verdict"] == "pass" and rows["gate"]["reused"] is False
