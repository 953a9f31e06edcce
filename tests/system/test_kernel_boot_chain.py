"""Real Debian: a kernel from the archive, its initramfs built inside the
rehearsal by the real initramfs-tools, and a bootloader config checked.

Needs the Debian archive (retried); the tree tarball and the .debs are cached.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import assert_host_clean, host_snapshot, run_json
from lib.trees import bookworm_tree, dpkg_status_digest, tree_hash

pytestmark = pytest.mark.system


def _update_lists(tree: Path) -> None:
    for pause in (10, 30, 0):
        proc = subprocess.run(["apt-get", "-q", "-o", f"Dir={tree}/", "update"], capture_output=True, text=True)
        if proc.returncode == 0 and "Failed to fetch" not in proc.stdout + proc.stderr:
            return
        time.sleep(pause)
    pytest.fail(f"apt-get update of the test tree failed 3 times: {proc.stderr[-500:]}")


def test_new_kernel_gets_its_initramfs_built_in_the_rehearsal(sandbox_capable: None) -> None:
    base = Path(tempfile.mkdtemp(prefix="rh-kernel-", dir="/var/tmp"))
    try:
        tree = bookworm_tree(base / "tree", variant="minimal")
        _update_lists(tree)
        # An old grub.cfg naming a kernel that is there, so the reference check runs.
        (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
        (tree / "boot/vmlinuz-0-old").write_text("old kernel\n")
        (tree / "boot/grub/grub.cfg").write_text("menuentry old {\n linux /boot/vmlinuz-0-old root=/dev/vda1\n}\n")
        before_hash, before_status, host = tree_hash(tree), dpkg_status_digest(tree), host_snapshot()
        for attempt in range(3):
            proc, document = run_json(
                "--root",
                str(tree),
                "--no-services",
                "-o",
                f"APT::Rehearse::Log-Dir={base}/log",
                "install",
                "linux-image-amd64",
            )
            if proc.returncode != 1 or "fetch" not in proc.stderr.lower():
                break
            time.sleep(10 * (attempt + 1))  # a mirror hiccup while fetching the .debs
        assert proc.returncode == 0, (proc.stderr, document["findings"])
        assert not [f for f in document["findings"] if f["severity"] != "info"], document["findings"]
        boot = document["boot"]
        assert boot["generator"] == "initramfs-tools"
        [version] = [v for v in boot["kernels"] if v != "0-old"]
        assert boot["kernels"][version]["initrd_bytes"] > 5 << 20  # a real initramfs, built by update-initramfs
        assert boot["kernels"][version]["kernel_bytes"] > 1 << 20
        assert {r["path"]: r["exists"] for r in boot["references"]} == {"/boot/vmlinuz-0-old": True}
        print(
            f"kernel {version}: initrd {boot['kernels'][version]['initrd_bytes']} bytes, "
            f"rehearsal {document['duration_s']} s, phases {document['phases']}"
        )
        assert tree_hash(tree) == before_hash
        assert dpkg_status_digest(tree) == before_status
        assert_host_clean(host)
    finally:
        shutil.rmtree(base, ignore_errors=True)
