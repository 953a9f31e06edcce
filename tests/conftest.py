"""Shared test helpers: run the real CLI, probe kernel features, watch the host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(REPO / "tests"))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cli_command() -> list[str]:
    return ["/usr/bin/python3", "-m", "apt_rehearse"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(SRC)
    environment.pop("APT_REHEARSE", None)
    environment.update(env or {})
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_json(*args: str, **kwargs: Any) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = run_cli(*args, "--json", **kwargs)
    try:
        document = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"not JSON (exit {proc.returncode}):\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        )
    return proc, document


def _probe_sandbox() -> str | None:
    """Do what the sandbox does, in small: None when it works, else why not."""
    if os.geteuid() != 0:
        return "not root"
    script = (
        "set -e; d=$(mktemp -d); mount -t tmpfs tmpfs $d; mkdir $d/l $d/u $d/w $d/m; "
        "mount -t overlay overlay -o lowerdir=$d/l,upperdir=$d/u,workdir=$d/w $d/m; umount $d/m; umount $d; rmdir $d"
    )
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--pid",
            "--net",
            "--ipc",
            "--uts",
            "--fork",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else f"namespaces/overlayfs do not work here: {proc.stderr.strip()}"


@pytest.fixture(scope="session")
def sandbox_capable() -> None:
    why = _probe_sandbox()
    if why:
        if IN_CI:
            pytest.fail(f"CI must be able to run the sandbox: {why}")
        pytest.skip(why)


def overlay_mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line for line in handle if " - overlay " in line]


def _parent(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return None


def _ours(pid: str) -> bool:
    """Started by this test run (a descendant of it), or orphaned (a leak
    reparented to init): not another test run's rehearsal on a shared machine."""
    me = str(os.getpid())
    seen = 0
    parent = _parent(pid)
    if parent in ("0", "1"):
        return True
    while parent and parent not in ("0", "1") and seen < 64:
        if parent == me:
            return True
        parent, seen = _parent(parent), seen + 1
    return False


def host_snapshot() -> dict[str, Any]:
    """What a rehearsal must not leave behind: mounts and our processes."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = sorted(line.split()[4] for line in handle)
    processes = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            words = cmdline.split()
            # What a rehearsal starts runs as "python3 -m apt_rehearse", "apt-rehearse" or the apt hook.
            if "apt_rehearse" in words or any(
                w.endswith(("/apt-rehearse", "/apt-hook")) or w == "apt-rehearse" for w in words
            ):
                if _ours(pid):
                    processes.append(pid)
    return {"mounts": mounts, "processes": sorted(processes)}


def assert_host_clean(before: dict[str, Any]) -> None:
    """No mount added or removed, no process of ours left running."""
    after = host_snapshot()
    assert after["mounts"] == before["mounts"]
    assert not set(after["processes"]) - set(before["processes"]), after["processes"]


def run_on_terminal(
    argv: list[str], answers: list[tuple[str, str]], timeout: float = 300, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a command with a real terminal (a pty as its controlling tty),
    typing each answer once its prompt shows; (exit status, screen)."""
    import fcntl
    import select
    import termios
    import time

    master, slave = os.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    environment = dict(os.environ, PYTHONPATH=str(SRC), TERM="dumb", **(env or {}))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_tty, close_fds=True, env=environment
    )
    os.close(slave)
    seen, pending = "", list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536).decode("utf-8", "replace")
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            for prompt, answer in list(pending):
                if prompt in seen[-400:]:
                    os.write(master, answer.encode())
                    pending.remove((prompt, answer))
                    seen += "\n"  # one answer per appearance
                    break
        elif proc.poll() is not None:
            break
    if proc.poll() is None:  # an unanswered prompt: end what we started
        os.killpg(proc.pid, 9)
    code = proc.wait(timeout=60)
    os.close(master)
    return code, seen


@pytest.fixture(scope="session", autouse=True)
def release_states_of_test_trees_go() -> Iterator[None]:
    """--release rehearsals of test trees leave apt states in the machine's
    cache; once the trees are gone, so are those states (as the next
    rehearsal would prune them, but the machine is left as found now)."""
    yield
    from apt_rehearse.store import housekeeping

    housekeeping.prune_release_states("/var/cache/apt-rehearse/releases", None)


# Where the tests' rehearsals save their reports: the machine's log directory,
# and the Log-Dir or tree of a test's own scratch directory (below /var/tmp,
# or pytest's tmp_path).
SAVED_REPORTS = (
    "/var/log/apt-rehearse",
    "/run/rel-log",
    "/var/tmp/rh-*/log*",
    "/var/tmp/rh-*/*/log*",
    "/var/tmp/rel-*/log*",
    "/var/tmp/rel-*/*/log*",
    "/var/tmp/rh-*/var/log/apt-rehearse",
    "/var/tmp/rh-*/*/var/log/apt-rehearse",
    "/var/tmp/rel-*/*/var/log/apt-rehearse",
)
REPORT_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{12}\.json$")
_validated: dict[str, float] = {}


def _report_validator() -> Any:
    """The shipped schema's validator, or None where python3-jsonschema is missing (outside CI)."""
    try:
        import jsonschema
    except ImportError:
        if IN_CI:
            pytest.fail("CI must validate the saved reports: python3-jsonschema is not installed")
        return None
    schema = json.loads((REPO / "data/report.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def saved_reports(since: float, directories: tuple[str, ...]) -> list[Path]:
    """Reports apt-rehearse saved since ``since``: <time>-<id>.json with the
    .txt and .log it writes beside each (a file a test planted to be pruned has
    no .log)."""
    import glob

    found = []
    for pattern in directories:
        for directory in glob.glob(pattern):
            for path in Path(directory).glob("2*.json"):
                try:
                    recent = path.stat().st_mtime >= since
                except OSError:
                    continue  # pruned meanwhile
                if recent and REPORT_NAME.match(path.name) and path.with_suffix(".log").exists():
                    found.append(path)
    return sorted(found)


@pytest.fixture(autouse=True)
def saved_reports_follow_the_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every report a test's rehearsals save validates against the schema the
    package ships (data/report.schema.json): checked as each test ends, before
    its scratch directories go."""
    import time

    started = time.time() - 1
    yield
    validator = _report_validator()
    if validator is None:
        return
    scratch = str(tmp_path_factory.getbasetemp())
    wrong = []
    for path in saved_reports(started, (*SAVED_REPORTS, scratch + "/*/log*", scratch + "/*/*/log*")):
        mtime = path.stat().st_mtime
        if _validated.get(str(path)) != mtime:
            wrong += report_errors(path, validator)
            _validated[str(path)] = mtime
    assert not wrong, "saved reports that break data/report.schema.json:\n" + "\n".join(wrong)


def report_errors(path: Path, validator: Any) -> list[str]:
    """What in a saved report breaks the schema (its first three errors)."""
    try:
        errors = sorted(validator.iter_errors(json.loads(path.read_text())), key=lambda e: list(e.path))
    except (OSError, ValueError) as error:
        return [f"{path}: {error}"]
    return [f"{path}: {e.json_path}: {e.message}" for e in errors[:3]]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _validated:
        terminalreporter.write_line(
            f"apt-rehearse: {len(_validated)} saved report(s) validated against data/report.schema.json"
        )
