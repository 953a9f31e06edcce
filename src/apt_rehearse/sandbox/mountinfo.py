"""Which mounts of the target root hold system state and need an overlay.

An overlay of "/" does not include its submounts, so every local-disk mount
below the target root (/usr, /var, /boot, /home, ...) needs an overlay of its
own. Pseudo filesystems (proc, sysfs, cgroup, ...) and network filesystems
are never overlaid: the sandbox mounts fresh pseudo filesystems, and must not
reach the network.
"""

from __future__ import annotations

import dataclasses
import os

# Filesystems whose content is system state on a local disk. Anything not
# listed here is left out of the sandbox rather than risked.
LOCAL_DISK_FSTYPES = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "f2fs",
        "jfs",
        "reiserfs",
        "zfs",
        "nilfs2",
        "bcachefs",
        "vfat",
        "exfat",
        "msdos",
        "overlay",
        "fuseblk",
        "ntfs3",
    }
)

# Paths inside the target whose host content never enters the sandbox: the
# sandbox gets fresh ones.
API_PATHS = ("/proc", "/sys", "/dev", "/run", "/tmp")


@dataclasses.dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    root: str  # the path inside the filesystem that is mounted
    target: str
    options: str
    fstype: str
    source: str
    super_options: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=_unescape(fields[3]),
                target=_unescape(fields[4]),
                options=fields[5],
                fstype=tail[0],
                source=_unescape(tail[1]),
                super_options=tail[2] if len(tail) > 2 else "",
            )
        )
    return entries


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return parse_mountinfo(handle.read())


def _is_below(path: str, root: str) -> bool:
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root.rstrip("/") + "/")


def visible_mounts(entries: list[MountEntry]) -> list[MountEntry]:
    """The mounts actually seen at each path: the last one mounted there wins."""
    by_target: dict[str, MountEntry] = {}
    for entry in entries:
        by_target[entry.target] = entry
    return list(by_target.values())


def state_submounts(root: str, entries: list[MountEntry]) -> list[MountEntry]:
    """Local-disk mounts strictly below ``root`` that need their own overlay.

    Returned parents first, so they can be mounted in order. Mounts below the
    API paths (/proc, /dev, /run, ...) of the target are skipped: the sandbox
    has fresh ones.
    """
    root = os.path.realpath(root)
    chosen = []
    for entry in visible_mounts(entries):
        if entry.target == root or not _is_below(entry.target, root):
            continue
        relative = "/" + os.path.relpath(entry.target, root)
        if any(_is_below(relative, api) for api in API_PATHS):
            continue
        if entry.fstype not in LOCAL_DISK_FSTYPES:
            continue
        chosen.append(entry)
    return sorted(chosen, key=lambda e: (e.target.count("/"), e.target))


def mount_of(path: str, entries: list[MountEntry]) -> MountEntry | None:
    """The mount that holds ``path`` (longest matching target)."""
    path = os.path.realpath(path)
    best = None
    for entry in visible_mounts(entries):
        if _is_below(path, entry.target) and (best is None or len(entry.target) > len(best.target)):
            best = entry
    return best
