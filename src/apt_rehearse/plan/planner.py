"""Compute a Transaction with python-apt, the way apt-get would.

Same resolver, same configuration, ``-o`` honoured. The .deb files go to
apt-rehearse's own archive cache, never to apt's: the host's
/var/cache/apt/archives, lists and pkgcache.bin stay untouched.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import os
import re
import sys

from typing import Callable

import apt
import apt.progress.base
import apt.progress.text
import apt_pkg

from apt_rehearse.model.config import apt_download_dir
from apt_rehearse.model.errors import RehearsalError, UsageError
from apt_rehearse.model.transaction import (
    INSTALLING_ACTIONS,
    REMOVING_ACTIONS,
    Change,
    Transaction,
    classify,
    find_successors,
    sha256_file,
    replacement_pattern,
    VERSION_IN_NAME,
)

COMMANDS = ("upgrade", "dist-upgrade", "full-upgrade", "install", "remove", "purge", "gate")


@dataclasses.dataclass
class Request:
    command: str
    packages: list[str] = dataclasses.field(default_factory=list)
    root: str = "/"
    release: str | None = None
    options: list[str] = dataclasses.field(default_factory=list)
    also: list[str] = dataclasses.field(default_factory=list)  # installed on top of the request (--also, --fix)
    # --fix: removed package -> the package the first rehearsal found in its place.
    replacing: dict[str, str] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        words = [self.command, *self.packages]
        if self.release:
            words.append(f"--release {self.release}")
        words += [f"--also {name}" for name in self.also]
        return " ".join(words)


def status_digest(root: str) -> str:
    return sha256_file(os.path.join(root, "var/lib/dpkg/status"))


def open_cache(progress: bool, index_dir: str | None = None) -> apt.Cache:
    """apt's cache of the lists and the status. Never apt's own pkgcache.bin
    (a rehearsal writes no file of the system's): in memory, or with
    ``index_dir``, apt's cache files kept there, apt-rehearse's own, which
    apt checks against the lists and the status file at every open and
    rebuilds when stale (1.2 s for bookworm's lists here, 0.4 s when valid)."""
    op_progress = apt.progress.text.OpProgress(sys.stdout) if progress else apt.progress.base.OpProgress()
    memonly = not _private_index(index_dir)
    try:
        cache = apt.Cache(op_progress, memonly=memonly)
    except (SystemError, apt_pkg.Error) as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise RehearsalError(
            f"apt cannot read the package lists ({message}); fix the sources and run apt update"
        ) from error
    if not memonly:
        # apt writes them 0644 whatever the umask: root's only, as the rest of apt-rehearse's cache.
        for name in ("pkgcache.bin", "srcpkgcache.bin"):
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(index_dir or "", name), 0o600)
    return cache


def _private_index(index_dir: str | None) -> bool:
    """Point apt's cache files at index_dir; False (in memory) where it cannot be had."""
    if not index_dir:
        return False
    try:
        os.makedirs(index_dir, mode=0o700, exist_ok=True)
        os.chmod(index_dir, 0o700)
    except OSError:
        return False  # a read-only cache directory: in memory, as before
    if not os.access(index_dir, os.W_OK):
        return False
    apt_pkg.config.set("Dir::Cache::pkgcache", os.path.join(index_dir, "pkgcache.bin"))
    apt_pkg.config.set("Dir::Cache::srcpkgcache", os.path.join(index_dir, "srcpkgcache.bin"))
    return True


def _split_spec(spec: str) -> tuple[str, str | None, str | None]:
    """PKG[=VERSION] or PKG[/RELEASE], as apt-get install takes them."""
    if spec.endswith(".deb") or spec.startswith(("/", "./", "../")):
        # apt install ./x.deb: a file, not a name; split on "/" it would be
        # the package "" of the release "tmp/x.deb".
        raise UsageError(
            f"'{spec}' is a file: rehearsals take package names as apt's sources offer them "
            f"(PKG, PKG=VERSION, PKG/RELEASE); 'apt install {spec}' is rehearsed by the hook"
        )
    if "=" in spec:
        name, _, version = spec.partition("=")
        return name, version, None
    if "/" in spec:
        name, _, release = spec.partition("/")
        return name, None, release
    return spec, None, None


def _find_package(cache: apt.Cache, name: str) -> apt.Package:
    try:
        return cache[name]
    except KeyError:
        raise UsageError(f"unknown package '{name}': no source offers it (check the name, or run apt update)") from None


def _select_version(pkg: apt.Package, version: str | None, release: str | None) -> None:
    if version is not None:
        chosen = pkg.versions.get(version)
        if chosen is None:
            known = ", ".join(v.version for v in pkg.versions) or "none"
            raise UsageError(f"version '{version}' of {pkg.name} is not available (available: {known})")
        pkg.candidate = chosen
    elif release is not None:
        for candidate in pkg.versions:
            if any(release in (origin.archive, origin.codename) for origin in candidate.origins):
                pkg.candidate = candidate
                return
        raise UsageError(f"release '{release}' offers no version of {pkg.name}")


def mark_request(cache: apt.Cache, request: Request) -> set[str]:
    """Mark the request in the depcache; return the packages the user named."""
    depcache = cache._depcache
    requested: set[str] = set()
    if request.command in ("upgrade", "dist-upgrade", "full-upgrade"):
        if request.packages:
            raise UsageError(f"'{request.command}' takes no package names (use 'install PKG' to upgrade one package)")
        cache.upgrade(dist_upgrade=request.command != "upgrade")
        if request.also:
            # "dist-upgrade, and install these too": the fix a rehearsal suggested.
            _mark_installs(cache, request.also, requested)
        return requested
    if not request.packages:
        raise UsageError(f"'{request.command}' needs at least one package name")
    resolver = apt_pkg.ProblemResolver(depcache)
    with cache.actiongroup():
        for spec in request.packages:
            name, version, release = _split_spec(spec)
            pkg = _find_package(cache, name)
            requested.add(pkg.name)
            if request.command == "install":
                _select_version(pkg, version, release)
                if pkg.candidate is None:
                    raise UsageError(f"package '{name}' has no installation candidate")
                depcache.mark_install(pkg._pkg, True, True)
                resolver.clear(pkg._pkg)
                resolver.protect(pkg._pkg)
            else:
                if not pkg.is_installed:
                    continue
                depcache.mark_delete(pkg._pkg, request.command == "purge")
                resolver.clear(pkg._pkg)
                resolver.protect(pkg._pkg)
                resolver.remove(pkg._pkg)
        _resolve(depcache, resolver)
    if request.also:
        # The fixes --fix adds, on top of any request.
        _mark_installs(cache, request.also, requested)
    return requested


def _resolve(depcache: apt_pkg.DepCache, resolver: apt_pkg.ProblemResolver) -> None:
    """apt-get's own step: let the problem resolver fix what the marks broke."""
    if depcache.broken_count:
        try:
            resolver.resolve(True)
        except SystemError as error:
            raise UsageError(f"apt cannot satisfy this request: {str(error).strip()}") from error


def _mark_installs(cache: apt.Cache, specs: list[str], requested: set[str]) -> None:
    depcache = cache._depcache
    resolver = apt_pkg.ProblemResolver(depcache)
    with cache.actiongroup():
        for spec in specs:
            name, version, release = _split_spec(spec)
            pkg = _find_package(cache, name)
            _select_version(pkg, version, release)
            if pkg.candidate is None:
                raise UsageError(f"package '{name}' has no installation candidate")
            requested.add(pkg.name)
            depcache.mark_install(pkg._pkg, True, True)
            resolver.clear(pkg._pkg)
            resolver.protect(pkg._pkg)
        _resolve(depcache, resolver)


def suggest_replacements(cache: apt.Cache, removed: list[str]) -> dict[str, str]:
    """For each removed package, the package of the target release that
    most likely replaces it: the same name with another version number in
    it (php8.2-mysql -> php8.4-mysql), else one that provides what it
    provided. Found in the archive's own names, not in a table.

    Names are matched on the cache's list of names first: making a Package
    of each of a release's 60,000 names, for every removed package, took
    most of the planning of a release upgrade (issue 7). The scan for
    "provides" is made at most once, and only when a name finds nothing."""

    def eligible(pkg: apt.Package) -> bool:
        return not pkg.marked_delete and pkg.candidate is not None and pkg.candidate.downloadable

    # A match starts with the name's part before its first number: only the
    # names sorted next to that part are tried.
    names = sorted(cache.keys())
    providers: dict[str, list[apt.Package]] | None = None  # provided name -> packages
    suggestions: dict[str, str] = {}
    for name in removed:
        pattern = replacement_pattern(name)
        candidates = []
        if pattern is not None:
            prefix = VERSION_IN_NAME.split(name, maxsplit=1)[0]
            start = bisect.bisect_left(names, prefix)
            nearby = itertools.takewhile(lambda other: other.startswith(prefix), names[start:])
            candidates = [cache[other] for other in nearby if other != name and pattern.match(other)]
            candidates = [pkg for pkg in candidates if pkg.name != name and eligible(pkg)]
        if not candidates and name in cache:
            # A package whose candidate declares it takes this one's files (Policy 7.6: a rename, a successor).
            candidates = [pkg for pkg in _replacing(cache, name) if eligible(pkg)]
        if not candidates and name in cache and cache[name].installed is not None:
            if providers is None:
                providers = {}
                for pkg in cache:
                    if eligible(pkg):
                        for provided_name in set(pkg.candidate.provides):
                            providers.setdefault(provided_name, []).append(pkg)
            found = {
                pkg.name: pkg
                for provided_name in set(cache[name].installed.provides)
                for pkg in providers.get(provided_name, ())
                if pkg.name != name
            }
            candidates = list(found.values())
        if candidates:
            # The newest version in the name wins (php8.4 over php8.3).
            best = max(candidates, key=lambda p: ([int(x) for x in re.findall(r"\d+", p.name)], p.name))
            suggestions[name] = best.name
    return suggestions


def _replacing(cache: apt.Cache, name: str) -> list[apt.Package]:
    """The packages whose candidate version Replaces ``name``."""
    found = {}
    for dependency in cache[name]._pkg.rev_depends_list:
        if dependency.dep_type_untranslated != "Replaces":
            continue
        parent = dependency.parent_pkg.get_fullname(True)
        if parent == name or parent not in cache:
            continue
        candidate = cache[parent].candidate
        if candidate is not None and candidate._cand.id == dependency.parent_ver.id:
            found[parent] = cache[parent]
    return [found[key] for key in sorted(found)]


def provided_names(cache: apt.Cache, changes: list[Change]) -> dict[str, list[str]]:
    """What each package the changes install provides (only asked when
    something is removed: renames are found among them)."""
    if not any(c.action in REMOVING_ACTIONS for c in changes):
        return {}
    provided = {}
    for change in changes:
        if change.action in INSTALLING_ACTIONS and change.package in cache:
            candidate = cache[change.package].candidate
            if candidate is not None:
                provided[change.package] = list(candidate.provides)
    return provided


def _deb_filename(package: str, version: str, arch: str) -> str:
    # apt's own archive naming (QuoteString(Version, "_:")): an epoch's colon
    # becomes %3a.
    return f"{package}_{version.replace('%', '%25').replace(':', '%3a')}_{arch}.deb"


def changes_from_cache(cache: apt.Cache, request: Request, requested: set[str]) -> list[Change]:
    depcache = cache._depcache
    purge_all = request.command == "purge" or apt_pkg.config.find_b("APT::Get::Purge", False)
    changes = []
    for pkg in cache.get_changes():
        # dpkg's own arch ("all" stays "all"), so changes match dpkg-query.
        arch = pkg.installed.architecture if pkg.installed else pkg._pkg.architecture
        if pkg.marked_delete:
            from_version = pkg.installed.version if pkg.installed else None
            action = "purge" if purge_all else "remove"
            changes.append(
                Change(
                    pkg.name,
                    arch,
                    from_version,
                    None,
                    action,
                    manual=not pkg.is_auto_installed,
                    requested=pkg.name in requested,
                )
            )
            continue
        candidate = pkg.candidate
        if candidate is None:
            continue
        from_version = pkg.installed.version if pkg.installed else None
        action = classify(from_version, candidate.version, apt_pkg.version_compare)
        manual = not depcache.is_auto_installed(pkg._pkg)
        changes.append(
            Change(
                pkg.name,
                candidate.architecture,
                from_version,
                candidate.version,
                action,
                manual=manual,
                requested=pkg.name in requested,
            )
        )
    return changes


def kept_back(cache: apt.Cache, request: Request) -> list[str]:
    if request.command not in ("upgrade", "dist-upgrade", "full-upgrade"):
        return []
    return sorted(
        pkg.name
        for pkg in cache
        if pkg.is_installed
        and pkg.is_upgradable
        and not pkg.marked_upgrade
        and not pkg.marked_delete
        and not pkg.marked_downgrade
    )


ALLOW_UNAUTHENTICATED = "APT::Get::AllowUnauthenticated"
UNAUTHENTICATED_FIX = (
    "fix the source's key, or allow it as apt does with [trusted=yes] on the source "
    f"or -o {ALLOW_UNAUTHENTICATED}=true"
)


def unauthenticated(cache: apt.Cache, changes: list[Change]) -> dict[str, list[str]]:
    """The packages the changes would install from no trusted source, each
    with the sources that offer it.

    apt's own rule (pkgAcqArchive): a version is authenticated when one of
    the indexes that offer it is trusted, that is its Release was signed with
    a key apt verified, or its source says [trusted=yes]. Lists fetched with
    Acquire::AllowInsecureRepositories are there, but not trusted."""
    found: dict[str, list[str]] = {}
    for change in changes:
        if change.action not in INSTALLING_ACTIONS or change.package not in cache:
            continue
        candidate = cache[change.package].candidate
        if candidate is None or not candidate.downloadable:
            continue  # nothing to fetch: fetch_debs says so
        indexes = [cache._list.find_index(package_file) for package_file, _ in candidate._cand.file_list]
        indexes = [index for index in indexes if index is not None]
        if not any(index.is_trusted for index in indexes):
            found[change.package] = [index.describe for index in indexes]
    if found:
        # An index's own description names its list file too: name the
        # source as apt does ("URI SUITE").
        sources = {
            index.describe: f"{meta.uri.rstrip('/')} {meta.dist}"
            for meta in cache._list.list
            for index in meta.index_files
        }
        found = {name: sorted({sources.get(d, d) for d in described}) for name, described in found.items()}
    return found


def refuse_unauthenticated(cache: apt.Cache, changes: list[Change]) -> None:
    """Refuse, as apt-get does, packages that cannot be authenticated, unless
    apt's configuration allows them (APT::Get::AllowUnauthenticated): they
    would be unpacked and their scripts run as root in the rehearsal."""
    if apt_pkg.config.find_b(ALLOW_UNAUTHENTICATED, False):
        return
    found = unauthenticated(cache, changes)
    if not found:
        return
    names = sorted(found)
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    sources = sorted({source for offered in found.values() for source in offered})
    if not sources:
        where = "no trusted source offers " + ("it" if len(names) == 1 else "them")
    elif len(sources) == 1:
        where = f"source {sources[0]} has no valid signature"
    else:
        where = f"sources {', '.join(sources)} have no valid signature"
    what = f"package {shown} cannot" if len(names) == 1 else f"packages {shown} cannot"
    raise UsageError(f"{what} be authenticated ({where}); {UNAUTHENTICATED_FIX}")


def fetch_debs(cache: apt.Cache, archive_dir: str, progress: bool) -> dict[str, str]:
    """Download the .debs into our own archive cache (apt's stays untouched).

    Returns file name -> path of every .deb apt fetched or found: files from
    file: sources stay where they are, the others land in ``archive_dir``.

    Not apt.Cache.fetch_archives: it locks the archive directory that was
    configured when the cache was opened (the host's /var/cache/apt/archives,
    which apt itself holds while our hook runs, and whose lock file a
    rehearsal must not create), and it hides which items failed. The same
    steps by hand: the package manager's get_archives, apt-get's trust check
    on the items, and each item's own status.
    """
    apt_download_dir(archive_dir)
    apts_own = apt_pkg.config.find("Dir::Cache::Archives")
    apt_pkg.config.set("Dir::Cache::Archives", archive_dir)
    try:
        return _fetch(cache, progress)
    finally:
        # apt's own again: the next plan in this process (prepare's) finds apt's downloads there.
        apt_pkg.config.set("Dir::Cache::Archives", apts_own)


def reuse_apt_downloads(changes: list[Change], apt_archives: str, archive_dir: str) -> list[str]:
    """Hard-link the .debs apt has downloaded already (apt-daily's) into our
    archive cache, so that they are not downloaded twice; apt's fetcher
    checks each against the archive's hashes before it takes it. A .deb on
    another file system is left to the download."""
    linked = []
    if os.path.realpath(apt_archives) == os.path.realpath(archive_dir):
        return linked
    for change in changes:
        if change.action not in INSTALLING_ACTIONS or not change.to_version:
            continue
        name = _deb_filename(change.package, change.to_version, change.arch)
        source, target = os.path.join(apt_archives, name), os.path.join(archive_dir, name)
        try:
            if os.path.isfile(source) and not os.path.islink(source) and not os.path.lexists(target):
                os.link(source, target)
                linked.append(name)
        except OSError:
            continue  # another file system, or gone meanwhile: apt downloads it
    return linked


def _fetch(cache: apt.Cache, progress: bool) -> dict[str, str]:
    acquire_progress = (
        apt.progress.text.AcquireProgress(sys.stdout) if progress else apt.progress.base.AcquireProgress()
    )
    errors: list[str] = []
    for _ in range(3):  # a flaky mirror gets two more chances
        fetcher = apt_pkg.Acquire(acquire_progress)
        manager = apt_pkg.PackageManager(cache._depcache)
        try:
            manager.get_archives(fetcher, cache._list, cache._records)
        except SystemError as error:
            raise RehearsalError(f"apt cannot find the packages to rehearse: {str(error).strip()}") from error
        # apt-get's own last check, on the very files it would fetch
        # (refuse_unauthenticated has named the packages before).
        untrusted = [item.desc_uri for item in fetcher.items if not item.is_trusted]
        if untrusted and not apt_pkg.config.find_b(ALLOW_UNAUTHENTICATED, False):
            raise UsageError(f"{untrusted[0]} cannot be authenticated; {UNAUTHENTICATED_FIX}")
        fetcher.run()
        errors = [
            f"{item.desc_uri}: {item.error_text}"
            for item in fetcher.items
            if item.status != item.STAT_DONE or not item.complete
        ]
        if not errors:
            return {os.path.basename(item.destfile): item.destfile for item in fetcher.items}
    raise RehearsalError(
        f"could not download the packages to rehearse ({errors[0]}); check the network and the sources"
    )


def attach_debs(
    changes: list[Change],
    cache: apt.Cache,
    archive_dir: str,
    fetched: dict[str, str],
    sha256_of: Callable[[str], str] = sha256_file,
) -> list[Change]:
    attached = []
    for change in changes:
        if change.action in INSTALLING_ACTIONS and change.to_version:
            name = _deb_filename(change.package, change.to_version, change.arch)
            path = fetched.get(name)
            if path is None:
                # The archive's own file name (a file: source keeps it; it has
                # no epoch): a records lookup, which on compressed lists
                # (Acquire::GzipIndexes) is a decompression, 6 ms each. Only
                # asked when apt's own name is not what was fetched.
                version = cache[change.package].versions.get(change.to_version)
                filename = version.filename if version is not None else None
                path = fetched.get(os.path.basename(filename)) if filename else None
            path = path or os.path.join(archive_dir, name)
            if not os.path.isfile(path):
                raise RehearsalError(f"the downloaded file for {change.name} {change.to_version} is missing ({path})")
            change = dataclasses.replace(change, deb=os.path.realpath(path), sha256=sha256_of(path))
        attached.append(change)
    return attached


def plan_transaction(
    request: Request,
    archive_dir: str,
    progress: bool,
    private_apt_dir: str | None = None,
    sha256_of: Callable[[str], str] = sha256_file,
    index_dir: str | None = None,
) -> Transaction:
    """Resolve the request with apt's resolver and fetch what it needs
    (``index_dir``: where apt may keep its cache files for the next plan)."""
    if request.command == "gate":
        # unattended-upgrades' own code decides what it would install.
        from apt_rehearse.plan import gate

        cache = gate.open_and_mark(gate.load_unattended_upgrade(), request.root)
        requested: set[str] = set()
    else:
        cache = open_cache(progress, index_dir)
        requested = mark_request(cache, request)
    if cache._depcache.broken_count:
        broken = ", ".join(sorted(p.name for p in cache if p.is_inst_broken or p.is_now_broken)[:10])
        raise UsageError(f"apt cannot satisfy this request (broken: {broken})")
    changes = changes_from_cache(cache, request, requested)
    held = kept_back(cache, request)
    removed = [c.package for c in changes if c.action in REMOVING_ACTIONS]
    replacements = suggest_replacements(cache, removed)
    replacements.update({name: other for name, other in request.replacing.items() if name in removed})
    successors = find_successors(changes, provided_names(cache, changes))
    if changes:
        # Before anything is fetched: what apt would refuse is not rehearsed as root.
        refuse_unauthenticated(cache, changes)
        reuse_apt_downloads(changes, apt_pkg.config.find_dir("Dir::Cache::Archives"), archive_dir)
        fetched = fetch_debs(cache, archive_dir, progress)
        changes = attach_debs(changes, cache, archive_dir, fetched, sha256_of)
    return Transaction(
        changes=changes,
        root=os.path.realpath(request.root),
        request=request.describe(),
        dpkg_status_sha256=status_digest(request.root),
        apt_config={"DPkg::Options": list(apt_pkg.config.value_list("DPkg::Options"))},
        kept_back=held,
        release=request.release,
        private_apt_dir=private_apt_dir,
        replacements=replacements,
        successors=successors,
    )
