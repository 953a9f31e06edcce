"""Clean up after a rehearsal even when it is killed (SIGKILL, OOM killer).

Mounts and processes die with the sandbox's namespaces, but two things live
on the host's filesystems and outlive a killed process: the cgroup directory
of a booted rehearsal and a disk upper. ``after_death`` forks a small
janitor that waits on a pipe whose write end only this process (and its
forked, never exec'ed children) holds; when they are all gone, however
they ended, the pipe reads EOF and the janitor removes what it was given.
On a normal run the rehearsal has removed them already: the janitor finds
nothing to do, and the exiting command waits for it (atexit).
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import Callable

# Write ends kept open for the life of this process, on purpose: their
# closing (by the kernel, at our death) is the janitor's signal.
_HELD: list[int] = []
_JANITORS: list[int] = []


def after_death(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` in a janitor process once this process is gone."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)  # exec'ed programs never hold it
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the janitor
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)
            os.setsid()  # not in the terminal's process group: ^C is for the rehearsal
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # never hold the caller's pipes open (apt, a test) after we are gone
                os.dup2(null, fd)
            os.closerange(3, read_fd)
            os.closerange(read_fd + 1, 1 << 16)
            while os.read(read_fd, 1):
                pass
            cleanup()
        finally:
            os._exit(0)
    os.close(read_fd)
    if not _HELD:
        atexit.register(_on_normal_exit)
    _HELD.append(write_fd)
    _JANITORS.append(pid)


def _on_normal_exit() -> None:
    """A normal exit has cleaned up already: let the janitors see that and end
    before we do, so that nothing of ours outlives the command (bounded: a
    straggling child still holding a pipe only delays us 2 s)."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for pid in _JANITORS:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.005)
