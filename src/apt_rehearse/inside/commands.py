"""Running the rehearsed system's own commands, inside the sandbox."""

from __future__ import annotations

import subprocess

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sandbox_env() -> dict[str, str]:
    return {
        "PATH": PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        # Our own hook must not rehearse the rehearsal; tools that would reach
        # for the network or a pager stay quiet.
        "APT_REHEARSE": "0",
        "APT_LISTBUGS_FRONTEND": "none",
        "APT_LISTCHANGES_FRONTEND": "none",
        "container": "apt-rehearse",
    }


def start_command(argv: list[str]) -> subprocess.Popen[bytes] | None:
    """Start a command of the target system; finish it with finish_command."""
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=sandbox_env()
        )
    except FileNotFoundError:
        return None


def finish_command(proc: subprocess.Popen[bytes] | None, argv0: str, timeout: float = 600) -> tuple[int, str]:
    """(exit status, output) of a started command; killed after timeout."""
    if proc is None:
        return 127, f"{argv0}: not found in the rehearsed system"
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return 124, (output or b"").decode("utf-8", "replace") + "\n(timed out)"
    return proc.returncode, output.decode("utf-8", "replace")


def run_command(argv: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run a command of the target system; (exit status, output)."""
    return finish_command(start_command(argv), argv[0], timeout)
