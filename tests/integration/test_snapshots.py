"""A btrfs subvolume is rehearsed from a read-only snapshot, not live.

A real btrfs file system (a loop-mounted image) holds a bookworm tree as a
subvolume, with a nested subvolume in it, as systemd makes /var/lib/machines.
A maintainer script reads a file that the test changes on the live tree
while the rehearsal runs: from a snapshot it still sees the old content;
with snapshots off it sees the new one (what the test can tell apart). The
snapshot is gone afterwards, also when the rehearsal is killed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import sys
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import IN_CI, SRC, assert_host_clean, cli_command, host_snapshot
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, dpkg_status_digest, install_into

pytestmark = pytest.mark.integration

PROBE_V2 = """\
touch /var/lib/rh-probe-ready
sleep 4
echo "rh-probe saw: $(cat /srv/rh-probe-state)"
echo "rh-probe nested: $(cat /var/lib/machines/marker 2>&1)"
"""


def _btrfs_ready() -> str | None:
    if not shutil.which("mkfs.btrfs") or not shutil.which("btrfs"):
        return "btrfs-progs is not installed"
    with open("/proc/filesystems", encoding="ascii") as handle:
        if "btrfs" not in handle.read():
            subprocess.run(["modprobe", "btrfs"], capture_output=True, check=False)
    return None


def _subvolumes(mount: Path) -> list[str]:
    out = subprocess.run(["btrfs", "subvolume", "list", str(mount)], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line)


@pytest.fixture(scope="module")
def btrfs_tree(sandbox_capable: None):
    why = _btrfs_ready()
    if why:
        if IN_CI:
            pytest.fail(f"CI must be able to test btrfs snapshots: {why}")
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="rh-snap-", dir="/var/tmp"))
    mount = base / "mnt"
    mounted = False
    try:
        image = base / "btrfs.img"
        with open(image, "wb") as handle:
            handle.truncate(3 << 30)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        mount.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True)
        mounted = True
        tree = mount / "root"
        subprocess.run(["btrfs", "subvolume", "create", str(tree)], check=True, capture_output=True)
        bookworm_tree(tree, variant="minimal")
        nested = tree / "var/lib/machines"
        if nested.exists():
            nested.rmdir()
        subprocess.run(["btrfs", "subvolume", "create", str(nested)], check=True, capture_output=True)
        (nested / "marker").write_text("live inside the nested subvolume\n")
        debs = base / "debs"
        v1 = build_deb(debs, "rh-probe", "1.0", files={"/usr/share/rh-probe/version": "1.0\n"})
        v2 = build_deb(debs, "rh-probe", "2.0", files={"/usr/share/rh-probe/version": "2.0\n"}, postinst=PROBE_V2)
        install_into(tree, [v1])
        repo = LocalRepo(base / "repo")
        for deb in (v1, v2):
            repo.add(deb)
        repo.publish()
        serve_to_tree(tree, repo)
        yield {"base": base, "mount": mount, "tree": tree, "subvolumes": _subvolumes(mount)}
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _start(tree: Path, base: Path, *options: str) -> subprocess.Popen[str]:
    environment = dict(os.environ, PYTHONPATH=str(SRC))
    environment.pop("APT_REHEARSE", None)
    argv = [
        *cli_command(),
        "--root",
        str(tree),
        "--json",
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={base}/log",
        "-o",
        f"APT::Rehearse::Upper-Dir={base}/uppers",
        *options,
        "install",
        "rh-probe",
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, stdin=subprocess.DEVNULL
    )


def _wait_until_ready(base: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """The postinst has started (its marker shows in the disk upper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if glob.glob(f"{base}/uppers/*/*/upper/var/lib/rh-probe-ready"):
            return
        if proc.poll() is not None:
            findings = [f["message"] for f in json.loads(proc.stdout.read() or "{}").get("findings", [])]
            raise AssertionError(
                f"the rehearsal ended before its postinst ran: {proc.stderr.read()[-2000:]} {findings}"
            )
        time.sleep(0.05)
    raise AssertionError("the postinst never started")


def _rehearse_while_the_live_file_changes(btrfs_tree: dict, *options: str) -> tuple[dict, str]:
    # No package's file: what a service writes while it runs.
    state = btrfs_tree["tree"] / "srv/rh-probe-state"
    state.write_text("before\n")
    proc = _start(btrfs_tree["tree"], btrfs_tree["base"], *options)
    try:
        _wait_until_ready(btrfs_tree["base"], proc)
        state.write_text("after: written on the live system during the rehearsal\n")
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    document = json.loads(stdout)
    return document, Path(document["report_path"]).with_suffix(".log").read_text()


def test_the_lower_is_a_snapshot_that_holds_still(btrfs_tree: dict) -> None:
    before = host_snapshot()
    status = dpkg_status_digest(btrfs_tree["tree"])
    document, log = _rehearse_while_the_live_file_changes(btrfs_tree)
    assert "rh-probe saw: before" in log, log[-2000:]
    # The nested subvolume, which a snapshot leaves empty, is overlaid live.
    assert "rh-probe nested: live inside the nested subvolume" in log, log[-2000:]
    assert any(
        "read-only btrfs snapshot" in note and "/var/lib/machines stayed live" in note for note in document["notes"]
    ), document["notes"]
    assert document["verdict"] == "pass", document["findings"]
    assert _subvolumes(btrfs_tree["mount"]) == btrfs_tree["subvolumes"]
    assert not list(btrfs_tree["tree"].glob(".apt-rehearse-snapshot.*"))
    assert dpkg_status_digest(btrfs_tree["tree"]) == status
    assert_host_clean(before)


def test_without_snapshots_the_live_change_shows(btrfs_tree: dict) -> None:
    document, log = _rehearse_while_the_live_file_changes(btrfs_tree, "-o", "APT::Rehearse::Snapshots=false")
    assert "rh-probe saw: after: written on the live system" in log, log[-2000:]
    assert not any("snapshot" in note for note in document["notes"]), document["notes"]


def test_a_killed_rehearsal_leaves_no_snapshot(btrfs_tree: dict) -> None:
    before = host_snapshot()
    proc = _start(btrfs_tree["tree"], btrfs_tree["base"])
    try:
        _wait_until_ready(btrfs_tree["base"], proc)
        assert list(btrfs_tree["tree"].glob(".apt-rehearse-snapshot.*")), "no snapshot while the rehearsal runs"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The janitors end once their cleanups are done: the snapshot's may finish
    # before the others (the cgroup, the upper) do; all of them within the deadline.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        list(btrfs_tree["tree"].glob(".apt-rehearse-snapshot.*"))
        or _subvolumes(btrfs_tree["mount"]) != btrfs_tree["subvolumes"]
        or set(host_snapshot()["processes"]) - set(before["processes"])
    ):
        time.sleep(0.1)
    assert _subvolumes(btrfs_tree["mount"]) == btrfs_tree["subvolumes"]
    assert not list(btrfs_tree["tree"].glob(".apt-rehearse-snapshot.*"))
    assert_host_clean(before)


def test_too_many_nested_subvolumes_mean_no_snapshot(btrfs_tree: dict) -> None:
    # As under Docker's btrfs driver (a subvolume per image layer): the
    # snapshot is dropped at once and the rehearsal reads live.
    code = (
        "import sys\nfrom apt_rehearse.sandbox import snapshots\nsnapshots.MAX_NESTED = 0\n"
        "try:\n    snapshots.take(sys.argv[1])\nexcept OSError as error:\n"
        "    print(error)\n    sys.exit(3)\n"
    )
    environment = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(btrfs_tree["tree"])],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "holds 1 nested subvolumes (more than 0)" in proc.stdout
    assert _subvolumes(btrfs_tree["mount"]) == btrfs_tree["subvolumes"]
    assert not list(btrfs_tree["tree"].glob(".apt-rehearse-snapshot.*"))
