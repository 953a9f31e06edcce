"""SHA-256 of .deb files already read, so a cache hit need not read them again
(and the tables of file facts kept beside it, such as the ELF facts of
libraries.py).

A transaction's identity covers its .debs' content, so the hook hashed every
.deb on every apt run: 80 ms for a release upgrade's 107 MB, most of a cache
hit. A hash is kept here with the file's fingerprint as the file system gives
it (device, inode, size, mtime and ctime, in nanoseconds) and reused while
the fingerprint is unchanged. Any write to the file changes its ctime, which
no one but the kernel sets; apt replaces a .deb by renaming a new file over it
(a new inode). A hash is only stored when the fingerprint was the same before
and after reading the file.

The table lives in its own directory of the cache, with the verdicts' trust
rules: the directory root's and 0700, the file root's and writable by nobody
else; otherwise it is ignored and every .deb is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from apt_rehearse.store.verdict_cache import read_trusted, trusted_dir
from apt_rehearse.store.files import write_atomically

NAME = "debs.json"
DIRECTORY = "hashes"
SCHEMA = "apt-rehearse-deb-hashes/1"
MAX_ENTRIES = 5000  # a release upgrade is about 2000 .debs; older entries go first


def fingerprint(info: os.stat_result) -> list[int]:
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def digest(handle: Any) -> str:
    """SHA-256 of an open file, read to its end."""
    return hashlib.file_digest(handle, "sha256").hexdigest()


class DebHashes:
    """Known hashes, and the ones read during this run (to be saved)."""

    def __init__(self, cache_dir: str) -> None:
        self.directory = os.path.join(cache_dir, DIRECTORY)
        self.known: dict[str, list[Any]] = self._load()
        self.fresh: dict[str, list[Any]] = {}

    def _load(self) -> dict[str, list[Any]]:
        files = load_table(self.directory, NAME, SCHEMA, 4 << 20)
        return {
            path: row
            for path, row in files.items()
            if isinstance(row, list) and len(row) == 2 and isinstance(row[1], str)
        }

    def sha256(self, path: str) -> str:
        """The file's SHA-256: remembered when its fingerprint is unchanged, else read."""
        before = fingerprint(os.stat(path))
        row = self.known.get(path)
        if row is not None and row[0] == before:
            return row[1]
        with open(path, "rb") as handle:
            sha = digest(handle)
            after = fingerprint(os.fstat(handle.fileno()))
        if after == before:
            self.fresh[path] = [before, sha]
        return sha

    def save(self) -> None:
        """Keep what this run read (root only; a directory we cannot trust is left alone)."""
        if self.fresh:
            files = {**self.known, **self.fresh}
            save_table(self.directory, NAME, SCHEMA, dict(list(files.items())[-MAX_ENTRIES:]))


def load_table(directory: str, name: str, schema: str, limit: int) -> dict[str, Any]:
    """The "files" of a table in the cache, or {} when it is missing or not to be trusted."""
    data = read_trusted(os.path.join(directory, name), schema, limit) if trusted_dir(directory) else None
    if data is None or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def save_table(directory: str, name: str, schema: str, files: dict[str, Any]) -> None:
    """Replace a table in the cache, atomically (root only; a directory we cannot trust is left alone)."""
    if os.geteuid() != 0:
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not trusted_dir(directory):
        return
    write_atomically(os.path.join(directory, name), json.dumps({"schema": schema, "files": files}))
