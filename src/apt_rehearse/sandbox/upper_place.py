"""Where a rehearsal's upper layers live: memory when the change fits, disk
when it does not, and never where they would crowd the host.

Memory (a size-capped tmpfs) is where the replay is fastest; a disk upper is
where a large change cannot run out of room or push the host into swap, but
it shares a file system with the host's own services, which must keep room
to work while the rehearsal runs.
"""

from __future__ import annotations

import os

from apt_rehearse.model.config import Settings


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    values[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def upper_fits_in_memory(unpacked: int, settings: Settings, meminfo: dict[str, int]) -> bool:
    """Whether the uppers go to a tmpfs: a change that unpacks to less than
    Large-Change, less than the tmpfs's cap, and less than half the memory
    available now (the other half is for dpkg, the maintainer scripts and
    the booted services, and for the host's own work). Memory is where the
    replay is fastest; a disk upper is where a large change cannot run out
    of room or push the host into swap."""
    if unpacked >= settings.large_change_bytes:
        return False
    total = meminfo.get("MemTotal")
    if settings.tmpfs_size.endswith("%") and total:
        try:
            cap = total * float(settings.tmpfs_size[:-1]) / 100
        except ValueError:
            cap = total / 2
    else:
        cap = float(settings.tmpfs_size) if settings.tmpfs_size.isdigit() else float("inf")
    if unpacked >= cap:
        return False
    available = meminfo.get("MemAvailable")
    return available is None or unpacked < available / 2


def host_reserve(size: int) -> int:
    """What a disk upper must leave free of a file system of ``size`` bytes
    for the host's own services: 1 GiB or 5%, whichever is more."""
    return max(1 << 30, size // 20)


def disk_room_problem(unpacked: int, free: int, size: int) -> str | None:
    """Why a disk upper of about ``unpacked`` bytes would crowd the host's
    own file system (see host_reserve), or None."""
    reserve = host_reserve(size)
    if free - unpacked >= reserve:
        return None
    return (
        f"about {unpacked / 1e6:.0f} MB unpacked would leave less than {reserve / 1e6:.0f} MB free "
        f"of the {free / 1e6:.0f} MB there"
    )


def free_and_size(path: str) -> tuple[int, int]:
    """Free bytes (for anyone, not only root) and size of the file system that holds ``path``, or would."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize
