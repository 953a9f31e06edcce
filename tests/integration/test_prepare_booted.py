"""Zero-wait verdicts on a machine booted with systemd (issue #17): the
real apt-rehearse-prepare.service, started by systemd and by apt update,
and apt runs that take its verdicts; the rehearsals nest under a systemd
host (cgroup v2, a delegated scope), as on a real Debian server.

rh-b-good and rh-b-bad are installed at 1.0; 2.0 of both is pending, and
rh-b-bad 2.0's postinst fails. unattended-upgrades may take rh-b-good only.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from lib.booted import BootedMachine
from lib.localrepo import LocalRepo, build_deb
from lib.machine import install_machine, pending_pair
from lib.trees import bookworm_tree, build_package

pytestmark = pytest.mark.integration

STATUS = "var/cache/apt-rehearse/status.json"
SCOPE_WEIGHTS = (
    "for unit in $(systemctl list-units --type=scope --no-legend --plain 'apt-rehearse-*' | cut -d' ' -f1); do "
    'systemctl show -p CPUWeight -p IOWeight "$unit"; done'
)


@pytest.fixture(scope="module")
def booted(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-booted-", dir="/var/tmp"))
    try:
        deb = build_package()
        tree = bookworm_tree(base / "tree", variant="frontends")
        debs = base / "debs"
        v1, v2 = pending_pair(tree, debs, "rh-b")
        install_machine(tree, deb, v1 + v2, v1)
        # apt's own timers stay still: the test starts what it tests. logind cannot run in this machine, and
        # apt asks it for an inhibitor lock before dpkg runs: masked, the ask fails at once instead of after
        # D-Bus's 25 s activation timeout.
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-logind.service"):
            (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")
        with BootedMachine(tree, "prepare") as machine:
            yield {"machine": machine, "tree": tree, "debs": debs}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _reports(tree: Path) -> set[str]:
    return {p.name for p in (tree / "var/log/apt-rehearse").glob("2*.json")}


def _written(tree: Path) -> float:
    try:
        return float(json.loads((tree / STATUS).read_text())["written"])
    except (OSError, ValueError, KeyError):
        return 0.0


def test_the_prepare_service_runs_and_the_real_runs_take_its_verdicts(booted: dict) -> None:
    machine, tree = booted["machine"], booted["tree"]
    proc = machine.run(
        "systemctl start apt-rehearse-prepare.service; systemctl show -p Result apt-rehearse-prepare.service"
    )
    # A pending upgrade that blocks (exit 10) is a verdict, not a failure of the service.
    why = machine.run("journalctl -u apt-rehearse-prepare --no-pager | tail -30; cat /" + STATUS).stdout
    assert "Result=success" in proc.stdout, proc.stdout + why
    rows = {row["request"]: row for row in json.loads((tree / STATUS).read_text())["requests"]}
    assert (rows["dist-upgrade"]["verdict"], rows["dist-upgrade"]["reused"], rows["gate"]["verdict"]) == (
        "block",
        True,
        "pass",
    ), why
    motd = machine.run("run-parts /etc/update-motd.d").stdout
    assert "apt-rehearse: 2 updates pending, rehearsed " in motd and ": BLOCK: 1 problem(s)" in motd, motd
    before = _reports(tree)
    for frontend in ("apt-get -y dist-upgrade", "apt-get -y upgrade"):
        run = machine.run(frontend)
        assert run.returncode != 0 and "already rehearsed (an earlier rehearsal): BLOCK" in run.stderr, run.stderr
        # apt's wait for the verdict (the hook's own time, once Python has started): issue 17's goal is 0.5 s.
        assert float(re.search(r"answered in ([\d.]+) s", run.stderr).group(1)) < 0.5, run.stderr
    run = machine.run("unattended-upgrade -v")
    assert "already rehearsed (an earlier rehearsal): PASS" in run.stdout + run.stderr, run.stdout[-3000:]
    assert _reports(tree) == before  # no second rehearsal
    versions = machine.run("dpkg-query -W -f='${Package} ${Version}\\n' rh-b-good rh-b-bad").stdout.split("\n")
    assert "rh-b-good 2.0" in versions and "rh-b-bad 1.0" in versions


def test_apt_update_starts_the_prepare_without_making_apt_wait(booted: dict) -> None:
    machine, tree = booted["machine"], booted["tree"]
    repo = LocalRepo(tree / "srv/rh-repo")
    repo.add(build_deb(booted["debs"], "rh-b-good", "3.0", files={"/usr/share/rh-b-good/v": "3\n"}))
    repo.publish()
    earlier = _written(tree)
    update = machine.run("apt-get update -q")
    returned = time.time()
    assert update.returncode == 0, update.stderr
    deadline = time.monotonic() + 300
    weights = set()
    while _written(tree) <= earlier and time.monotonic() < deadline:
        # The sandbox's own scope, while the prepare rehearses: the service's weights go with it.
        weights.update(machine.run(SCOPE_WEIGHTS, timeout=30).stdout.split())
        time.sleep(0.1)
    written = _written(tree)
    assert {"CPUWeight=idle", "IOWeight=20"} <= weights, weights
    assert written > earlier, machine.run("journalctl -u apt-rehearse-prepare --no-pager | tail -20").stdout
    assert written > returned  # apt had returned before the prepare was done
    before = _reports(tree)
    # unattended-upgrades' set (rh-b-good 3.0 alone) was prepared: the same transaction, its verdict ready.
    run = machine.run("apt-get -y install rh-b-good")
    assert run.returncode == 0 and "already rehearsed (an earlier rehearsal): PASS" in run.stderr, run.stderr
    assert _reports(tree) == before


def _rehearsing(tree: Path, who: str) -> bool:
    from apt_rehearse.store import inflight

    cache = tree / "var/cache/apt-rehearse"
    names = [p.name for p in (cache / "inflight").glob("*")] if (cache / "inflight").is_dir() else []
    return any((inflight.holder_of(str(cache), name) or {}).get("who") == who for name in names if name != "prepare")


POLICY = "chrt -p $(systemctl show -p MainPID --value apt-rehearse-prepare.service)"


def test_the_hook_that_waits_for_the_prepare_raises_it_to_normal_priority(booted: dict) -> None:
    """The unit runs the prepare at SCHED_IDLE (it takes only what the host's
    services leave); apt's hook, joining its rehearsal, lifts it: apt does not
    wait for as long as the host is busy."""
    machine, tree = booted["machine"], booted["tree"]
    repo = LocalRepo(tree / "srv/rh-repo")
    repo.add(build_deb(booted["debs"], "rh-b-good", "4.0", files={"/usr/share/rh-b-good/v": "4\n"}))
    repo.publish()
    assert machine.run("apt-get update -q").returncode == 0  # which starts the prepare
    deadline = time.monotonic() + 300
    while not _rehearsing(tree, "apt-rehearse upgrade") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _rehearsing(tree, "apt-rehearse upgrade"), machine.run("journalctl -u apt-rehearse-prepare").stdout[-2000:]
    assert "SCHED_IDLE" in machine.run(POLICY).stdout
    before = _reports(tree)
    run = machine.run("apt-get -y dist-upgrade")
    assert "being rehearsed already by apt-rehearse upgrade" in run.stderr, run.stderr
    assert "raised to normal priority" in run.stderr, run.stderr
    assert run.returncode != 0 and "already rehearsed (an earlier rehearsal): BLOCK" in run.stderr, run.stderr
    assert len(_reports(tree) - before) <= 2  # the prepare's (upgrade, gate), none of the hook's
    machine.run("systemctl start apt-rehearse-prepare.service")  # what is left of it: done before the next
