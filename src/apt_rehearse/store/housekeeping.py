"""apt-rehearse's own files stay bounded on a machine it guards for years.

Every rehearsal leaves a report, a verdict, downloaded .debs and, with
--release, a copy of the target release's lists. Nothing of that may grow
without end in /var/log and /var/cache of a server that rehearses every
upgrade. What goes, after each rehearsal:

- reports: all but the newest ``keep`` (.json, .txt and .log together);
- verdicts: those older than the age at which the hook would no longer use
  them anyway (APT::Rehearse::Cache-Max-Age), with their "mailed" marks;
- the transactions' lock files (store/inflight) nobody held for a day;
- downloaded .debs: those the rehearsal just made did not use and that have
  been in the cache for more than ``max_age`` seconds;
- --release apt states: those of a root that is gone, and those no
  rehearsal used for ``RELEASE_STATE_MAX_AGE``.

Housekeeping never fails a rehearsal: what cannot be removed stays, for the
next time. It removes only names of its own making, never follows a link.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from typing import TYPE_CHECKING

from apt_rehearse.store import inflight

if TYPE_CHECKING:
    from apt_rehearse.model.config import Settings

REPORT_NAME = re.compile(r"^(\d{8}T\d{6}Z?-[0-9a-f]{1,64})\.(json|txt|log)$")
VERDICT_NAME = re.compile(r"^[0-9a-f]{64}\.(json|mailed)$")  # a verdict, and the mark that its BLOCK was mailed
RELEASE_STATE_NAME = re.compile(r"^[a-z][a-z0-9-]*-[0-9a-f]{12}$")
RELEASE_STATE_MAX_AGE = 30 * 86400
ROOT_MARKER = "root"  # in a --release apt state: the root it belongs to
LAST_USE_MARKER = "sources.list"  # rewritten each time the state is used


def _regular_files(directory: str) -> list[tuple[str, os.stat_result]]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        try:
            info = os.lstat(os.path.join(directory, name))
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((name, info))
    return found


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def prune_reports(log_dir: str, keep: int) -> list[str]:
    """Remove all reports but the newest ``keep`` (by the time in their name)."""
    runs: dict[str, list[str]] = {}
    for name, _ in _regular_files(log_dir):
        match = REPORT_NAME.match(name)
        if match:
            runs.setdefault(match.group(1), []).append(name)
    removed = []
    for run in sorted(runs)[: max(len(runs) - max(keep, 1), 0)]:
        removed += [name for name in runs[run] if _unlink(os.path.join(log_dir, name))]
    return removed


def prune_verdicts(verdict_dir: str, max_age: float, now: float | None = None) -> list[str]:
    """Remove verdicts older than the hook would ever use (approval.json included)."""
    now = time.time() if now is None else now
    removed = []
    for name, info in _regular_files(verdict_dir):
        if (VERDICT_NAME.match(name) or name == "approval.json") and now - info.st_mtime > max_age:
            if _unlink(os.path.join(verdict_dir, name)):
                removed.append(name)
    return removed


def prune_archives(archive_dir: str, in_use: set[str], max_age: float, now: float | None = None) -> list[str]:
    """Remove downloaded .debs not in ``in_use`` (real paths) that arrived more than max_age ago.

    The inode's change time is when the file arrived here: a download keeps
    the server's modification time."""
    now = time.time() if now is None else now
    removed = []
    for name, info in _regular_files(archive_dir):
        path = os.path.join(archive_dir, name)
        if name.endswith(".deb") and path not in in_use and now - info.st_ctime > max_age:
            if _unlink(path):
                removed.append(name)
    return removed


def mark_release_state(directory: str, root: str) -> None:
    """Note which root a --release apt state belongs to (for prune_release_states)."""
    with open(os.path.join(directory, ROOT_MARKER), "w", encoding="utf-8") as handle:
        handle.write(os.path.realpath(root) + "\n")


def prune_release_states(releases_dir: str, current: str | None, now: float | None = None) -> list[str]:
    """Remove --release apt states of roots that are gone or unused for RELEASE_STATE_MAX_AGE."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(releases_dir)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        path = os.path.join(releases_dir, name)
        if not RELEASE_STATE_NAME.match(name) or (current and os.path.realpath(current) == os.path.realpath(path)):
            continue
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            last_use = os.lstat(os.path.join(path, LAST_USE_MARKER)).st_mtime
        except OSError:
            last_use = 0.0  # half made: nothing worth keeping
        root = _marked_root(path)
        if now - last_use > RELEASE_STATE_MAX_AGE or (root is not None and not os.path.isdir(root)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def _marked_root(state_dir: str) -> str | None:
    try:
        with open(os.path.join(state_dir, ROOT_MARKER), encoding="utf-8") as handle:
            root = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return root if root.startswith("/") else None


def tidy(settings: Settings, used_debs: list[str] | None = None, release_state: str | None = None) -> None:
    """After a rehearsal: prune what earlier ones left (see the module's doc)."""
    try:
        prune_reports(settings.log_dir, settings.keep_reports)
        prune_verdicts(os.path.join(settings.cache_dir, "verdicts"), settings.verdict_max_age)
        if used_debs is not None:
            in_use = {os.path.realpath(path) for path in used_debs}
            prune_archives(os.path.join(settings.cache_dir, "archives"), in_use, settings.archives_max_age)
        prune_release_states(os.path.join(settings.cache_dir, "releases"), release_state)
        inflight.tidy(settings.cache_dir)
    except OSError:
        pass  # never fails a rehearsal; the next one tries again
