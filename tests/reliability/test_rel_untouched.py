"""The host untouched: rehearsals that pass, block, crash and are killed,
against the test tree and against this machine's own /.

Before and after each: the whole root filesystem (metadata with ctime of
every entry, sha256 of the system's state directories), dpkg's status,
apt's lists and archive cache, the mount table, the cgroup tree, /run and
/tmp; processes by descent (rel_reaper); the canary (rel_suite).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rel_host
import rel_run
from lib.trees import dpkg_status_digest, tree_hash

LIMIT = "the rehearsal ran out of room"


def _rehearse(argv: list[str], phase: str | None = None, log: Path | None = None) -> rel_run.Outcome:
    before = rel_host.HostSnapshot.take()
    outcome = rel_run.run_and_kill(argv, phase, log=log)
    after = rel_host.HostSnapshot.take()
    problems = rel_host.differences(before, after, {outcome.target} if outcome.target else set(), ())
    assert not problems, problems[:20]
    assert not outcome.left, f"processes left: {outcome.left}"
    return outcome


TREE_CASES = [
    pytest.param(
        ("install", "rel-clean"), 0, None, id="pass", marks=pytest.mark.case("host untouched: tree, rehearsal passes")
    ),
    pytest.param(
        ("install", "rel-fail"), 10, None, id="block", marks=pytest.mark.case("host untouched: tree, rehearsal blocks")
    ),
    pytest.param(
        ("-o", "APT::Rehearse::Tmpfs-Size=2m", "install", "rel-big"),
        1,
        None,
        id="crash",
        marks=pytest.mark.case("host untouched: tree, rehearsal fails (full upper)"),
    ),
    pytest.param(
        ("install", "rel-slow"),
        -9,
        "replay",
        id="killed",
        marks=pytest.mark.case("host untouched: tree, rehearsal killed"),
    ),
]


@pytest.mark.parametrize(("args", "code", "kill"), TREE_CASES)
def test_tree_rehearsal_leaves_host_and_tree(
    scenario, canary, args: tuple[str, ...], code: int, kill: str | None
) -> None:  # noqa: ANN001
    tree_before, status_before = tree_hash(scenario.tree), dpkg_status_digest(scenario.tree)
    argv = rel_run.cli_argv(scenario.tree, scenario.log, scenario.cache, *args)
    outcome = _rehearse(argv, kill)
    assert outcome.returncode == code, outcome.output[-3000:]
    if code == 1:
        assert outcome.stderr.strip().startswith(f"E: {LIMIT}"), outcome.stderr
        assert "rel-big" not in outcome.stderr  # a limit of the rehearsal, not a verdict on the package
    assert dpkg_status_digest(scenario.tree) == status_before
    assert tree_hash(scenario.tree) == tree_before


HOST_CASES = [
    pytest.param(
        ("install", "hello"), 0, None, id="pass", marks=pytest.mark.case("host untouched: /, rehearsal passes")
    ),
    pytest.param(
        ("--no-services", "-o", "APT::Rehearse::Policy::Remove-Requested=block", "remove", "git"),
        10,
        None,
        id="block",
        marks=pytest.mark.case("host untouched: /, rehearsal blocks"),
    ),
    # hello's .deb (52 KiB) is expected to fit in 400k; dpkg's own database does not.
    pytest.param(
        ("--no-services", "-o", "APT::Rehearse::Tmpfs-Size=400k", "install", "hello"),
        1,
        None,
        id="crash",
        marks=pytest.mark.case("host untouched: /, rehearsal fails (full upper)"),
    ),
    pytest.param(
        ("install", "hello"),
        -9,
        "service boot",
        id="killed",
        marks=pytest.mark.case("host untouched: /, rehearsal killed"),
    ),
]


@pytest.mark.parametrize(("args", "code", "kill"), HOST_CASES)
def test_host_rehearsal_leaves_host(
    scenario, canary, args: tuple[str, ...], code: int, kill: str | None
) -> None:  # noqa: ANN001
    """This machine's own /: its systemd booted in the sandbox (pass, killed)."""
    log = scenario.base / "log-host"
    argv = [
        rel_run.PYTHON,
        "-m",
        "apt_rehearse",
        "-o",
        f"APT::Rehearse::Log-Dir={log}",
        "-o",
        f"APT::Rehearse::Cache-Dir={scenario.base}/cache-host",
        *args,
    ]
    outcome = _rehearse(argv, kill)
    assert outcome.returncode == code, outcome.output[-3000:]
    if kill:
        assert outcome.killed_at == kill


@pytest.mark.case("sandbox cannot reach host daemons (/run, abstract, network)")
def test_sandbox_reaches_nothing(scenario, canary) -> None:  # noqa: ANN001
    """A maintainer script, run with the services live, tries every way out."""
    outcome = rel_run.run_and_kill(
        rel_run.cli_argv(scenario.tree, scenario.log, scenario.cache, "--json", "install", "rel-reach"), None
    )
    assert outcome.returncode == 0, outcome.output[-3000:]
    document = json.loads(outcome.stdout)
    assert document["observations"].get("baseline"), "the services were not booted: the test would prove less"
    log = Path(document["report_path"]).with_suffix(".log").read_text()
    reach = dict(line.split("REACH ", 1)[1].split(": ", 1) for line in log.splitlines() if "REACH " in line)
    assert set(reach) >= {
        "tcp-loopback",
        "tcp-host",
        "tcp-outside",
        "udp-host",
        "unix-run",
        "unix-abstract",
        "interfaces",
    }, log
    for way in ("tcp-loopback", "tcp-host", "tcp-outside", "unix-run", "unix-abstract"):
        assert "CONNECTED" not in reach[way], (way, reach[way])
    assert reach["unix-run"].strip() == "ABSENT"
    assert reach["interfaces"].strip(",").split(",") == ["lo"], reach["interfaces"]
    devices = reach["dev"].strip(",").split(",")
    assert not [
        d for d in devices if d.startswith(("sd", "vd", "nvme", "xvd", "loop", "dm-", "mapper", "mem", "kmsg"))
    ], devices
    assert canary.connections() == []
