"""Fixes that need the archive: which package of the target release ships a
shared library the upgrade takes away from a program.

Debian names a library's package after its soname (Policy 8.1: libfoo.so.3
is in libfoo3; trixie's 64-bit time rename adds t64), so the candidates come
from the name; each is then proved by its own .deb's file list (fetched
with apt, checked by apt against the archive's hashes), not assumed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from apt_rehearse.model.problem import Fix, Problem
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, REMOVING_ACTIONS, Transaction

SONAME = re.compile(r"^(?P<stem>lib[\w+.-]*?)\.so\.(?P<version>\d+)$")
MAX_SONAMES = 10  # each may fetch a .deb


def package_names_for(soname: str) -> list[str]:
    """libfoo.so.3 -> libfoo3, libfoo-1.2.so.0 -> libfoo-1.2-0, libfoo2.so.1 ->
    libfoo2-1; each also with trixie's t64 suffix."""
    match = SONAME.match(soname)
    if not match:
        return []
    stem, version = match.group("stem").lower().replace("_", "-"), match.group("version")
    name = f"{stem}-{version}" if stem[-1].isdigit() else f"{stem}{version}"
    return [name, f"{name}t64"]


def ships(deb: str, soname: str) -> bool:
    from debian.debfile import DebError, DebFile

    try:
        names = DebFile(deb).data.tgz().getnames()
    except (DebError, OSError, EOFError, ValueError):
        return False
    return any(os.path.basename(name) == soname for name in names)


def library_fix(cache: Any, soname: str, changing: set[str], archive_dir: str) -> str | None:
    """The package of the target release that ships ``soname``, proved by
    its .deb; None when no such package is found (one the transaction
    installs or removes already is no fix)."""
    import apt.progress.base

    for name in package_names_for(soname):
        if name not in cache or name in changing:
            continue
        candidate = cache[name].candidate
        if candidate is None or not candidate.downloadable:
            continue
        try:
            # Quietly: the report is what the terminal shows, --json is JSON only.
            deb = candidate.fetch_binary(archive_dir, progress=apt.progress.base.AcquireProgress())
        except Exception:  # noqa: BLE001 - python-apt raises FetchError and SystemError alike: no proof, no fix
            continue
        if ships(deb, soname):
            return name
    return None


def add_library_fixes(problems: list[Problem], transaction: Transaction, cache_dir: str, notes: list[str]) -> None:
    """Give each lost-library problem without a fix the package that ships
    the library in the target release (apt's configuration as planned:
    the release's sources for --release)."""
    wanted = [p for p in problems if p.key.startswith("library:") and not p.fix][:MAX_SONAMES]
    if not wanted:
        return
    import apt

    from apt_rehearse.model.config import apt_download_dir

    installing = {c.package for c in transaction.by_action(*INSTALLING_ACTIONS)}
    changing = installing | {c.package for c in transaction.by_action(*REMOVING_ACTIONS)}
    # The proofs are read and dropped: they are not the archive cache's.
    proofs = tempfile.mkdtemp(prefix="fix-proofs-", dir=cache_dir)
    try:
        apt_download_dir(proofs)
        cache = apt.Cache(memonly=True)  # never writes a cache file into the target
        for problem in wanted:
            soname = problem.key.split(":", 1)[1]
            package = library_fix(cache, soname, changing, proofs)
            if package:
                problem.fix = Fix([package], why=f"{package} ships {soname} in the target release")
            elif any(name in installing for name in package_names_for(soname)):
                problem.fix = Fix(
                    why=f"the package named after {soname} is in the transaction, and the library is lost all the same"
                )
    except (OSError, SystemError) as error:
        notes.append(f"no package was looked up for the lost libraries: {error}")
    finally:
        shutil.rmtree(proofs, ignore_errors=True)
