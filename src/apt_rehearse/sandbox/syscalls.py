"""The few Linux syscalls the sandbox needs, through ctypes.

Python 3.11 (bookworm) has no os.unshare, and os.pivot_root/mount never
existed, so every call goes through libc here, in one place, and every failure
becomes an OSError that names the syscall (so a one-line error can say which
step of the sandbox failed and why).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _check(result: int, name: str, detail: str = "") -> int:
    if result < 0:
        err = ctypes.get_errno()
        message = f"{name}({detail}): {os.strerror(err)}" if detail else f"{name}: {os.strerror(err)}"
        raise OSError(err, message)
    return result


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", hex(flags))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data))
    _check(result, "mount", f"{fstype or 'bind'} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_bytes(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    # glibc has exported pivot_root since 2.2.5; its syscall number differs per architecture.
    _check(_libc.pivot_root(_bytes(new_root), _bytes(put_old)), "pivot_root", new_root)


def prctl(option: int, arg: int) -> int:
    return _check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        "prctl",
        f"{option}, {arg}",
    )


# <linux/capability.h>: capget/capset, version 3 (64 bits in two halves)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capget() -> tuple[int, int, int]:
    """This process's (effective, permitted, inheritable) capability sets."""
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return tuple(
        getattr(data[0], field) | getattr(data[1], field) << 32 for field in ("effective", "permitted", "inheritable")
    )  # type: ignore[return-value]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    for index in (0, 1):
        data[index].effective = (effective >> (32 * index)) & 0xFFFFFFFF
        data[index].permitted = (permitted >> (32 * index)) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> (32 * index)) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def setns(fd: int, nstype: int = 0) -> None:
    # os.setns arrived in Python 3.12; bookworm has 3.11.
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", str(nstype))
