"""Faults: a hanging maintainer script, a corrupt .deb, a disk upper (kept,
and killed), another apt holding the lock, two rehearsals at once."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import rel_host
import rel_run
from lib.trees import dpkg_status_digest, tree_hash


def _cli(scenario, *args: str, log: Path | None = None, phase: str | None = None) -> rel_run.Outcome:  # noqa: ANN001
    return rel_run.run_and_kill(
        rel_run.cli_argv(scenario.tree, log or scenario.log, scenario.cache, *args), phase, log=log
    )


def _unchanged(scenario, before: tuple[str, str]) -> None:  # noqa: ANN001
    assert (tree_hash(scenario.tree, content=False), dpkg_status_digest(scenario.tree)) == before


def _state(scenario) -> tuple[str, str]:  # noqa: ANN001
    return tree_hash(scenario.tree, content=False), dpkg_status_digest(scenario.tree)


@pytest.mark.case("hanging maintainer script: timeout finding, torn down")
def test_hanging_script(scenario, canary) -> None:  # noqa: ANN001
    state = _state(scenario)
    snapshot = rel_host.HostSnapshot.take(whole_root=False)
    started = time.monotonic()
    outcome = _cli(scenario, "--json", "-o", "APT::Rehearse::Timeout=20", "install", "rel-hang")
    assert time.monotonic() - started < 300
    assert outcome.returncode == 10, outcome.output[-3000:]
    document = json.loads(outcome.stdout)
    assert [f for f in document["findings"] if f["check"] == "timeout" and f["severity"] == "block"], document[
        "findings"
    ]
    assert not outcome.left, outcome.left  # the setsid'd sleep too: it died with the sandbox
    assert not rel_host.differences(snapshot, rel_host.HostSnapshot.take(whole_root=False), {outcome.target or 0}, ())
    _unchanged(scenario, state)


@pytest.mark.case("corrupt .deb: one line or a finding, nothing changed")
def test_corrupt_deb(scenario, canary) -> None:  # noqa: ANN001
    state = _state(scenario)
    outcome = _cli(scenario, "--no-services", "install", "rel-corrupt")
    assert outcome.returncode in (1, 10), outcome.output[-3000:]
    assert "Traceback" not in outcome.stderr
    if outcome.returncode == 10:
        assert "rel-corrupt" in outcome.stdout and "Verdict: BLOCK" in outcome.stdout, outcome.stdout[-3000:]
    else:
        assert len(outcome.stderr.strip().splitlines()) == 1 and "internal error" not in outcome.stderr, outcome.stderr
    assert not outcome.left
    _unchanged(scenario, state)


@pytest.mark.case("disk upper: works, removed afterwards")
def test_disk_upper(scenario, canary) -> None:  # noqa: ANN001
    uppers = scenario.base / "uppers"
    outcome = _cli(scenario, "--no-services", "-o", f"APT::Rehearse::Upper-Dir={uppers}", "install", "rel-big")
    assert outcome.returncode == 0, outcome.output[-3000:]
    assert list(uppers.iterdir()) == []


@pytest.mark.case("disk upper: SIGKILL in replay, removed all the same")
def test_disk_upper_killed(scenario, canary) -> None:  # noqa: ANN001
    uppers = scenario.base / "uppers-killed"
    state = _state(scenario)
    outcome = _cli(scenario, "-o", f"APT::Rehearse::Upper-Dir={uppers}", "install", "rel-slow", phase="replay")
    assert outcome.killed_at == "replay" and outcome.returncode == -9, outcome.output[-2000:]
    assert not outcome.left
    deadline = time.monotonic() + 20
    while list(uppers.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(uppers.iterdir()) == [], "the killed rehearsal's disk upper is still there"
    _unchanged(scenario, state)


@pytest.mark.case("another apt holds the lock")
def test_lock_held_by_another_apt(scenario, canary) -> None:  # noqa: ANN001
    """apt (or dpkg) of the tree is running: the rehearsal works on its own
    copy and neither waits for nor takes the real lock."""
    locks = [
        scenario.tree / "var/lib/dpkg/lock-frontend",
        scenario.tree / "var/lib/dpkg/lock",
        scenario.tree / "var/lib/apt/lists/lock",
        scenario.tree / "var/cache/apt/archives/lock",
    ]
    handles = []
    try:
        for path in locks:
            handle = open(path, "a")  # noqa: SIM115
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handles.append(handle)
        state = _state(scenario)
        outcome = _cli(scenario, "--no-services", "install", "rel-clean")
        assert outcome.returncode == 0, outcome.output[-3000:]
        _unchanged(scenario, state)
        # The lock is still ours: nobody took it from the real apt.
        probe = subprocess.run(
            [
                rel_run.PYTHON,
                "-c",
                "import fcntl, sys; fcntl.lockf(open(sys.argv[1], 'a'), " "fcntl.LOCK_EX | fcntl.LOCK_NB)",
                str(locks[0]),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode != 0 and "Resource temporarily unavailable" in probe.stderr, probe.stderr
    finally:
        for handle in handles:
            handle.close()


@pytest.mark.case("two rehearsals at once")
def test_two_rehearsals_at_once(scenario, canary) -> None:  # noqa: ANN001
    state = _state(scenario)
    runs = []
    for args, log in (
        (("install", "rel-clean"), "log-a"),
        (("install", "rel-fail"), "log-b"),
        (("install", "rel-clean"), "log-c"),
    ):
        argv = rel_run.cli_argv(scenario.tree, scenario.base / log, scenario.cache, "--json", *args)
        runs.append(
            subprocess.Popen(
                [
                    rel_run.PYTHON,
                    str(rel_run.REAPER),
                    str(scenario.base / f"{log}.pid"),
                    str(scenario.base / f"{log}.left"),
                    *argv,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=rel_run.environment(),
            )
        )
    results = [
        (run.communicate(timeout=900), json.loads((scenario.base / f"{log}.left").read_text()))
        for run, log in zip(runs, ("log-a", "log-b", "log-c"))
    ]
    codes = [left["status"] for _, left in results]
    assert codes == [0, 10, 0], [(c, out[1][-1500:]) for c, (out, _) in zip(codes, results)]
    verdicts = [json.loads(out[0])["verdict"] for out, _ in results]
    assert verdicts == ["pass", "block", "pass"]
    assert all(not left["left"] for _, left in results)
    _unchanged(scenario, state)
    for log in ("log-a", "log-b", "log-c"):
        for suffix in (".pid", ".left"):
            os.unlink(scenario.base / f"{log}{suffix}")


@pytest.mark.case("booted rehearsal under a late-reaping subreaper ends")
def test_under_a_lazy_subreaper(scenario, canary) -> None:  # noqa: ANN001
    """Orphans go to the nearest subreaper (systemd --user, CI runners, this
    suite); one that reaps late must not make the rehearsal wait for ever."""
    started = time.monotonic()
    outcome = rel_run.run_and_kill(
        rel_run.cli_argv(scenario.tree, scenario.log, scenario.cache, "install", "rel-clean"),
        None,
        timeout=240,
        lazy_reaper=True,
    )
    assert outcome.returncode == 0, (time.monotonic() - started, outcome.output[-2000:])
    assert not outcome.left
