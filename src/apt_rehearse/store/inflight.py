"""One rehearsal of a transaction at a time.

Whoever rehearses a transaction (the prepare service, the CLI, the hook)
holds that transaction's lock while it does; the hook that finds the same
transaction being rehearsed waits for that rehearsal and takes its verdict
from the verdict cache instead of starting a second one. The lock is an
flock(2): it goes with the process that held it, however that process ends,
so a killed rehearsal never leaves a lock that nobody holds behind.

The files stay (unlinking a lock file others may be waiting on lets a third
process lock another inode of the same name); housekeeping removes those
nobody holds that are older than a day.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from typing import Any, Callable, Iterator

WAIT_TICK_S = 0.25


def _directory(cache_dir: str) -> str:
    return os.path.join(cache_dir, "inflight")


def _open(cache_dir: str, name: str) -> int:
    directory = _directory(cache_dir)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pid_namespace() -> int:
    """This process's pid namespace (its inode): a holder's pid means
    something only to a waiter in the same one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


class Claim:
    """A held lock; ``waited`` says whether another rehearsal held it first
    (whose verdict the holder should look for before rehearsing again)."""

    def __init__(self, waited: bool, holder: dict[str, Any], fd: int = -1, mine: dict[str, Any] | None = None) -> None:
        self.waited = waited
        self.holder = holder
        self._fd = fd
        self._mine = mine or {}
        self._told = 0.0

    def tell(self, now: str) -> None:
        """Say where the rehearsal is ("[ 44%] Configuring libzstd1"), for
        whoever waits for it; at most twice a second."""
        if self._fd < 0 or time.monotonic() - self._told < 0.5:
            return
        self._told = time.monotonic()
        try:
            data = json.dumps({**self._mine, "now": now}).encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass


@contextlib.contextmanager
def claim(
    cache_dir: str,
    name: str,
    who: str,
    on_wait: Callable[[dict[str, Any], float], None] | None = None,
    timeout_s: float | None = None,
    on_held: Callable[[int, int], None] | None = None,
) -> Iterator[Claim]:
    """Hold the lock ``name`` (a transaction's identity, or "prepare") for
    the block; when another process holds it, wait (``on_wait`` is told who
    and for how long, about once a second) until it lets go. TimeoutError
    after ``timeout_s``. ``on_held`` is called once, before the wait, with
    the holder's pid and the lock's descriptor, when the holder is in this
    pid namespace (sandbox/priority lifts it)."""
    fd = _open(cache_dir, name)
    try:
        waited, holder, began, told = False, {}, time.monotonic(), -1.0
        while not _try_lock(fd):
            if not waited:
                waited, holder = True, _holder(fd)
                pid = holder.get("pid")
                if on_held is not None and isinstance(pid, int) and holder.get("pidns") == pid_namespace():
                    on_held(pid, fd)
            elapsed = time.monotonic() - began
            if timeout_s is not None and elapsed > timeout_s:
                raise TimeoutError(f"{name} is still held by {holder.get('who', '?')} after {elapsed:.0f} s")
            if on_wait is not None and elapsed - told >= 1.0:
                on_wait(_holder(fd) or holder, elapsed)  # read again: the holder says where it is
                told = elapsed
            time.sleep(WAIT_TICK_S)
        mine = {"who": who, "pid": os.getpid(), "pidns": pid_namespace(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        try:
            yield Claim(waited, holder, fd, mine)
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # the lock goes with the descriptor


def holder_of(cache_dir: str, name: str) -> dict[str, Any] | None:
    """Who holds ``name`` now ({who, pid, started}), or None when nobody does."""
    path = os.path.join(_directory(cache_dir), name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            return None
        return _holder(fd) or {"who": "?"}
    finally:
        os.close(fd)


def tidy(cache_dir: str, older_than_s: float = 86400) -> int:
    """Remove the lock files nobody holds that are older than a day."""
    directory, removed, now = _directory(cache_dir), 0, time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if now - os.fstat(fd).st_mtime > older_than_s and _try_lock(fd):
                os.unlink(path)
                removed += 1
        finally:
            os.close(fd)
    return removed
