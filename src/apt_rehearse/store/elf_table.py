"""The ELF facts table: what the library scans learnt of each file, kept
between rehearsals so that an unchanged file is not parsed again."""

from __future__ import annotations

import os
from typing import Any

from apt_rehearse.store.deb_hashes import DIRECTORY, load_table, save_table

# On the host: in the cache's "hashes" directory, with
# the .deb hashes' trust rules (root's, 0700; otherwise ignored). A forged
# row could only hide a library from the check, so it is read the way the
# verdicts are, and rewritten from what each rehearsal saw (nothing stale
# stays).
ELF_TABLE = "elf.json"
ELF_SCHEMA = "apt-rehearse-elf/1"
ELF_TABLE_LIMIT = 16 << 20
MAX_ELF_ROWS = 50_000


def load_elf_table(cache_dir: str) -> dict[str, list[Any]]:
    rows = load_table(os.path.join(cache_dir, DIRECTORY), ELF_TABLE, ELF_SCHEMA, ELF_TABLE_LIMIT)
    return {key: row for key, row in rows.items() if isinstance(row, list) and len(row) in (0, 5)}


def save_elf_table(cache_dir: str, *scans: dict[str, Any]) -> None:
    """Keep the ELF facts the scans of one rehearsal saw (before and after)."""
    seen: dict[str, list[Any]] = {}
    for result in scans:
        seen.update(result.get("elf_seen") or {})
    if seen:
        save_table(os.path.join(cache_dir, DIRECTORY), ELF_TABLE, ELF_SCHEMA, dict(list(seen.items())[:MAX_ELF_ROWS]))
