"""Lower layers that hold still: read-only btrfs snapshots.

The lower layer of a rehearsal of / is the live system, and it keeps changing
under the overlay while the real services run: a database's files can be
read mid-write, and the rehearsed database then fails for reasons that have
nothing to do with the upgrade (the kernel calls a changing lower layer
undefined behaviour). Where a mount is the root of a btrfs subvolume, a
read-only snapshot taken just before the sandbox starts is a lower that
cannot change: every file as it was at one instant, the way a power cut
would leave it, which is what databases are built to recover from.

A snapshot costs no copying and no device (LVM snapshots would create one,
which a rehearsal must not). It lives in the subvolume it copies, as
``.apt-rehearse-snapshot.PID``, for the length of the rehearsal; being a
subvolume of its own, it is another device to ``find -xdev``, ``rsync -x``
and ``tar --one-file-system``. It is deleted afterwards, by a janitor when
the rehearsal is killed. Subvolumes nested in the snapshotted one (systemd's
/var/lib/machines, a /var/lib/docker) are left empty by a snapshot: they are
returned so that the sandbox overlays them live, as before.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess

from apt_rehearse.sandbox import janitor
from apt_rehearse.sandbox.mountinfo import MountEntry, mount_of

PREFIX = ".apt-rehearse-snapshot."
SUBVOLUME_ROOT_INODE = 256  # every btrfs subvolume's top directory
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MAX_NESTED = 32  # each nested subvolume becomes an overlay of its own


@dataclasses.dataclass(frozen=True)
class Snapshot:
    source: str  # host path of the subvolume (a mount point, or --root)
    path: str  # the read-only snapshot, the sandbox's lower for source
    nested: tuple[str, ...] = ()  # subvolumes inside source, relative: left empty by the snapshot


def btrfs_tool() -> str | None:
    return shutil.which("btrfs", path=TOOL_PATH)


def can_snapshot(path: str, entries: list[MountEntry]) -> bool:
    """Whether ``path`` is the top of a btrfs subvolume on a writable mount."""
    entry = mount_of(path, entries)
    if entry is None or entry.fstype != "btrfs" or entry.read_only:
        return False
    try:
        return os.stat(path).st_ino == SUBVOLUME_ROOT_INODE
    except OSError:
        return False


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
    return proc.stdout


def take(source: str, tool: str) -> Snapshot:
    """A read-only snapshot of the subvolume at ``source``."""
    path = os.path.join(source, f"{PREFIX}{os.getpid()}")
    # Registered before the snapshot exists: no kill can fall in between.
    janitor.after_death(functools.partial(delete, path, tool))
    _run([tool, "subvolume", "snapshot", "-r", source, path])
    try:
        nested = nested_subvolumes(source, tool, own=path)
        if len(nested) > MAX_NESTED:
            # Docker's btrfs driver keeps a subvolume per image layer: an
            # overlay for each would be hundreds of mounts. Read live.
            raise OSError(f"{source} holds {len(nested)} nested subvolumes (more than {MAX_NESTED})")
    except OSError:
        delete(path, tool)
        raise
    return Snapshot(source, path, nested)


def nested_subvolumes(source: str, tool: str, own: str = "") -> tuple[str, ...]:
    """Subvolumes directly inside the one at ``source``, relative to it.

    ``btrfs subvolume list -o`` names them from the top of the file system;
    ``btrfs subvolume show`` names ``source`` the same way ("/" for the top)."""
    name = _run([tool, "subvolume", "show", source]).splitlines()[0].strip()
    prefix = "" if name in ("/", "<FS_TREE>") else name.rstrip("/") + "/"
    found = []
    for line in _run([tool, "subvolume", "list", "-o", source]).splitlines():
        _, separator, path = line.partition(" path ")
        if not separator or not path.startswith(prefix):
            continue
        relative = path[len(prefix) :]
        full = os.path.join(source, relative)
        if full == own or os.path.basename(relative).startswith(PREFIX):
            continue  # our own snapshots, this one or a killed run's
        try:
            if os.lstat(full).st_ino == SUBVOLUME_ROOT_INODE:
                found.append(relative)
        except OSError:
            continue
    return tuple(sorted(found))


def delete(path: str, tool: str) -> None:
    """Remove a snapshot of ours; nothing else, and quietly when it is gone."""
    if not os.path.basename(path).startswith(PREFIX) or not os.path.lexists(path):
        return
    subprocess.run([tool, "subvolume", "delete", path], stdin=subprocess.DEVNULL, capture_output=True, check=False)
