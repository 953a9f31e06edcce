"""Which of a package's units the system starts: systemctl --root, offline,
on a tree made here (unit files, an enabling link, a masked unit)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from apt_rehearse.inside import facts

pytestmark = pytest.mark.skipif(not shutil.which("systemctl"), reason="systemctl is not installed")


def _unit(tree: Path, name: str, install: str = "[Install]\nWantedBy=multi-user.target\n") -> str:
    path = tree / "lib/systemd/system" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[Unit]\nDescription={name}\n[Service]\nExecStart=/bin/true\n{install}")
    return f"/lib/systemd/system/{name}"


def _enable(tree: Path, name: str, target: str = "multi-user.target") -> None:
    wants = tree / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    os.symlink(f"/lib/systemd/system/{name}", wants / name)


def test_enabled_units_are_those_systemctl_says_the_system_starts(tmp_path: Path) -> None:
    files = [_unit(tmp_path, name) for name in ("rh-on.service", "rh-off.service", "rh-masked.service")]
    files.append(_unit(tmp_path, "rh-static.service", install=""))
    files.append(_unit(tmp_path, "rh-getty@.service"))
    _enable(tmp_path, "rh-on.service")
    (tmp_path / "etc/systemd/system/rh-masked.service").symlink_to("/dev/null")
    # A template with an enabled instance is "indirect" to systemctl: the
    # instance is what is enabled, under another name.
    wants = tmp_path / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True)
    os.symlink("/lib/systemd/system/rh-getty@.service", wants / "rh-getty@tty1.service")
    files += ["/etc/init.d/rh-script", "/usr/share/doc/rh-on/copyright"]
    (tmp_path / "etc/rc2.d").mkdir(parents=True)
    os.symlink("../init.d/rh-script", tmp_path / "etc/rc2.d/S01rh-script")
    assert facts.enabled_services(str(tmp_path), files) == ["rh-on.service", "/etc/init.d/rh-script"]


def test_a_unit_file_deleted_by_hand_does_not_hide_the_others(tmp_path: Path) -> None:
    files = [_unit(tmp_path, "rh-a.service"), "/lib/systemd/system/rh-gone.service", _unit(tmp_path, "rh-z.service")]
    _enable(tmp_path, "rh-a.service")
    _enable(tmp_path, "rh-z.service")
    assert facts.enabled_units(str(tmp_path), sorted(os.path.basename(f) for f in files)) == [
        "rh-a.service",
        "rh-z.service",
    ]
    assert facts.enabled_units(str(tmp_path), []) == []
