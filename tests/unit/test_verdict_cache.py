"""The verdict cache trusts only root's own, fresh, matching entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apt_rehearse.store import verdict_cache
from apt_rehearse.model.transaction import Change, Transaction

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="entries must be owned by root")


def tx(*changes: Change, status: str = "s1") -> Transaction:
    return Transaction(list(changes), dpkg_status_sha256=status)


A = Change("a", "amd64", "1", "2", "upgrade", deb="/x/a.deb", sha256="ha")
B = Change("b", "amd64", "1", "2", "upgrade", deb="/x/b.deb", sha256="hb")
INSTALLED = {"a:amd64": "1", "b:amd64": "1"}


def test_exact_hit_and_misses(tmp_path: Path) -> None:
    verdict_cache.record(str(tmp_path), tx(A, B), "pass", "/r.json")
    entry = verdict_cache.lookup(str(tmp_path), tx(B, A), 3600, INSTALLED)
    assert entry is not None and entry["verdict"] == "pass"
    assert verdict_cache.lookup(str(tmp_path), tx(A, B, status="s2"), 3600, INSTALLED) is None
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, INSTALLED) is None
    assert verdict_cache.lookup(str(tmp_path), tx(A, B), -1, INSTALLED) is None  # too old


def test_untrusted_entries_are_ignored(tmp_path: Path) -> None:
    path = Path(verdict_cache.record(str(tmp_path), tx(A), "pass", None))
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    os.chown(path, 65534, 65534)  # written by someone else
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, INSTALLED) is None
    os.chown(path, 0, 0)
    os.chmod(path, 0o666)
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, INSTALLED) is None
    os.chmod(path, 0o600)
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, INSTALLED) is not None
    os.chmod(path.parent, 0o755)  # the directory must be root's alone
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, INSTALLED) is None
    os.chmod(path.parent, 0o700)
    data = json.loads(path.read_text())
    data["id"] = "0" * 64  # does not check out
    path.write_text(json.dumps(data))
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, INSTALLED) is None


def test_approval_covers_steps_along_the_way(tmp_path: Path) -> None:
    verdict_cache.record_approval(str(tmp_path), tx(A, B), "pass", None)
    assert verdict_cache.lookup(str(tmp_path), tx(A, status="other"), 3600, INSTALLED)["kind"] == "approval"
    after_a = {"a:amd64": "2", "b:amd64": "1"}
    assert verdict_cache.lookup(str(tmp_path), tx(B, status="later"), 3600, after_a) is not None
    other = Change("c", "amd64", "1", "2", "upgrade", deb="/x/c.deb", sha256="hc")
    assert verdict_cache.lookup(str(tmp_path), tx(A, other), 3600, INSTALLED) is None
    changed_deb = Change("a", "amd64", "1", "2", "upgrade", deb="/x/a.deb", sha256="tampered")
    assert verdict_cache.lookup(str(tmp_path), tx(changed_deb), 3600, INSTALLED) is None
    elsewhere = {"a:amd64": "0.9"}
    assert verdict_cache.lookup(str(tmp_path), tx(A), 3600, elsewhere) is None
