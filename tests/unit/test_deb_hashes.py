"""The .deb hash table: reused only while the file is the same one, trusted
only when root's."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from apt_rehearse.store import deb_hashes


def _setup(tmp_path: Path) -> tuple[str, Path]:
    cache = tmp_path / "cache"
    (cache / deb_hashes.DIRECTORY).mkdir(parents=True, mode=0o700)
    deb = tmp_path / "a.deb"
    deb.write_bytes(b"x" * 1000)
    return str(cache), deb


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the table is root's")


@needs_root
def test_a_known_file_is_not_read_again_and_a_changed_one_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, deb = _setup(tmp_path)
    table = deb_hashes.DebHashes(cache)
    assert table.sha256(str(deb)) == hashlib.sha256(b"x" * 1000).hexdigest()
    table.save()
    reads = []
    real = deb_hashes.digest
    monkeypatch.setattr(deb_hashes, "digest", lambda handle: reads.append(1) or real(handle))
    again = deb_hashes.DebHashes(cache)
    assert again.sha256(str(deb)) == hashlib.sha256(b"x" * 1000).hexdigest() and reads == []
    deb.write_bytes(b"y" * 1000)  # same size, new content: a new ctime
    assert again.sha256(str(deb)) == hashlib.sha256(b"y" * 1000).hexdigest() and reads == [1]


@needs_root
def test_a_table_someone_else_could_write_is_ignored(tmp_path: Path) -> None:
    cache, deb = _setup(tmp_path)
    table = deb_hashes.DebHashes(cache)
    table.sha256(str(deb))
    table.save()
    stored = Path(cache) / deb_hashes.DIRECTORY / deb_hashes.NAME
    assert deb_hashes.DebHashes(cache).known
    os.chown(stored, 1000, 1000)
    assert deb_hashes.DebHashes(cache).known == {}
    os.chown(stored, 0, 0)
    stored.chmod(0o666)
    assert deb_hashes.DebHashes(cache).known == {}
    stored.chmod(0o600)
    (Path(cache) / deb_hashes.DIRECTORY).chmod(0o755)
    assert deb_hashes.DebHashes(cache).known == {}


@needs_root
def test_a_file_that_changes_while_it_is_read_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, deb = _setup(tmp_path)
    real = deb_hashes.digest

    def digest_while_apt_replaces_it(handle: object) -> str:
        sha = real(handle)
        deb.write_bytes(b"y" * 1000)  # same size, a new ctime: another file than the one read
        return sha

    monkeypatch.setattr(deb_hashes, "digest", digest_while_apt_replaces_it)
    table = deb_hashes.DebHashes(cache)
    table.sha256(str(deb))
    table.save()
    assert deb_hashes.DebHashes(cache).known == {}
