"""Services: the rehearsed system boots its own systemd, and what breaks shows.

Small real packages ship real systemd services (python3's http.server);
version 2.0 of each breaks its service in one way. The bookworm tree boots
inside the sandbox, the upgrade runs with the services live, then the tree
boots again (a reboot into the upgraded system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import assert_host_clean, cli_command, host_snapshot, run_json, run_on_terminal
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, build_package, dpkg_status_digest, install_into, tree_hash

pytestmark = pytest.mark.integration

POSTINST = """\
if [ "$1" = configure ]; then
    systemctl enable {name}.service >/dev/null 2>&1 || true
    deb-systemd-invoke restart {name}.service >/dev/null 2>&1 || true
fi
"""


def service_package(debs: Path, name: str, version: str, exec_start: str, files: dict[str, str] | None = None) -> Path:
    unit = (
        f"[Unit]\nDescription={name} test service\n\n[Service]\nExecStart={exec_start}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    content = {f"/lib/systemd/system/{name}.service": unit, **(files or {})}
    return build_deb(debs, name, version, files=content, postinst=POSTINST.format(name=name))


def http_server(port: int, directory: str) -> str:
    return f"/usr/bin/python3 -m http.server {port} --bind 127.0.0.1 --directory {directory}"


@pytest.fixture(scope="module")
def services_tree(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-svc-", dir="/var/tmp"))
    try:
        tree = bookworm_tree(base / "tree", variant="frontends")
        debs = base / "debs"
        web = "/usr/share/rh-web"
        v1 = [
            service_package(
                debs, "rh-web", "1.0", http_server(8080, web), {f"{web}/index.html": "<h1>version one</h1>\n"}
            ),
            service_package(
                debs, "rh-port", "1.0", http_server(8081, "/usr/share/rh-port"), {"/usr/share/rh-port/x": "x\n"}
            ),
            service_package(
                debs, "rh-crash", "1.0", http_server(8083, "/usr/share/rh-crash"), {"/usr/share/rh-crash/x": "x\n"}
            ),
            build_deb(debs, "rh-quiet", "1.0", files={"/usr/share/rh-quiet/v": "1\n"}),
        ]
        v2 = [
            service_package(
                debs, "rh-web", "2.0", http_server(8080, web), {f"{web}/index.html": "<h1>version two</h1>\n"}
            ),
            service_package(
                debs, "rh-port", "2.0", http_server(8082, "/usr/share/rh-port"), {"/usr/share/rh-port/x": "x\n"}
            ),
            service_package(
                debs,
                "rh-crash",
                "2.0",
                "/bin/sh -c 'echo \"rh-crash: cannot read /etc/rh-crash.conf\" >&2; exit 1'",
                {"/usr/share/rh-crash/x": "x\n"},
            ),
            build_deb(debs, "rh-quiet", "2.0", files={"/usr/share/rh-quiet/v": "2\n"}),
        ]
        install_into(tree, [*v1, build_package()])  # apt-rehearse itself, for the nested test
        probes = tree / "etc/apt-rehearse/probes.d"
        probes.mkdir(parents=True)
        (probes / "web.probe").write_text(
            "Name: web-version\nType: http\nURL: http://127.0.0.1:8080/\n"
            "Expect-Status: 200\nExpect-Body: version one\n"
        )
        repo = LocalRepo(base / "repo")
        for deb in v1 + v2:
            repo.add(deb)
        repo.publish()
        serve_to_tree(tree, repo)
        yield {"tree": tree, "base": base, "hash": tree_hash(tree), "status": dpkg_status_digest(tree)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def rehearse(tree_info: dict, *args: str):
    return run_json("--root", str(tree_info["tree"]), "-o", f"APT::Rehearse::Log-Dir={tree_info['base']}/log", *args)


def findings(document: dict, check: str) -> list[dict]:
    return [f for f in document["findings"] if f["check"] == check]


def test_service_that_fails_to_start_blocks(services_tree: dict) -> None:
    proc, document = rehearse(services_tree, "install", "rh-crash")
    assert proc.returncode == 10, (proc.stderr, document["findings"])
    assert document["services"]["baseline"]["active_services"] > 5
    assert "tcp/8083" in document["services"]["baseline"]["listening"]
    [finding] = [f for f in findings(document, "service") if f["subject"] == "rh-crash.service"]
    assert finding["severity"] == "block"
    assert "was active before" in finding["message"] and "failed" in finding["message"]
    assert any("cannot read /etc/rh-crash.conf" in line for line in finding["details"]["journal"])


def test_service_on_another_port_is_a_lost_socket(services_tree: dict) -> None:
    proc, document = rehearse(services_tree, "install", "rh-port")
    assert proc.returncode == 10, (proc.stderr, document["findings"])
    [finding] = findings(document, "socket")
    assert finding["details"]["before"]["port"] == 8081
    assert finding["details"]["now_listening"] == [8082]
    assert "TCP port 8081 (rh-port.service) no longer listens after the upgrade" in finding["message"]
    assert not findings(document, "service")


def test_changed_page_is_reported_and_the_probe_fails(services_tree: dict) -> None:
    proc, document = rehearse(services_tree, "install", "rh-web")
    assert proc.returncode == 10, (proc.stderr, document["findings"])
    [finding] = findings(document, "http")
    assert finding["subject"] == "http://localhost:8080/"
    assert finding["severity"] == "warn"
    assert "version one" in finding["details"]["before"]["snippet"]
    assert "version two" in finding["details"]["after"]["snippet"]
    [probe] = findings(document, "probe")  # the sysadmin's own probe of /etc/apt-rehearse/probes.d
    assert probe["subject"] == "web-version" and probe["severity"] == "block"


def _rehearsal_cgroups() -> set[str]:
    top = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    return {name for name in os.listdir(top) if name.startswith("apt-rehearse-")}


def test_no_false_alarm_and_nothing_left(services_tree: dict) -> None:
    before = host_snapshot()
    cgroups_before = _rehearsal_cgroups()  # another run's, on a shared machine
    proc, document = rehearse(services_tree, "install", "rh-quiet")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert document["verdict"] == "pass", document["findings"]
    services = document["services"]
    assert services["boot"]["state"] in ("running", "degraded")
    assert services["reboot"]["state"] in ("running", "degraded")
    assert services["baseline"]["listening"] == services["upgraded"]["listening"] == services["rebooted"]["listening"]
    assert_host_clean(before)
    assert not _rehearsal_cgroups() - cgroups_before
    assert tree_hash(services_tree["tree"]) == services_tree["hash"]
    assert dpkg_status_digest(services_tree["tree"]) == services_tree["status"]


# Busy for 4 s (as a JVM deploying its applications is), then listening: systemd calls it started at once
# (%% is systemd's own: %s alone would be the shell).
SLOW_START = (
    "/bin/sh -c 'end=$(($(date +%%s) + 4)); while [ $(date +%%s) -lt $end ]; do :; done; "
    "exec /usr/bin/python3 -m http.server 8084 --bind 127.0.0.1 --directory /usr/share/rh-slow'"
)


def test_a_service_that_answers_late_is_waited_for(services_tree: dict, tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(services_tree["tree"]), str(copy)], check=True)
    debs = tmp_path / "debs"
    page = {"/usr/share/rh-slow/index.html": "slow but there\n"}
    v1, v2 = (service_package(debs, "rh-slow", version, SLOW_START, page) for version in ("1.0", "2.0"))
    install_into(copy, [v1])
    repo = LocalRepo(tmp_path / "repo")
    repo.add(v2)
    repo.publish()
    serve_to_tree(copy, repo)
    (copy / "etc/apt-rehearse/probes.d/slow.probe").write_text(
        "Name: slow-page\nType: http\nURL: http://127.0.0.1:8084/\nExpect-Body: slow but there\n"
    )

    def rehearse_copy(*options: str) -> dict:
        proc, document = run_json("--root", str(copy), "-o", f"APT::Rehearse::Log-Dir={tmp_path}/log", *options)
        assert proc.returncode == 0, (proc.stderr, document.get("findings"))
        return document

    document = rehearse_copy("install", "rh-slow")
    observations = document["observations"]
    assert document["verdict"] == "pass", document["findings"]
    for phase in ("baseline", "upgraded", "rebooted"):
        assert observations[phase]["probes"]["slow-page"]["ok"], (phase, observations[phase]["probes"])
        assert observations[phase]["ready"]["missing"] == [], (phase, observations[phase]["ready"])
        assert "tcp/8084" in document["services"][phase]["listening"]
    assert observations["baseline"]["ready"]["seconds"] >= 2, observations["baseline"]["ready"]
    assert observations["rebooted"]["ready"]["seconds"] >= 2, observations["rebooted"]["ready"]
    # Observed at once, it had not answered yet: the wait is what saw it.
    document = rehearse_copy("-o", "APT::Rehearse::Ready-Timeout=0", "install", "rh-slow")
    assert not document["observations"]["baseline"]["probes"]["slow-page"]["ok"]
    assert "tcp/8084" not in document["services"]["baseline"]["listening"]


def test_a_system_left_without_init_is_not_rebooted_and_blocks(services_tree: dict, tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(services_tree["tree"]), str(copy)], check=True)
    # A kernel of its own in /boot, as a server booted by its bootloader has. (The tree's sources
    # offer no other init, so apt removes init with systemd-sysv: the sysadmin said so.)
    (copy / "boot/vmlinuz-6.1.0-rh").write_text("kernel\n")
    (copy / "boot/initrd.img-6.1.0-rh").write_text("initrd\n")
    before = tree_hash(copy)
    proc, document = run_json(
        "--root", str(copy), "-o", f"APT::Rehearse::Log-Dir={tmp_path}/log", "remove", "systemd-sysv", "init"
    )
    assert proc.returncode == 10, (proc.stderr, document.get("findings"))
    assert "Traceback" not in proc.stderr
    [finding] = [f for f in findings(document, "boot") if "Boot-Chain" in f["kinds"]]
    assert finding["subject"] == "/sbin/init" and finding["severity"] == "block"
    assert (
        "the next boot finds no init to start, at best the kernel's fallback shell on the console" in finding["message"]
        and "systemd-sysv" in finding["message"]
    )
    assert document["services"]["upgraded"]["active_services"] > 5  # observed after the upgrade, still running
    assert "reboot" not in document["services"] and "rebooted" not in document["services"]
    assert any("was not rebooted: after the run, /sbin/init is gone" in note for note in document["notes"]), document[
        "notes"
    ]
    assert tree_hash(copy) == before


HYBRID_CPU = "/sys/fs/cgroup/cpu"


def test_on_a_hybrid_host_the_cpu_weight_goes_to_cgroup_v1(services_tree: dict) -> None:
    """cgroup v1 controllers beside a cgroup2 tree without cpu (this VM): the
    prepare service's CPU-Weight (idle) becomes cpu.shares and cpu.idle of a v1 cpu cgroup that
    holds the whole sandbox (nice alone is lost to the sessions systemd and
    apt open, each its own autogroup); removed with the sandbox."""
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    if not os.path.isfile(f"{HYBRID_CPU}/cpu.shares") or "cpu" in Path(unified, "cgroup.controllers").read_text():
        pytest.skip("not a hybrid host: the cgroup2 tree has the cpu controller, or there is no cgroup v1 cpu")
    before = {name for name in os.listdir(HYBRID_CPU) if name.startswith("apt-rehearse-")}
    argv = [*cli_command(), "--root", str(services_tree["tree"]), "-o", "APT::Rehearse::CPU-Weight=idle"]
    argv += ["-o", f"APT::Rehearse::Log-Dir={services_tree['base']}/log", "--json", "install", "rh-quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[str, tuple[str, int]] = {}
    idle: dict[str, str] = {}
    commands: set[str] = set()
    in_sandbox_cgroup2: set[str] = set()  # v1 and v2 groups have the same name
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            for name in set(os.listdir(HYBRID_CPU)) - before:
                if name.startswith("apt-rehearse-"):
                    with contextlib.suppress(OSError):
                        shares = Path(HYBRID_CPU, name, "cpu.shares").read_text().strip()
                        tasks = Path(HYBRID_CPU, name, "tasks").read_text().split()
                        seen[name] = (shares, max(len(tasks), seen.get(name, ("", 0))[1]))
                        if os.path.isfile(f"{HYBRID_CPU}/cpu.idle"):
                            idle[name] = Path(HYBRID_CPU, name, "cpu.idle").read_text().strip()
                        for task in tasks:
                            with contextlib.suppress(OSError):
                                comm = Path(f"/proc/{task}/comm").read_text().strip()
                                commands.add(comm)
                                if f"/{name}" in Path(f"/proc/{task}/cgroup").read_text().split("0::", 1)[1]:
                                    in_sandbox_cgroup2.add(comm)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    [(shares, tasks)] = seen.values()
    # Idle: the least there is, and an idle group where the kernel has them
    # (5.15: it gives way to the host's services at once; its shares then
    # read 3, the weight of SCHED_IDLE); the booted services are in it.
    if os.path.isfile(f"{HYBRID_CPU}/cpu.idle"):
        assert set(idle.values()) == {"1"} and shares == "3", (idle, seen)
    else:
        assert shares == "2", seen
    assert tasks > 5, seen
    assert {"systemd", "apt-get"} <= commands, commands  # and the replay's apt, joined from outside
    # The same in the cgroup2 tree: the replay counts against the sandbox's memory limit.
    assert "apt-get" in in_sandbox_cgroup2, in_sandbox_cgroup2
    assert {name for name in os.listdir(HYBRID_CPU) if name.startswith("apt-rehearse-")} == before


def test_no_services_option(services_tree: dict) -> None:
    proc, document = rehearse(services_tree, "-o", "APT::Rehearse::Services=false", "install", "rh-crash")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert document["services"] is None
    assert any("services are not rehearsed" in note for note in document["notes"])


def test_shell_in_the_rehearsed_system(services_tree: dict) -> None:
    before = host_snapshot()
    argv = [
        *cli_command(),
        "--root",
        str(services_tree["tree"]),
        "-o",
        f"APT::Rehearse::Log-Dir={services_tree['base']}/log",
        "shell",
        "install",
        "rh-web",
    ]
    probe = (
        "python3 -c \"import urllib.request; print('PAGE:', urllib.request.urlopen('http://127.0.0.1:8080/').read().decode())\"; "
        "echo RUNNING=$(systemctl is-active rh-web.service); exit\n"
    )
    code, screen = run_on_terminal(argv, [("(rehearsal) ", probe)])
    assert code in (0, 10), screen[-3000:]  # 10: the probe of web.probe blocks this upgrade
    assert "policy stops the real run" in screen
    assert "PAGE: <h1>version two</h1>" in screen
    assert "RUNNING=active" in screen
    assert_host_clean(before)
    assert dpkg_status_digest(services_tree["tree"]) == services_tree["status"]


def test_on_a_systemd_host_the_sandbox_gets_a_delegated_scope(services_tree: dict) -> None:
    """The case of real servers, whose PID 1 is systemd (cgroup v2): apt-rehearse
    runs inside a booted rehearsal (a systemd host), asks that systemd for a
    delegated scope, and boots a nested systemd there."""
    argv = [
        *cli_command(),
        "--root",
        str(services_tree["tree"]),
        "-o",
        f"APT::Rehearse::Log-Dir={services_tree['base']}/log",
        "shell",
        "install",
        "rh-quiet",
    ]
    nested = (
        "apt-rehearse remove rh-crash --json > /root/nested.json; echo NESTED=$?; "
        "python3 -c \"import json; s = json.load(open('/root/nested.json'))['services']; "
        "print('SCOPE', s['cgroup']['systemd_scope'], s['cgroup']['path'], s['boot']['state'], s['baseline']['listening'])\"; "
        "echo LEFT=$(find /sys/fs/cgroup -name 'apt-rehearse-*' | wc -l); exit\n"
    )
    code, screen = run_on_terminal(argv, [("(rehearsal) ", nested)], timeout=600)
    assert code == 0, screen[-3000:]
    assert "NESTED=10" in screen, screen[-3000:]  # rh-crash ships an enabled service: its removal blocks
    lines = [line for line in screen.splitlines() if line.startswith("SCOPE ")]
    assert lines, screen[-3000:]
    line = lines[0]
    assert line.startswith("SCOPE True /sys/fs/cgroup/") and ".scope" in line and "apt-rehearse-" in line, line
    assert "running" in line or "degraded" in line
    assert "tcp/8083" in line  # the nested boot's own rh-crash service listened
    assert "LEFT=0" in screen  # the scope is gone after the nested rehearsal
