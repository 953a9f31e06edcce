"""observe.units and observe.sockets on what a booted rehearsal really showed.

tests/unit/data/booted-lamp/ was captured inside `apt-rehearse shell` on the
bookworm LAMP test tree (capture.sh says how): apache2, mariadb, exim4 and
ssh as the tree runs them, plus a unit that fails to start (rh-broken) and a
perl listener (rh-listen) with TCP and UDP sockets on IPv4 and IPv6, one
end-to-end TCP connection and one connected UDP socket, which are not
listening. (systemctl-show.txt and is-system-running-wait.txt come from a
later run of the same script, after observe.units moved from list-units to
show.) The fixtures are the exact output of observe.units' command and the
files observe.sockets reads (/proc/net/*, each process's cgroup and fd links).
"""

from __future__ import annotations

import builtins
import glob
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from apt_rehearse.inside import observe

DATA = Path(__file__).parent / "data" / "booted-lamp"

UNITS_COMMAND = ["systemctl", "show", "--all", "--property=Id,LoadState,ActiveState,SubState", "*.service", "*.socket"]


def test_units_runs_systemctl_and_reads_every_unit() -> None:
    output = (DATA / "systemctl-show.txt").read_text()
    calls: list[list[str]] = []

    def run_command(argv: list[str], timeout: float = 600) -> tuple[int, str]:
        calls.append(argv)
        return 0, output

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(observe, "run_command", run_command)
        units = observe.units()
    assert calls == [UNITS_COMMAND]
    assert len(units) == 78  # the fixture's 78 blocks: 68 services, 10 sockets
    assert sum(name.endswith(".service") for name in units) == 68
    assert units["rh-broken.service"] == {"load": "loaded", "active": "failed", "sub": "failed"}
    assert [name for name, unit in units.items() if unit["active"] == "failed"] == ["rh-broken.service"]
    assert units["apache2.service"] == {"load": "loaded", "active": "active", "sub": "running"}
    assert units["mariadb.service"] == {"load": "loaded", "active": "active", "sub": "running"}
    assert units["systemd-journal-flush.service"] == {"load": "loaded", "active": "active", "sub": "exited"}
    # Two-word load states and units systemd only knows by a reference.
    assert units["auditd.service"] == {"load": "not-found", "active": "inactive", "sub": "dead"}
    assert units["cron.service"] == {"load": "masked", "active": "inactive", "sub": "dead"}
    # Sockets, listening or not; the description (words with spaces) is not a state.
    assert units["uuidd.socket"] == {"load": "loaded", "active": "active", "sub": "listening"}
    assert units["dbus.socket"] == {"load": "loaded", "active": "active", "sub": "running"}
    assert units["syslog.socket"] == {"load": "loaded", "active": "inactive", "sub": "dead"}
    assert {"getty@tty1.service", "modprobe@drm.service"} <= set(units)  # instances keep their names


def test_units_of_a_system_without_systemctl_is_nothing() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            observe, "run_command", lambda argv, timeout=600: (127, "systemctl: not found in the rehearsed system")
        )
        assert observe.units() == {}


def test_journal_of_the_failed_unit() -> None:
    output = (DATA / "journal-rh-broken.txt").read_text()
    calls: list[list[str]] = []

    def run_command(argv: list[str], timeout: float = 600) -> tuple[int, str]:
        calls.append(argv)
        return 0, output

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(observe, "run_command", run_command)
        lines = observe.journal("rh-broken.service")
    assert calls == [["journalctl", "--no-pager", "-o", "cat", "-n", "15", "-u", "rh-broken.service"]]
    assert "rh-broken: cannot open /etc/rh-broken.conf" in lines
    assert lines[-1] == "rh-broken.service: Failed with result 'exit-code'."


def _processes() -> dict[str, dict[str, Any]]:
    """proc-fds.txt: "pid PID COMM", "cgroup " and the file's lines, "fd N LINK"."""
    processes: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in (DATA / "proc-fds.txt").read_text().splitlines():
        if line.startswith("pid "):
            current = processes.setdefault(line.split()[1], {"cgroup": [], "fds": {}})
        elif line.startswith("fd "):
            _, number, link = line.split(" ", 2)
            current["fds"][number] = link
        else:
            current["cgroup"].append(line.removeprefix("cgroup "))
    return processes


@pytest.fixture
def booted_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The captured /proc rebuilt under tmp_path; observe reads it for /proc."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    for name in ("tcp", "tcp6", "udp", "udp6"):
        (proc / "net" / name).write_text((DATA / f"proc-net-{name}.txt").read_text())
    for pid, process in _processes().items():
        (proc / pid / "fd").mkdir(parents=True)
        (proc / pid / "cgroup").write_text("\n".join(process["cgroup"]) + "\n")
        for number, link in process["fds"].items():
            os.symlink(link, proc / pid / "fd" / number)

    def inside(path: str) -> str:
        return str(proc) + path[len("/proc") :] if path == "/proc" or path.startswith("/proc/") else path

    def outside(path: str) -> str:
        return "/proc" + path[len(str(proc)) :]

    class OsInTheCapture:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def listdir(path: str) -> list[str]:
            return os.listdir(inside(path))

        @staticmethod
        def readlink(path: str) -> str:
            return os.readlink(inside(path))

    monkeypatch.setattr(
        observe, "open", lambda path, *args, **kwargs: builtins.open(inside(path), *args, **kwargs), raising=False
    )
    monkeypatch.setattr(
        observe, "glob", SimpleNamespace(glob=lambda pattern: [outside(p) for p in glob.glob(inside(pattern))])
    )
    monkeypatch.setattr(observe, "os", OsInTheCapture())
    return proc


