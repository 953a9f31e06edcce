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
from types import ModuleType

from apt_rehearse.sandbox import janitor
from apt_rehearse.sandbox.mountinfo import MountEntry, mount_of

PREFIX = ".apt-rehearse-snapshot."
SUBVOLUME_ROOT_INODE = 256  # every btrfs subvolume's top directory
MAX_NESTED = 32  # each nested subvolume becomes an overlay of its own


@dataclasses.dataclass(frozen=True)
class Snapshot:
    source: str  # host path of the subvolume (a mount point, or --root)
    path: str  # the read-only snapshot, the sandbox's lower for source
    nested: tuple[str, ...] = ()  # subvolumes inside source, relative: left empty by the snapshot


def btrfsutil() -> ModuleType | None:
    """python3-btrfsutil (btrfs-progs' own library, the ioctls without a
    command's output to read), or None where it is not installed: then
    every lower is read live, as on other file systems."""
    try:
        import btrfsutil as module
    except ImportError:
        return None
    return module


def can_snapshot(path: str, entries: list[MountEntry]) -> bool:
    """Whether ``path`` is the top of a btrfs subvolume on a writable mount."""
    entry = mount_of(path, entries)
    if entry is None or entry.fstype != "btrfs" or entry.read_only:
        return False
    try:
        return os.stat(path).st_ino == SUBVOLUME_ROOT_INODE
    except OSError:
        return False


def take(source: str) -> Snapshot:
    """A read-only snapshot of the subvolume at ``source``; OSError (the
    library's BtrfsUtilError is one) when none can be taken."""
    library = btrfsutil()
    if library is None:
        raise OSError("python3-btrfsutil is not installed")
    path = os.path.join(source, f"{PREFIX}{os.getpid()}")
    # Registered before the snapshot exists: no kill can fall in between.
    janitor.after_death(functools.partial(delete, path))
    library.create_snapshot(source, path, read_only=True)
    try:
        nested = nested_subvolumes(source, own=path)
        if len(nested) > MAX_NESTED:
            # Docker's btrfs driver keeps a subvolume per image layer: an
            # overlay for each would be hundreds of mounts. Read live.
            raise OSError(f"{source} holds {len(nested)} nested subvolumes (more than {MAX_NESTED})")
    except OSError:
        delete(path)
        raise
    return Snapshot(source, path, nested)


def nested_subvolumes(source: str, own: str = "") -> tuple[str, ...]:
    """Subvolumes inside the one at ``source``, relative to it: the
    outermost only (an overlay of one holds what is nested in it)."""
    library = btrfsutil()
    if library is None:
        return ()
    found: list[str] = []
    # Pre-order: a subvolume comes before those nested in it.
    for relative, _ in library.SubvolumeIterator(source):
        full = os.path.join(source, relative)
        if full == own or os.path.basename(relative).startswith(PREFIX):
            continue  # our own snapshots, this one or a killed run's
        if any(relative.startswith(outer + "/") for outer in found):
            continue
        try:
            if os.lstat(full).st_ino == SUBVOLUME_ROOT_INODE:
                found.append(relative)
        except OSError:
            continue  # not reachable from this mount (another subvolume's mount hides it)
    return tuple(sorted(found))


def delete(path: str) -> None:
    """Remove a snapshot of ours; nothing else, and quietly when it is gone."""
    if not os.path.basename(path).startswith(PREFIX) or not os.path.lexists(path):
        return
    library = btrfsutil()
    if library is None:
        return
    try:
        library.delete_subvolume(path)
    except OSError:
        pass  # gone already, or not ours to delete: never fail a rehearsal's end
