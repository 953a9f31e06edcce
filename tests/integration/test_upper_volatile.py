"""A disk upper is mounted "volatile": no sync ever waits for a throw-away layer;
every upper is mounted with metacopy: a link or chown copies no data up.

issue 7: fsync is useless in a layer that is deleted afterwards. The tmpfs
upper never syncs; a disk upper (APT::Rehearse::Upper-Dir, or a large change)
would, so its overlay drops syncs. Checked in a real sandbox, from inside.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from apt_rehearse.sandbox.namespaces import Overlay, SandboxRunner, SandboxSpec, plan_sandbox

from conftest import assert_host_clean, host_snapshot


def _overlays(plan) -> list[Overlay]:  # noqa: ANN001
    return [step for step in plan.steps if isinstance(step, Overlay)]


def test_only_disk_uppers_are_volatile() -> None:
    assert not any(step.volatile for step in _overlays(plan_sandbox(SandboxSpec(root="/"))))
    disk = plan_sandbox(SandboxSpec(root="/", upper_dir="/var/tmp/apt-rehearse/x"))
    assert _overlays(disk) and all(step.volatile for step in _overlays(disk))
    assert all("volatile" in step.describe() for step in _overlays(disk))


def _root_overlay_options(session: object, channel: object) -> dict[str, object]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields[4] == "/":
                super_options = line.split(" - ", 1)[1].split()[2]
                with open("/probe", "wb") as probe:  # a write and an fsync through the overlay
                    probe.write(b"x" * 4096)
                    probe.flush()
                    os.fsync(probe.fileno())
                if os.path.exists("/etc/big"):
                    os.link("/etc/big", "/etc/big.dpkg-tmp")  # what dpkg does before replacing a file
                return {"fstype": line.split(" - ", 1)[1].split()[0], "options": super_options.split(",")}
    return {}


def test_disk_upper_overlay_is_mounted_volatile(sandbox_capable: None) -> None:
    before = host_snapshot()
    base = Path(tempfile.mkdtemp(prefix="rh-volatile-", dir="/var/tmp"))
    try:
        root = base / "root"
        for name in ("proc", "sys", "dev", "run", "tmp", "etc"):
            (root / name).mkdir(parents=True)
        (root / "etc/big").write_bytes(os.urandom(8 << 20))
        upper = base / "upper"
        upper.mkdir()
        spec = SandboxSpec(root=str(root), upper_dir=str(upper))
        result = None
        for event in SandboxRunner(spec, plan_sandbox(spec)).run(_root_overlay_options):
            assert event.get("kind") != "error", event
            if event.get("kind") == "result":
                result = event["result"]
        assert result is not None
        assert result["fstype"] == "overlay"
        assert {"volatile", "fsync=volatile"} & set(result["options"])  # newer kernels say fsync=volatile
        assert (upper / "0/upper/probe").stat().st_size == 4096  # the write went to the disk upper
        assert not (root / "probe").exists()  # never to the lower
        # metacopy: the link copied up the inode only, not 8 MB of data
        assert {"metacopy=on", "redirect_dir=on"} <= set(result["options"])
        linked = (upper / "0/upper/etc/big").stat()
        assert linked.st_nlink == 2 and linked.st_blocks * 512 < 1 << 20
        assert not (root / "etc/big.dpkg-tmp").exists() and (root / "etc/big").stat().st_nlink == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert_host_clean(before)
