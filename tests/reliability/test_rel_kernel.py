"""Confinement: a hostile package's postinst and service, rehearsed by the CLI
(passing, blocking, killed) and by the hook, never change the host kernel.

Each row is one kind of global state; each try is one rehearsal. A row holds
when no attempt inside got through (the call's own answer, read from the
replay's log) and the host's side of it is unchanged (read outside).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import rel_kernel
import rel_run

from apt_rehearse.sandbox import confine

ROWS = {
    "kernel: sysctl (kernel.*, vm.*, fs.*; sysctl.d at boot)": (
        ("sysctl-vm", "sysctl-kernel", "sysctl-fs", "proc-sys-write"),
        "sysctl",
    ),
    "kernel: binfmt_misc registration": (("binfmt",), "binfmt"),
    "kernel: clock": (("clock",), "clock"),
    "kernel: swap": (("swapon",), "swap"),
    "kernel: modules": (("modprobe", "init-module", "finit-module"), "modules"),
    "kernel: kexec": (("kexec-load", "kexec-file-load"), "kexec"),
    "kernel: block device (mknod, write)": (("mknod-dev", "mknod-disk"), "devices"),
    "kernel: debugfs, tracefs": (("debugfs", "tracefs"), None),
    "kernel: sysrq": (("sysrq",), None),
    "kernel: keyrings, BPF, perf": (("keyring", "bpf", "perf"), None),
}
SCENARIOS = ("CLI passing", "CLI blocking", "CLI killed", "hook passing", "hook blocking", "hook killed")


@pytest.fixture(scope="module")
def hostile(sandbox_capable: None):  # noqa: ANN201
    setup = rel_kernel.make(rel_kernel.scratch("rel-kernel-"))
    try:
        yield setup
    finally:
        setup.stop()
        subprocess.run(["rm", "-rf", str(setup.base)], check=False)


@pytest.fixture(scope="module")
def outcomes(hostile: rel_kernel.Hostile) -> dict[str, dict]:
    """Each scenario once: what it tried inside, what changed outside."""
    results = {}
    for name in SCENARIOS:
        log = hostile.base / f"log-{name.replace(' ', '-')}"
        cache = hostile.base / f"cache-{name.replace(' ', '-')}"  # no verdict of another scenario reused
        hostile.restore()
        before = hostile.state()
        blocking, killed = name.endswith("blocking"), name.endswith("killed")
        request = ("install", "rh-hostile-strict") if blocking else ("install", "rh-hostile")
        options = ("-o", "APT::Rehearse::Policy::Needs-Kernel=block") if blocking else ()
        if name.startswith("hook"):
            argv = rel_run.apt_argv(hostile.tree, hostile.base, log, cache, *options, *request)
            outcome = rel_run.run_and_kill(argv, "replay" if killed else None, hook=True)
        else:
            argv = rel_run.cli_argv(hostile.tree, log, cache, *options, "--json", *request)
            outcome = rel_run.run_and_kill(argv, "replay" if killed else None, log=log)
        after = hostile.state()
        results[name] = {
            "outcome": outcome,
            "tried": rel_kernel.attempts(rel_kernel.replay_logs(log)),
            "changed": rel_kernel.differences(hostile, before, after),
            "log": log,
        }
        hostile.restore()
    return results


def _cases():  # noqa: ANN202
    for row in ROWS:
        for scenario in SCENARIOS:
            yield pytest.param(row, scenario, marks=pytest.mark.case(row), id=f"{row.split(':')[1].strip()}-{scenario}")


@pytest.mark.parametrize(("row", "scenario"), list(_cases()))
def test_the_host_kernel_is_untouched(outcomes: dict[str, dict], row: str, scenario: str) -> None:
    names, outside = ROWS[row]
    result = outcomes[scenario]
    outcome = result["outcome"]
    if scenario == "CLI passing":
        assert outcome.returncode == 0, outcome.output[-3000:]
    elif scenario == "CLI blocking":
        assert outcome.returncode == 10, outcome.output[-3000:]
    elif scenario.endswith("killed"):
        assert outcome.killed_at == "replay", outcome.output[-3000:]
    elif scenario == "hook passing":  # the hook lets apt go on, to the tests' dpkg that refuses
        assert "verdict PASS" in outcome.output and "fake dpkg: refusing" in outcome.output, outcome.output[-3000:]
    else:  # the hook stops apt before dpkg runs
        assert "verdict BLOCK" in outcome.output and "fake dpkg: refusing" not in outcome.output, outcome.output[-3000:]
    assert "Traceback" not in outcome.output, outcome.output[-3000:]
    if scenario.endswith("killed") and outside is None:
        pytest.skip(f"{row}: checked inside only, and a killed run leaves no log")
    tried = [t for t in result["tried"] if t[1] in names]
    if not scenario.endswith("killed"):  # a killed run leaves no report: judged outside only
        places = {where for where, *_ in tried}
        assert {"postinst", "service"} <= places, (places, outcome.output[-2000:])
    through = [t for t in tried if t[2] == "ok"]
    assert not through, f"got through inside the sandbox: {through}"
    if outside:
        assert not result["changed"].get(outside), result["changed"][outside]
    if tried and all(t[2] == "n/a" for t in tried):
        pytest.skip(f"{row}: not on this machine ({tried[0][3]})")


@pytest.mark.case("kernel: refusals are the sandbox's limit (Needs-Kernel), not the package's fault")
def test_a_script_failing_on_the_confinement_is_not_blamed(outcomes: dict[str, dict]) -> None:
    outcome = outcomes["CLI blocking"]["outcome"]
    report = json.loads(outcome.stdout)
    kinds = {kind for finding in report["findings"] for kind in finding["kinds"]}
    by_subject = {f["subject"]: f for f in report["findings"] if f["check"] == "script-failure"}
    assert "rh-hostile-strict" in by_subject, report["findings"]
    assert "Script-Failure" not in kinds and "Broken-State" not in kinds, report["findings"]
    assert by_subject["rh-hostile-strict"]["kinds"] == ["Needs-Kernel"], by_subject["rh-hostile-strict"]
    assert "which the sandbox refuses" in by_subject["rh-hostile-strict"]["message"]
    # Without the policy override the same rehearsal only warns.
    passing = json.loads(outcomes["CLI passing"]["outcome"].stdout)
    assert passing["verdict"] == "pass", passing["findings"]
    # The confinement itself is no finding: not the time daemon the tree
    # has (systemd-timesyncd), not systemd-sysctl, not a service.
    assert all(f["severity"] == "info" for f in passing["findings"]), passing["findings"]
    assert not [f for f in passing["findings"] if "timesyncd" in f["subject"] or "sysctl" in f["subject"]]


@pytest.mark.case("kernel: the sandbox runs confined (CapBnd, Seccomp, /proc/sys)")
def test_what_runs_inside_is_confined(hostile: rel_kernel.Hostile) -> None:
    log = hostile.base / "log-status"
    probe = hostile.tree / "etc/apt-rehearse/probes.d/rel-status.probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    command = (
        'sh -c \'grep -E "^(CapBnd|Seccomp):" /proc/1/status /proc/self/status | tr "\\n" " "; '
        'echo PROCSYS=$(grep -c " /proc/sys proc ro," /proc/self/mounts)\''
    )
    probe.write_text(f"Name: rel-status\nType: command\nCommand: {command}\nExpect-Output: NEVER-PRINTED\n")
    try:
        proc = subprocess.run(
            rel_run.cli_argv(hostile.tree, log, hostile.base / "cache", "--json", "install", "rh-hostile"),
            capture_output=True,
            text=True,
            env=rel_run.environment(),
            timeout=900,
            check=False,
        )
    finally:
        probe.unlink()
    text = json.dumps(json.loads(proc.stdout))
    # nspawn's set less what this host's own bounding set lacks (this VM has no CAP_SYS_RESOURCE).
    host = int(confine.status_of()["CapBnd"], 16)
    bounding = f"{confine.KEPT_MASK & host:016x}"
    # PID 1 (the booted systemd) and the probe's own shell: the same bounding set, filter mode 2.
    assert text.count(f"CapBnd:\\t{bounding}") >= 2, text[-3000:]
    assert text.count("Seccomp:\\t2") >= 2, text[-3000:]
    assert "PROCSYS=1" in text, text[-3000:]  # /proc/sys read-only
