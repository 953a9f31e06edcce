"""SIGKILL at each phase, of the CLI and of the hook while apt waits on it.

After each kill: no mount, process, cgroup or temporary directory of ours is
left; the tree is unchanged; apt (for the hook) stops, says why, and dpkg
never ran.
"""

from __future__ import annotations

import pytest
import rel_host
import rel_run
import rel_scenario
from lib.trees import dpkg_status_digest, tree_hash


def _check_nothing_left(
    scenario,
    canary,
    before: rel_host.HostSnapshot,
    outcome: rel_run.Outcome,  # noqa: ANN001
    tree_before: str | None,
    status_before: str,
) -> None:
    assert not outcome.left, f"processes left after the kill: {outcome.left}"
    after = rel_host.HostSnapshot.take(whole_root=False)
    pids = {p for p in (outcome.target,) if p}
    problems = rel_host.differences(before, after, pids, ())
    assert not problems, problems
    assert dpkg_status_digest(scenario.tree) == status_before
    if tree_before is not None:
        assert tree_hash(scenario.tree, content=False) == tree_before


def _kill_case(front: str, phase: str):  # noqa: ANN202
    return pytest.param(phase, marks=pytest.mark.case(f"SIGKILL {front} at {phase}"), id=phase)


@pytest.mark.parametrize("phase", [_kill_case("CLI", phase) for phase in rel_run.PHASES])
def test_cli_killed_at_phase(scenario, canary, phase: str) -> None:  # noqa: ANN001
    rel_scenario.set_probe(scenario.tree, phase == "observation")
    try:
        tree_before, status_before = tree_hash(scenario.tree, content=False), dpkg_status_digest(scenario.tree)
        before = rel_host.HostSnapshot.take(whole_root=False)
        log = scenario.base / f"log-cli-{phase.replace(' ', '-')}"
        argv = rel_run.cli_argv(scenario.tree, log, scenario.cache, "install", "rel-slow")
        outcome = rel_run.run_and_kill(argv, phase, log=log)
        assert (
            outcome.killed_at == phase
        ), f"the kill missed {phase}: exit {outcome.returncode}\n{outcome.output[-2000:]}"
        assert outcome.returncode == -9
        _check_nothing_left(scenario, canary, before, outcome, tree_before, status_before)
    finally:
        rel_scenario.set_probe(scenario.tree, False)


@pytest.mark.parametrize("phase", [_kill_case("hook (apt waiting)", phase) for phase in rel_run.PHASES])
@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_hook_killed_while_apt_waits(scenario, canary, phase: str, on_error: str) -> None:  # noqa: ANN001
    """apt stops before dpkg and names the reason, whatever On-Error says:
    a killed hook cannot vouch for anything, so the safe side is the only side."""
    rel_scenario.set_probe(scenario.tree, phase == "observation")
    try:
        marker = scenario.base / "dpkg-ran"
        marker.unlink(missing_ok=True)
        status_before = dpkg_status_digest(scenario.tree)
        # apt itself (not the hook) downloads into the tree's archives and
        # writes its caches there: the tree is judged without apt's own dirs.
        tree_skip = tuple(f"{scenario.tree}/{d}" for d in ("var/cache/apt", "var/lib/apt", "var/log/apt"))
        tree_before = rel_host.root_state(str(scenario.tree), tree_skip, host=False)
        before = rel_host.HostSnapshot.take(whole_root=False)
        slug = f"{phase.replace(' ', '-')}-{on_error}"
        log, cache = scenario.base / f"log-hook-{slug}", scenario.base / f"cache-hook-{slug}"
        argv = rel_run.apt_argv(scenario.tree, scenario.base, log, cache, "install", "rel-hook", on_error=on_error)
        outcome = rel_run.run_and_kill(argv, phase, hook=True, log=log)
        assert (
            outcome.killed_at == phase
        ), f"the kill missed {phase}: exit {outcome.returncode}\n{outcome.output[-2000:]}"
        assert outcome.returncode != 0, outcome.output[-2000:]
        assert (
            "apt-rehearse-hook" in outcome.output or "signal 9" in outcome.output or "error code" in outcome.output
        ), outcome.output[-2000:]
        assert not marker.exists(), "apt went on to dpkg after the hook was killed"
        _check_nothing_left(scenario, canary, before, outcome, None, status_before)
        tree_after = rel_host.root_state(str(scenario.tree), tree_skip, host=False)
        changed = sorted(p for p in set(tree_before) | set(tree_after) if tree_before.get(p) != tree_after.get(p))
        assert not changed, changed[:20]
    finally:
        rel_scenario.set_probe(scenario.tree, False)