def test_socket_owners_are_the_units_of_the_processes_holding_them(booted_proc: Path) -> None:
    owners = observe._socket_inodes()
    # From proc-fds.txt: rh-listen (pid 455) holds 716986 (tcp 8099), 716989
    # (udp 5399); sshd 716444 (tcp 22); the apache2 processes 715692 (tcp6 80).
    assert owners["716986"] == owners["716989"] == "rh-listen.service"
    assert owners["716444"] == "ssh.service"
    assert owners["715692"] == "apache2.service"
    assert owners["715729"] == "mariadb.service"
    # The last line of a hybrid (cgroup v1 + v2) cgroup file names the unit.
    assert "" not in set(owners.values()) and "init.scope" in set(owners.values())
    assert all(not inode.startswith("socket:") for inode in owners)


def test_sockets_lists_what_listens_with_its_unit(booted_proc: Path) -> None:
    found = observe.sockets()
    assert found == [
        {"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 22, "unit": "ssh.service"},
        {"proto": "tcp", "family": 6, "address": "::", "port": 22, "unit": "ssh.service"},
        {"proto": "tcp", "family": 4, "address": "127.0.0.1", "port": 25, "unit": "exim4.service"},
        {"proto": "tcp", "family": 6, "address": "::1", "port": 25, "unit": "exim4.service"},
        {"proto": "tcp", "family": 6, "address": "::", "port": 80, "unit": "apache2.service"},
        {"proto": "tcp", "family": 4, "address": "127.0.0.1", "port": 3306, "unit": "mariadb.service"},
        {"proto": "tcp", "family": 6, "address": "::1", "port": 8098, "unit": "rh-listen.service"},
        {"proto": "tcp", "family": 4, "address": "0.0.0.0", "port": 8099, "unit": "rh-listen.service"},
        {"proto": "udp", "family": 6, "address": "::", "port": 5398, "unit": "rh-listen.service"},
        {"proto": "udp", "family": 4, "address": "0.0.0.0", "port": 5399, "unit": "rh-listen.service"},
    ]
    # Not listening, so not there: both ends of the TCP connection to 8099
    # (ESTABLISHED), the connections in TIME_WAIT, the connected UDP socket.
    ports = {s["port"] for s in found}
    assert not ports & {0xE20A, 0x86E0, 0xDFB4, 0xD788}


def test_sockets_without_a_proc_net_file_are_the_others(booted_proc: Path) -> None:
    (booted_proc / "net" / "udp6").unlink()  # a kernel without IPv6
    (booted_proc / "net" / "tcp6").unlink()
    found = observe.sockets()
    assert [(s["proto"], s["port"]) for s in found] == [
        ("tcp", 22),
        ("tcp", 25),
        ("tcp", 3306),
        ("tcp", 8099),
        ("udp", 5399),
    ]
    assert {s["family"] for s in found} == {4}


def _scripted(answers: list[tuple[int, str]], calls: list[list[str]]) -> Any:
    def run_command(argv: list[str], timeout: float = 600) -> tuple[int, str]:
        calls.append(argv)
        return answers.pop(0) if answers else (0, "")

    return run_command


def test_settle_lets_systemd_wait_and_asks_again_while_it_has_no_bus() -> None:
    waited = (DATA / "is-system-running-wait.txt").read_text().splitlines()
    answer, status = "\n".join(waited[:-1]) + "\n", int(waited[-1])
    assert (answer, status) == ("degraded\n", 1)  # what the booted LAMP tree said: rh-broken failed
    calls: list[list[str]] = []
    no_bus = (1, "Failed to connect to bus: No such file or directory\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(observe, "run_command", _scripted([no_bus, (status, answer), (0, "")], calls))
        patch.setattr(observe.time, "sleep", lambda seconds: None)
        settled = observe.settle(60)
    assert settled["state"] == "degraded" and settled["jobs"] == []
    wait = ["systemctl", "is-system-running", "--wait"]
    assert calls == [wait, wait, ["systemctl", "list-jobs", "--no-legend", "--no-pager"]]


def test_settle_that_times_out_names_the_state_the_boot_is_in() -> None:
    calls: list[list[str]] = []
    job = "42 apache2.service start running"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            observe, "run_command", _scripted([(124, "\n(timed out)"), (1, "starting\n"), (0, job + "\n")], calls)
        )
        settled = observe.settle(5)
    assert settled["state"] == "starting" and settled["jobs"] == [job]
    assert calls[1] == ["systemctl", "is-system-running"]


def test_named_checkconf_runs_where_bind9_utils_ships_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # bookworm's and trixie's bind9-utils: /usr/bin/named-checkconf (corpus, bind9); before, the
    # test looked in /usr/sbin only and never ran.
    monkeypatch.setattr(observe.os.path, "exists", lambda path: path == "/usr/bin/named-checkconf")
    ran = []

    def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
        ran.append(argv)
        return 1, "/etc/bind/named.conf.local:4: option 'auto-dnssec' no longer exists\n"

    monkeypatch.setattr(observe, "run_command", run_command)
    assert ran == [] and observe.config_tests() == {
        "named-checkconf": {
            "exit_status": 1,
            "output": ["/etc/bind/named.conf.local:4: option 'auto-dnssec' no longer exists"],
        }
    }
    assert ran == [["named-checkconf"]]
