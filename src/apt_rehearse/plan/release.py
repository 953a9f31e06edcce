"""Private apt state for ``--release CODENAME``.

"What would a release upgrade do to this box?" needs the target release's
package lists, without touching the host's own sources, lists or cache. The
sources are rewritten (this release's codename -> the target's, suite by
suite) into a directory of apt-rehearse's own, and apt reads and updates its
lists there. The replay installs the same rewritten sources and lists inside
the sandbox, as the sysadmin would before a real release upgrade.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess

import apt
import apt.progress.base
import apt.progress.text
import apt_pkg
from debian.deb822 import Deb822

from apt_rehearse.plan.planner import open_cache
from apt_rehearse.sandbox import syscalls
from apt_rehearse.model.config import apt_download_dir
from apt_rehearse.model.errors import RehearsalError, UsageError

CODENAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclasses.dataclass
class ReleaseState:
    directory: str
    lists_dir: str
    # path relative to the target root -> rewritten content
    sources: dict[str, str]
    release: str = ""
    # sources that offer nothing for the release (a third-party repository
    # that has not published it yet) -> apt's words
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)


# apt's words for "this repository has no such suite": permanent, unlike a
# network error, which is worth another try.
MISSING_SUITE = re.compile(r"does not have a Release file|404\s+Not Found|File not found|No such file or directory")
FETCH_FAILED = re.compile(r"^Failed to fetch (\S+)")
NO_RELEASE_FILE = re.compile(r"^The repository '(\S+) (\S+) Release' does not have a Release file")
SUMMARY_LINES = ("Some index files failed to download",)
# apt update's refusal of a source without a valid signature (no key, a bad
# one, none at all), unless the source says [trusted=yes] or
# Acquire::AllowInsecureRepositories is set: no retry changes that.
NOT_SIGNED = re.compile(r"The repository '(.+?)(?: (?:In)?Release)?' is not signed")


def missing_suites(message: str) -> dict[str, str] | None:
    """The repositories apt found without the suite, from a failed update's
    message (apt's errors, joined by python-apt); None when anything else
    went wrong too (a network error: worth another try, then fatal)."""
    missing: dict[str, str] = {}
    for item in re.split(r",\s*(?=[EW]:)", message.strip()):
        level, _, text = item.partition(":")
        text = text.strip()
        if level not in ("E", "W") or not text or text.startswith(SUMMARY_LINES):
            continue
        if not MISSING_SUITE.search(text):
            if level == "E":
                return None
            continue
        source = text
        if no_release := NO_RELEASE_FILE.match(text):
            source = f"{no_release.group(1)} {no_release.group(2)}"
        elif (fetch := FETCH_FAILED.match(text)) and "/dists/" in fetch.group(1):
            base, _, rest = fetch.group(1).partition("/dists/")
            source = f"{base} {rest.split('/', 1)[0]}"
        missing.setdefault(source, text[:300])
    return missing or None


def current_codename(root: str) -> str:
    path = os.path.join(root, "etc/os-release")
    if not os.path.exists(path):
        path = os.path.join(root, "usr/lib/os-release")
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                if key == "VERSION_CODENAME" and value.strip('"'):
                    return value.strip('"')
    except OSError:
        pass
    raise UsageError(f"cannot tell which release {root} runs (no VERSION_CODENAME in os-release)")


def rewrite_suite(suite: str, old: str, new: str) -> str:
    if suite == old:
        return new
    if suite.startswith(old + "-"):
        return new + suite[len(old) :]
    return suite


def rewrite_one_line(text: str, old: str, new: str) -> tuple[str, int]:
    """Rewrite one-line-style sources (sources.list); count rewritten suites.

    Not aptsources.sourceslist: bookworm's (python-apt 2.6) marks every entry
    with a [signed-by=...] option invalid and writes it back unchanged, and
    that is how third-party repositories are configured; it reads no deb822
    .sources before python-apt 2.7 either (those go through debian.deb822)."""
    out, count = [], 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        tokens = stripped.split()
        index = 1
        if index < len(tokens) and tokens[index].startswith("["):
            while index < len(tokens) and not tokens[index].endswith("]"):
                index += 1
            index += 1
        suite_at = index + 1  # after the URI
        if suite_at < len(tokens):
            rewritten = rewrite_suite(tokens[suite_at], old, new)
            if rewritten != tokens[suite_at]:
                count += 1
                tokens[suite_at] = rewritten
        out.append(" ".join(tokens) + "\n")
    return "".join(out), count


def rewrite_deb822(text: str, old: str, new: str) -> tuple[str, int]:
    """Rewrite deb822-style sources (*.sources); count rewritten suites."""
    paragraphs, count = [], 0
    for paragraph in Deb822.iter_paragraphs(text.splitlines()):
        if "Suites" in paragraph:
            suites = paragraph["Suites"].split()
            rewritten = [rewrite_suite(s, old, new) for s in suites]
            count += sum(1 for a, b in zip(suites, rewritten) if a != b)
            paragraph["Suites"] = " ".join(rewritten)
        paragraphs.append(paragraph.dump())
    return "\n".join(p.rstrip("\n") + "\n" for p in paragraphs), count


def source_files() -> list[str]:
    """The sources files apt reads, as absolute host paths."""
    files = []
    main = apt_pkg.config.find_file("Dir::Etc::sourcelist")
    if main and os.path.isfile(main):
        files.append(main)
    parts = apt_pkg.config.find_dir("Dir::Etc::sourceparts")
    if parts and os.path.isdir(parts):
        for name in sorted(os.listdir(parts)):
            if name.endswith((".list", ".sources")):
                files.append(os.path.join(parts, name))
    return files


def prepare(root: str, release: str, cache_dir: str) -> ReleaseState:
    """Write the rewritten sources into a private apt directory."""
    if not CODENAME_RE.match(release):
        raise UsageError(f"'{release}' is not a release codename (e.g. trixie)")
    old = current_codename(root)
    if old == release:
        raise UsageError(f"{root} already runs {release}; use 'dist-upgrade' without --release")
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:12]
    directory = os.path.join(cache_dir, "releases", f"{release}-{key}")
    parts_dir = os.path.join(directory, "sources.list.d")
    lists_dir = os.path.join(directory, "lists")
    os.makedirs(parts_dir, mode=0o755, exist_ok=True)
    apt_download_dir(lists_dir)
    real_root = os.path.realpath(root)
    sources: dict[str, str] = {}
    main_path = os.path.join(directory, "sources.list")
    wanted: dict[str, str] = {main_path: ""}  # path -> content, written only when it changed
    total = 0
    for path in source_files():
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        rewrite = rewrite_deb822 if path.endswith(".sources") else rewrite_one_line
        new_text, count = rewrite(text, old, release)
        total += count
        relative = "/" + os.path.relpath(path, real_root)
        sources[relative] = new_text
        main = path.endswith("sources.list") and "sources.list.d" not in path
        wanted[main_path if main else os.path.join(parts_dir, os.path.basename(path))] = new_text
    for stale in os.listdir(parts_dir):
        if os.path.join(parts_dir, stale) not in wanted:
            os.unlink(os.path.join(parts_dir, stale))
    for target, text in wanted.items():
        _write_if_changed(target, text)
    if total == 0:
        raise UsageError(f"no apt source names '{old}' or '{old}-*'; cannot switch them to {release}")
    return ReleaseState(directory, lists_dir, sources, release)


def _write_if_changed(path: str, text: str) -> None:
    """apt takes a sources file newer than its cache files as a reason to
    rebuild them: one the same as last time keeps its mtime."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    except (OSError, UnicodeDecodeError):
        pass
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def use(state: ReleaseState, progress: bool) -> None:
    """Point apt at the private state and bring its lists up to date.

    The very call apt update makes (Cache.update: libapt's ListUpdate), so
    that what is refused or missing is what the sysadmin's own apt update
    would find. It reports apt's messages, not per-item fetch status: the
    items (SourceList.get_indexes on an Acquire of our own) would have to be
    run without ListUpdate, which is a different update. Hence the reading of
    apt's words in missing_suites and NOT_SIGNED. Those are English whatever
    the sysadmin's LANG: Python never sets LC_MESSAGES from the environment,
    and libapt's gettext ignores LANGUAGE in the C locale."""
    apt_pkg.config.set("Dir::Etc::sourcelist", os.path.join(state.directory, "sources.list"))
    apt_pkg.config.set("Dir::Etc::sourceparts", os.path.join(state.directory, "sources.list.d"))
    apt_pkg.config.set("Dir::State::lists", state.lists_dir + "/")
    fetch_progress = apt.progress.text.AcquireProgress() if progress else apt.progress.base.AcquireProgress()
    # The update needs a cache of the lists as they were: kept, it is valid at
    # the next rehearsal of this release when the lists did not change.
    cache = open_cache(False, index_dir(state))
    last_error: Exception | None = None
    # libapt runs APT::Update::Post-Invoke-Success after this update too; ours
    # (hooks/20apt-rehearse) must not start a prepare for a private one.
    os.environ["APT_REHEARSE_PRIVATE_UPDATE"] = "1"
    for _ in range(3):
        try:
            cache.update(fetch_progress, raise_on_error=True)
            state.unavailable = {}
            return
        except apt.cache.FetchFailedException as error:
            last_error = error
            if unsigned := NOT_SIGNED.search(str(error)):
                raise UsageError(
                    f"the repository {unsigned.group(1)} has no valid signature, so apt update refuses it "
                    "(as it would in the real release upgrade); fix the source's key, or allow it as apt "
                    "does with [trusted=yes] on the source"
                ) from error
            missing = missing_suites(str(error))
            if missing is not None:
                # What apt does too: the other sources' lists are in place.
                # The sysadmin's upgrade goes ahead without that repository.
                if not _has_lists_of(state):
                    raise UsageError(
                        f"no apt source offers '{state.release}' ({next(iter(missing.values()))}); "
                        "is it a Debian release codename?"
                    ) from error
                state.unavailable = missing
                return
        except apt.cache.LockFailedException as error:
            raise RehearsalError(f"cannot lock {state.lists_dir}: {error}") from error
    raise RehearsalError(f"cannot fetch the package lists of the target release: {str(last_error).strip()}")


def index_dir(state: ReleaseState) -> str:
    """Where apt's cache files of the release's lists are kept (plan/planner's
    open_cache): a repeated rehearsal of the release opens them instead of
    reading every list again."""
    return os.path.join(state.directory, "index")


def _has_lists_of(state: ReleaseState) -> bool:
    """Whether any source's package list for the release is in place."""
    marker = f"_dists_{state.release}"
    return any(marker in name and "_Packages" in name for name in os.listdir(state.lists_dir))


def build_source_cache(state: ReleaseState, root: str) -> str | None:
    """apt's srcpkgcache.bin of the release's lists, valid for apt inside the
    sandbox, where the same lists sit at /var/lib/apt/lists.

    The real run's apt caches were built by the sysadmin's apt update, before
    it; without this, the replay's first apt tool (apt-extracttemplates,
    under dpkg-preconfigure) reads every list of the release again, in the
    middle of the replay. apt names each list in its cache by path, size and
    mtime, and takes only a cache its own version made: so the target's own
    apt-cache builds it (in a chroot when the target is not /), in a process
    of its own (ForkedCall) that binds the lists over /var/lib/apt/lists and
    the release state (its sources, and cache/ for the result) over
    /var/cache/apt in a private mount namespace, which ends with it. Nothing
    of the target is written. apt-cache takes no lock, and keeps a cache it
    finds valid as it is."""
    lists, apt_cache = os.path.join(root, "var/lib/apt/lists"), os.path.join(root, "var/cache/apt")
    if not (os.path.isdir(lists) and os.path.isdir(apt_cache)):
        return None
    os.makedirs(os.path.join(state.directory, "cache"), mode=0o755, exist_ok=True)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(state.lists_dir, lists, None, syscalls.MS_BIND)
    syscalls.mount(state.directory, apt_cache, None, syscalls.MS_BIND)
    argv = [
        "apt-cache",
        "-o",
        "Dir::Etc::sourcelist=/var/cache/apt/sources.list",
        "-o",
        "Dir::Etc::sourceparts=/var/cache/apt/sources.list.d",
        "-o",
        "Dir::Cache::pkgcache=",
        "-o",
        "Dir::Cache::srcpkgcache=/var/cache/apt/cache/srcpkgcache.bin",
        "stats",
    ]
    if os.path.realpath(root) != "/":
        argv = ["chroot", root, *argv]
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=environment, check=False, timeout=300)
    except subprocess.TimeoutExpired:
        return None  # apt inside builds its own, as without this
    target = os.path.join(state.directory, "cache", "srcpkgcache.bin")
    return target if os.path.isfile(target) else None
