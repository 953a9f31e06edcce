"""Run a function in a forked process while this one goes on.

The host-side facts of a rehearsal (what dpkg knows of the packages to be
removed, which conffiles would prompt) read only the host and take seconds
on a release upgrade; the replay waits on dpkg, one core at a time. Forked
before the sandbox, the facts come for free on the idle core. A process,
not a thread: the sandbox forks again afterwards, and a fork beside a
running thread can inherit a lock that thread held.

The child dies with us (PR_SET_PDEATHSIG), never runs our atexit handlers,
and is killed and reaped by ``cancel`` when the rehearsal stops early.
"""

from __future__ import annotations

import os
import pickle
import signal
from typing import Any, Callable

from apt_rehearse.sandbox import syscalls
from apt_rehearse.sandbox.processes import kill_and_reap
from apt_rehearse.model.errors import RehearsalError


class ForkedCall:
    def __init__(self, function: Callable[..., Any], *args: Any, niceness: int = 0) -> None:
        """Start ``function(*args)``; ``niceness`` above ours lets the work
        it runs beside (dpkg's) have the CPU first."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.close(read_fd)
                syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != parent:  # the parent died before the line above
                    os._exit(1)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the parent, which cancels us
                if niceness:
                    os.nice(niceness)
                try:
                    payload = pickle.dumps(("ok", function(*args)))
                except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it
                    payload = pickle.dumps(("error", f"{type(error).__name__}: {error}"))
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(payload)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        self.pid: int | None = pid
        self._read_fd = read_fd

    def result(self) -> Any:
        """The function's return value; its exception as a RehearsalError."""
        read_fd, self._read_fd = self._read_fd, -1
        with os.fdopen(read_fd, "rb") as pipe:
            payload = pipe.read()
        self._reap()
        if not payload:
            raise RehearsalError("a helper process of the rehearsal ended without an answer (killed? out of memory?)")
        kind, value = pickle.loads(payload)  # our own child, through our own pipe
        if kind == "error":
            raise RehearsalError(value)
        return value

    def cancel(self) -> None:
        kill_and_reap(self.pid)
        self.pid = None
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def _reap(self) -> None:
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
