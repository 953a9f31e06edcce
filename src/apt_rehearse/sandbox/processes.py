"""Ending a process apt-rehearse started, by its pid, and reaping it."""

from __future__ import annotations

import os
import signal


def kill_and_reap(pid: int | None, reap: int | None = None) -> None:
    """SIGKILL ``pid`` (ours: never a process we did not start) and wait for
    ``reap`` (the same process unless said otherwise: the child whose death
    follows, as a boot's child outlives its PID 1 by an instant). A process
    already gone or already reaped is no error."""
    if not pid or pid <= 0:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(reap or pid, 0)
    except ChildProcessError:
        pass
