"""Disk space, measured: a small /boot (a loop-mounted ext2 the test makes)
and a kernel-like package whose postinst writes a large initrd there."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import run_json
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, install_into

pytestmark = pytest.mark.integration

POSTINST = "dd if=/dev/urandom of=/boot/initrd.img-rh bs=1M count={mb} status=none\n"


@pytest.fixture(scope="module")
def small_boot(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-disk-", dir="/var/tmp"))
    image = base / "boot.img"
    tree = base / "tree"
    mounted = False
    try:
        bookworm_tree(tree, variant="minimal")
        subprocess.run(["truncate", "-s", "24M", str(image)], check=True)
        subprocess.run(["mkfs.ext2", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(tree / "boot")], check=True)
        mounted = True
        debs = base / "debs"
        v1 = [build_deb(debs, "rh-kernel-big", "1.0"), build_deb(debs, "rh-kernel-small", "1.0")]
        v2 = [
            build_deb(debs, "rh-kernel-big", "2.0", postinst=POSTINST.format(mb=40)),
            build_deb(debs, "rh-kernel-small", "2.0", postinst=POSTINST.format(mb=4)),
        ]
        install_into(tree, v1)
        repo = LocalRepo(base / "repo")
        for deb in v1 + v2:
            repo.add(deb)
        repo.publish()
        serve_to_tree(tree, repo)
        yield {"tree": tree, "base": base}
    finally:
        if mounted:
            subprocess.run(["umount", str(tree / "boot")], check=False)  # losetup -d follows (autoclear)
        shutil.rmtree(base, ignore_errors=True)


def rehearse(info: dict, *args: str):
    return run_json(
        "--root", str(info["tree"]), "--no-services", "-o", f"APT::Rehearse::Log-Dir={info['base']}/log", *args
    )


def test_too_little_room_on_boot_blocks(small_boot: dict) -> None:
    proc, document = rehearse(small_boot, "install", "rh-kernel-big")
    assert proc.returncode == 10, (proc.stderr, document["findings"])
    [finding] = [f for f in document["findings"] if f["check"] == "disk"]
    assert finding["subject"] == "/boot" and finding["severity"] == "block"
    assert finding["message"].startswith("/boot needs 42 MB more, has 2") and finding["message"].endswith("MB free")
    boot = next(row for row in document["disk"] if row["mount"] == "/boot")
    assert boot["growth_bytes"] >= 40 << 20
    assert boot["free_bytes"] < 24 << 20
    assert not [f for f in document["findings"] if f["check"] in ("script-failure", "apt")]  # never a package fault


def test_enough_room_passes(small_boot: dict) -> None:
    proc, document = rehearse(small_boot, "install", "rh-kernel-small")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert not [f for f in document["findings"] if f["check"] == "disk"]
    boot = next(row for row in document["disk"] if row["mount"] == "/boot")
    assert 4 << 20 <= boot["growth_bytes"] < 6 << 20
