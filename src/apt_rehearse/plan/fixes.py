"""Fixes that need the archive: which package of the target release ships
what the upgrade takes away: a shared library a program needs, the unit of
a service whose package is removed with nothing in its place.

The archive's Contents indexes say it where apt has them (plan/contents).
Without them, a library's candidates come from Debian's naming (Policy 8.1:
libfoo.so.3 is in libfoo3; trixie's 64-bit time rename adds t64), each then
proved by its own .deb's file list (fetched with apt, checked by apt
against the archive's hashes), not assumed.
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


def _offered(cache: Any, name: str, changing: set[str]) -> bool:
    if name not in cache or name in changing:
        return False
    candidate = cache[name].candidate
    return candidate is not None and candidate.downloadable


def library_fix(cache: Any, soname: str, changing: set[str], archive_dir: str, shipped: set[str]) -> str | None:
    """The package of the target release that ships ``soname``: one the
    Contents name (``shipped``), else one named after it and proved by its
    .deb; None when no such package is found (one the transaction installs
    or removes already is no fix)."""
    import apt.progress.base

    listed = sorted(name for name in shipped if _offered(cache, name, changing))
    if listed:
        # The one named after the soname first, then the shortest name (libfoo1 before libfoo1-dbg).
        named = [name for name in package_names_for(soname) if name in listed]
        return (named or sorted(listed, key=lambda name: (len(name), name)))[0]
    for name in package_names_for(soname):
        if not _offered(cache, name, changing):
            continue
        candidate = cache[name].candidate
        try:
            # Quietly: the report is what the terminal shows, --json is JSON only.
            deb = candidate.fetch_binary(archive_dir, progress=apt.progress.base.AcquireProgress())
        except Exception:  # noqa: BLE001 - python-apt raises FetchError and SystemError alike: no proof, no fix
            continue
        if ships(deb, soname):
            return name
    return None


def add_archive_fixes(problems: list[Problem], transaction: Transaction, cache_dir: str, notes: list[str]) -> None:
    """Give each lost-library problem, and each removal that takes a
    service away with nothing in its place, the package of the target
    release that ships the library or the service's unit (apt's
    configuration as planned: the release's sources for --release)."""
    libraries = [p for p in problems if p.key.startswith("library:") and not p.fix][:MAX_SONAMES]
    removals = [p for p in problems if p.key.startswith("removal:") and not p.fix and p.severity == "block"]
    units = {p.key: set(p.findings[0].details.get("enabled_services") or []) for p in removals}
    if not libraries and not any(units.values()):
        return
    import apt
    import apt_pkg

    from apt_rehearse.model.config import apt_download_dir
    from apt_rehearse.plan.contents import packages_shipping

    installing = {c.package for c in transaction.by_action(*INSTALLING_ACTIONS)}
    changing = installing | {c.package for c in transaction.by_action(*REMOVING_ACTIONS)}
    # The proofs are read and dropped: they are not the archive cache's.
    proofs = tempfile.mkdtemp(prefix="fix-proofs-", dir=cache_dir)
    try:
        apt_download_dir(proofs)
        cache = apt.Cache(memonly=True)  # never writes a cache file into the target
        wanted = {p.key.split(":", 1)[1] for p in libraries} | set().union(*units.values())
        shipped = packages_shipping(
            wanted, apt_pkg.config.find_dir("Dir::State::lists"), apt_pkg.config.find("APT::Architecture")
        )
        for problem in libraries:
            soname = problem.key.split(":", 1)[1]
            package = library_fix(cache, soname, changing, proofs, shipped.get(soname, set()))
            if package:
                problem.fix = Fix([package], why=f"{package} ships {soname} in the target release")
            elif any(name in installing for name in package_names_for(soname)):
                problem.fix = Fix(
                    why=f"the package named after {soname} is in the transaction, and the library is lost all the same"
                )
        for problem in removals:
            found = {
                unit: sorted(name for name in shipped.get(unit, set()) if _offered(cache, name, changing))
                for unit in sorted(units[problem.key])
            }
            packages = sorted({names[0] for names in found.values() if names})
            if packages:
                shipping = "; ".join(f"{names[0]} ships {unit}" for unit, names in found.items() if names)
                problem.fix = Fix(packages, why=f"in the target release, {shipping}")
    except (OSError, SystemError) as error:
        notes.append(f"no package was looked up for what the upgrade takes away: {error}")
    finally:
        shutil.rmtree(proofs, ignore_errors=True)
