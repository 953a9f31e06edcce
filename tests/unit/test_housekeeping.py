"""What earlier rehearsals left stays bounded: reports, verdicts, .debs, --release states."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from apt_rehearse.store import housekeeping
from apt_rehearse.model.config import Settings

DAY = 86400.0


def _report(log_dir: Path, stamp: str, ident: str) -> list[Path]:
    files = [log_dir / f"{stamp}-{ident}.{suffix}" for suffix in ("json", "txt", "log")]
    for path in files:
        path.write_text("{}")
    return files


def test_reports_keep_the_newest_runs_whole(tmp_path: Path) -> None:
    old = _report(tmp_path, "20260101T000000", "aaaaaaaaaaaa")
    middle = _report(tmp_path, "20260201T000000", "bbbbbbbbbbbb")
    new = _report(tmp_path, "20260301T000000", "cccccccccccc")
    (tmp_path / "latest.json").symlink_to(new[0].name)
    (tmp_path / "notes.txt").write_text("the sysadmin's own")
    removed = housekeeping.prune_reports(str(tmp_path), keep=2)
    assert sorted(removed) == sorted(p.name for p in old)
    assert all(p.exists() for p in middle + new)
    assert (tmp_path / "latest.json").is_symlink() and (tmp_path / "notes.txt").exists()
    assert housekeeping.prune_reports(str(tmp_path), keep=2) == []


def test_verdicts_older_than_the_hook_would_use_go(tmp_path: Path) -> None:
    now = time.time()
    stale, fresh = tmp_path / ("a" * 64 + ".json"), tmp_path / ("b" * 64 + ".json")
    approval, other = tmp_path / "approval.json", tmp_path / "unrelated.json"
    for path in (stale, fresh, approval, other):
        path.write_text("{}")
    for path in (stale, approval, other):
        os.utime(path, (now - 7 * 3600, now - 7 * 3600))
    removed = housekeeping.prune_verdicts(str(tmp_path), max_age=6 * 3600, now=now)
    assert sorted(removed) == sorted([stale.name, approval.name])
    assert fresh.exists() and other.exists()


def test_archives_keep_what_is_in_use_and_what_is_recent(tmp_path: Path) -> None:
    debs = {name: tmp_path / f"{name}_1_amd64.deb" for name in ("used", "recent", "old")}
    for path in debs.values():
        path.write_bytes(b"!<arch>\n")
    (tmp_path / "lock").write_text("")
    arrived = os.lstat(debs["old"]).st_ctime
    # ctime cannot be set back; "now" moves forward instead.
    removed = housekeeping.prune_archives(str(tmp_path), {str(debs["used"])}, max_age=7 * DAY, now=arrived + 8 * DAY)
    assert sorted(removed) == sorted([debs["recent"].name, debs["old"].name])
    assert debs["used"].exists() and (tmp_path / "lock").exists()
    assert housekeeping.prune_archives(str(tmp_path), set(), max_age=7 * DAY, now=arrived + DAY) == []


def _state(releases: Path, name: str, root: Path | None, used: float) -> Path:
    state = releases / name
    (state / "lists").mkdir(parents=True)
    (state / "sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    os.utime(state / "sources.list", (used, used))
    if root is not None:
        housekeeping.mark_release_state(str(state), str(root))
    return state


def test_release_states_of_gone_roots_or_unused_go(tmp_path: Path) -> None:
    now = time.time()
    releases, live_root = tmp_path / "releases", tmp_path / "tree"
    live_root.mkdir()
    kept = _state(releases, "trixie-111111111111", live_root, now - DAY)
    gone = _state(releases, "trixie-222222222222", tmp_path / "deleted-tree", now - DAY)
    unused = _state(releases, "trixie-333333333333", live_root, now - 31 * DAY)
    unmarked_recent = _state(releases, "trixie-444444444444", None, now - DAY)
    current = _state(releases, "forky-555555555555", tmp_path / "also-gone", now - 40 * DAY)
    (releases / "not-ours").mkdir()
    removed = housekeeping.prune_release_states(str(releases), str(current), now=now)
    assert sorted(removed) == sorted([gone.name, unused.name])
    assert kept.exists() and unmarked_recent.exists() and current.exists() and (releases / "not-ours").exists()


@pytest.mark.parametrize("step", ["prune_reports", "prune_verdicts", "prune_archives", "prune_release_states"])
def test_tidy_never_fails_a_rehearsal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    # Nothing there: nothing raised, and nothing made.
    settings = Settings(log_dir=str(tmp_path / "missing-log"), cache_dir=str(tmp_path / "missing-cache"))
    assert housekeeping.tidy(settings, ["/nonexistent.deb"], None) is None
    assert not (tmp_path / "missing-log").exists() and not (tmp_path / "missing-cache").exists()
    # A file where its directories should be: nothing raised, the file left as it is.
    (tmp_path / "log").write_text("a file where a directory should be")
    assert housekeeping.tidy(Settings(log_dir=str(tmp_path / "log"), cache_dir=str(tmp_path / "log")), [], None) is None
    assert (tmp_path / "log").read_text() == "a file where a directory should be"

    # A step that fails outright (a read-only /var, an I/O error): the
    # rehearsal, done and reported, still ends with its verdict.
    log_dir, cache_dir = tmp_path / "reports", tmp_path / "cache"
    log_dir.mkdir()
    for day in range(1, 4):
        _report(log_dir, f"2026010{day}T000000", str(day) * 12)
    for directory in ("verdicts", "archives", "releases"):
        (cache_dir / directory).mkdir(parents=True)
    failed: list[str] = []

    def refuse(*_args: object, **_kwargs: object) -> list[str]:
        failed.append(step)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(housekeeping, step, refuse)
    try:
        result = housekeeping.tidy(Settings(log_dir=str(log_dir), cache_dir=str(cache_dir), keep_reports=1), [], None)
    except OSError as error:
        pytest.fail(f"tidy let the error of {step} through to the rehearsal: {error}")
    assert failed == [step] and result is None
