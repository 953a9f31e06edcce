"""The system class fingerprint on a tree made by hand: what counts
(packages, versions, local conffile changes, units, the pending changes)
and what does not (the tree's path, file times, unchanged conffiles)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from apt_rehearse.plan.system_class import fingerprint

STATUS = """Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4
Conffiles:
 /etc/issue {issue}
 /etc/gone 0123456789abcdef0123456789abcdef obsolete

Package: removed
Status: deinstall ok not-installed
Architecture: amd64
Version: 1.0

"""
ISSUE = b"Debian GNU/Linux 12 \\n \\l\n\n"


def _tree(where: Path) -> Path:
    import hashlib

    (where / "var/lib/dpkg").mkdir(parents=True)
    (where / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (where / "etc/issue").write_bytes(ISSUE)
    (where / "var/lib/dpkg/status").write_text(STATUS.format(issue=hashlib.md5(ISSUE).hexdigest()))
    (where / "etc/systemd/system/multi-user.target.wants/ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    return where


CHANGES = [{"package": "base-files", "arch": "amd64", "from": "12.4", "to": "12.5", "action": "upgrade"}]


def test_the_same_system_anywhere_is_one_class(tmp_path: Path) -> None:
    one = fingerprint(str(_tree(tmp_path / "one")), CHANGES)
    two_tree = _tree(tmp_path / "somewhere/else")
    os.utime(two_tree / "etc/issue", (0, 0))
    assert fingerprint(str(two_tree), CHANGES) == one
    assert one["counts"] == {"packages": 1, "units": 1, "conffiles_changed": 0}
    assert fingerprint(str(two_tree), None)["parts"]["transaction"] is None


def test_each_part_moves_the_fingerprint(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t")
    first = fingerprint(str(tree), CHANGES)
    assert fingerprint(str(tree), [dict(CHANGES[0], to="12.6")])["fingerprint"] != first["fingerprint"]
    (tree / "etc/issue").write_bytes(ISSUE + b"local\n")
    changed = fingerprint(str(tree), CHANGES)
    assert changed["conffiles_changed"] == ["/etc/issue"] and changed["fingerprint"] != first["fingerprint"]
    (tree / "etc/issue").unlink()
    assert fingerprint(str(tree), CHANGES)["parts"]["conffiles"] not in (
        first["parts"]["conffiles"],
        changed["parts"]["conffiles"],
    )
    (tree / "etc/issue").write_bytes(ISSUE)
    (tree / "etc/systemd/system/cron.service").symlink_to("/dev/null")  # a mask
    masked = fingerprint(str(tree), CHANGES)
    assert (
        masked["parts"]["units"] != first["parts"]["units"]
        and masked["parts"]["packages"] == first["parts"]["packages"]
    )
    shutil.rmtree(tree / "etc/systemd/system")
    status = (tree / "var/lib/dpkg/status").read_text().replace("Version: 12.4", "Version: 12.4+local")
    (tree / "var/lib/dpkg/status").write_text(status)
    assert fingerprint(str(tree), CHANGES)["parts"]["packages"] != first["parts"]["packages"]


def test_a_tree_without_dpkg_has_a_class_too(tmp_path: Path) -> None:
    assert fingerprint(str(tmp_path), None)["counts"] == {"packages": 0, "units": 0, "conffiles_changed": 0}
