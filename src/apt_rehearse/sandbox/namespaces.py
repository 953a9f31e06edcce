"""The throw-away copy of the target system, in private namespaces.

The sandbox is a plan of small mount steps (each can describe itself, so
``--debug`` prints the plan) executed by a child process that is PID 1 of a
private pid namespace, in private mount, net (loopback only), ipc, uts and
cgroup namespaces. Everything it starts dies with that pid namespace, every
mount it makes dies with that mount namespace: a rehearsal killed at any
point leaves nothing mounted and nothing running on the host.

Host safety rules (DESIGN.md) this module keeps:
- the target root and each local-disk submount are overlay lowers, never
  written; the uppers live on a size-capped tmpfs or in a directory of ours;
- /dev is a tmpfs with nodes made by mknod, never a bind of host nodes (only
  where mknod is refused, inside a rehearsal, the same nodes bound read-only);
- /proc is fresh, /sys read-only, /run and /tmp fresh tmpfs;
- host directories that must be seen inside (the .debs) are bound read-only;
- everything inside runs confined (confine.py): /proc/sys read-only but for
  /proc/sys/net, /proc's kernel entries masked, every overlay nodev, a
  reduced capability bounding set and a seccomp filter.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import traceback
from typing import Any, Callable, Iterator

from apt_rehearse.sandbox import confine
from apt_rehearse.sandbox import syscalls
from apt_rehearse.sandbox.processes import kill_and_reap
from apt_rehearse.model.errors import RehearsalError, RehearsalLimit, UnsupportedSystem
from apt_rehearse.sandbox.mountinfo import MountEntry, read_mountinfo, state_submounts

# Where the staging tmpfs goes inside the private mount namespace. Host paths
# under it stay reachable through descriptors pinned before it is mounted.
STAGE = "/run"
CHROOT_STAGES = ("/run", "/tmp", "/dev/shm")
INSIDE_SHARE = "/run/apt-rehearse"


class Context:
    """State shared by the steps while they execute: pinned host paths."""

    def __init__(self) -> None:
        self.pinned: dict[str, int] = {}

    def host(self, path: str) -> str:
        """A path that reaches the host directory even when a mount covers it."""
        return f"/proc/self/fd/{self.pinned[path]}" if path in self.pinned else path


class Step:
    def describe(self) -> str:
        raise NotImplementedError

    def execute(self, ctx: Context) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class PinHostPaths(Step):
    """Open the host directories first, so mounts made later cannot hide them."""

    paths: list[str]

    def describe(self) -> str:
        return "pin host paths: " + ", ".join(self.paths)

    def execute(self, ctx: Context) -> None:
        for path in self.paths:
            ctx.pinned[path] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


@dataclasses.dataclass
class MakeMountsPrivate(Step):
    """Nothing mounted from here on may propagate back to the host.

    In a chroot "/" is not a mount point and cannot be made private; then
    every mount that is visible is made private one by one, and the sandbox
    only ever mounts on top of those (never on the chroot's own parent
    mount, whose propagation cannot be seen or changed from inside).
    """

    visible: list[str] | None = None  # chroot: the mount points to make private

    def describe(self) -> str:
        if self.visible is None:
            return "make every mount private (nothing propagates back to the host)"
        return "chroot (/ is not a mount point): make each visible mount private: " + ", ".join(self.visible)

    def execute(self, ctx: Context) -> None:
        if self.visible is None:
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            return
        for target in self.visible:
            syscalls.mount(None, target, None, syscalls.MS_REC | syscalls.MS_PRIVATE)


@dataclasses.dataclass
class Tmpfs(Step):
    target: str
    options: str = "mode=0755"
    flags: int = syscalls.MS_NOSUID | syscalls.MS_NODEV

    def describe(self) -> str:
        return f"tmpfs on {self.target} ({self.options})"

    def execute(self, ctx: Context) -> None:
        os.makedirs(self.target, exist_ok=True)
        syscalls.mount("tmpfs", self.target, "tmpfs", self.flags, self.options)


@dataclasses.dataclass
class BindWritable(Step):
    """Bind a directory of ours (a disk upper) into the staging area."""

    source: str
    target: str

    def describe(self) -> str:
        return f"bind {self.source} (disk upper) on {self.target}"

    def execute(self, ctx: Context) -> None:
        os.makedirs(self.target, exist_ok=True)
        syscalls.mount(ctx.host(self.source), self.target, None, syscalls.MS_BIND)


@dataclasses.dataclass
class Overlay(Step):
    lower: str  # host path (pinned)
    layer: str  # directory holding upper/ and work/
    target: str
    label: str = ""
    # A disk upper is thrown away after the rehearsal: nothing written to it
    # needs to be durable, so overlayfs' "volatile" drops every sync to it
    # (fsync, syncfs) instead of waiting for the disk. What is written, and
    # every maintainer script that writes it, is unchanged. (A tmpfs upper
    # never syncs anyway.)
    volatile: bool = False

    # dpkg links every file it replaces to a backup (.dpkg-tmp) before
    # renaming the new one over it; overlayfs copies a lower file up whole for
    # a link, a chmod or a chown. metacopy copies only the inode up, its data
    # stays in the lower until written: same files, same contents, a fraction
    # of the copying. (metacopy needs redirect_dir, which also lets a lower
    # directory be renamed as on the real filesystem instead of failing with
    # EXDEV.) Both layers are ours or the host's own root, never untrusted
    # images, as the kernel's documentation asks of metacopy. Kernels without
    # them (or volatile, before 5.10) get the options they know.
    FAST_OPTIONS = ",redirect_dir=on,metacopy=on"

    def option_choices(self) -> list[str]:
        choices = [self.FAST_OPTIONS, ""]
        if self.volatile:
            choices = [c + ",volatile" for c in choices] + choices
        return choices

    def describe(self) -> str:
        text = f"overlay on {self.target}: lower {self.lower} (read-only), upper {self.layer}/upper"
        return text + (" (volatile: no syncs to the throw-away upper)" if self.volatile else "")

    def execute(self, ctx: Context) -> None:
        upper, work = f"{self.layer}/upper", f"{self.layer}/work"
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        os.makedirs(self.target, exist_ok=True)
        lower = ctx.host(self.lower)
        # The overlay must hand files out with the lower's own ownership and
        # mode: upper root takes the lower root's.
        info = os.stat(lower)
        os.chown(upper, info.st_uid, info.st_gid)
        os.chmod(upper, stat.S_IMODE(info.st_mode))
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        choices = self.option_choices()
        try:
            for index, extra in enumerate(choices):
                try:
                    # nodev: a device node in the tree (a chroot's dev/, a
                    # tree made with its own /dev) cannot be opened inside.
                    syscalls.mount("overlay", self.target, "overlay", syscalls.MS_NODEV, options + extra)
                    return
                except OSError as error:
                    if error.errno != errno.EINVAL or index == len(choices) - 1:
                        raise
        except OSError as error:
            raise UnsupportedSystem(
                f"cannot mount an overlay of {self.lower}: {error.strerror}; apt-rehearse needs overlayfs "
                "(modprobe overlay) on a filesystem that supports it"
            ) from error


@dataclasses.dataclass
class Proc(Step):
    target: str

    def describe(self) -> str:
        return f"fresh proc on {self.target}"

    def execute(self, ctx: Context) -> None:
        flags = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
        syscalls.mount("proc", self.target, "proc", flags)


@dataclasses.dataclass
class ProcMasks(Step):
    """/proc/sys read-only but for the private network's, kernel entries masked.

    The kernel's settings outside /proc/sys/net are the host's: a booted
    systemd-sysctl (which skips itself when /proc/sys is read-only, as in any
    container) or a postinst's sysctl -w would set them for the host. The
    entries nspawn hides (kcore, kmsg, sysrq-trigger, ...) get an empty
    read-only file bound over them; the hardware directories are bound
    read-only.
    """

    target: str  # the fresh proc's mount point
    stash: str  # a directory of ours for the empty file bound over masked entries

    def describe(self) -> str:
        return (
            f"confine {self.target}: read-only {', '.join(confine.PROC_READ_ONLY)} (but "
            f"{', '.join(confine.PROC_WRITABLE)}), masked {', '.join(confine.PROC_INACCESSIBLE)}"
        )

    def execute(self, ctx: Context) -> None:
        os.makedirs(self.stash, exist_ok=True)
        empty = f"{self.stash}/empty"
        if not os.path.exists(empty):
            os.close(os.open(empty, os.O_WRONLY | os.O_CREAT, 0o000))
        read_only = (
            syscalls.MS_BIND
            | syscalls.MS_REMOUNT
            | syscalls.MS_RDONLY
            | syscalls.MS_NOSUID
            | syscalls.MS_NODEV
            | syscalls.MS_NOEXEC
        )
        for name in confine.PROC_INACCESSIBLE:
            path = f"{self.target}/{name}"
            if os.path.isfile(path):
                syscalls.mount(empty, path, None, syscalls.MS_BIND)
                syscalls.mount(None, path, None, read_only)
        bound = []
        for name in (*confine.PROC_READ_ONLY, *confine.PROC_WRITABLE):
            path = f"{self.target}/{name}"
            if os.path.isdir(path):
                # Each bound on itself first: the writable one on top of its
                # read-only parent stays a mount of its own.
                syscalls.mount(path, path, None, syscalls.MS_BIND)
                bound.append(name)
        for name in bound:
            if name not in confine.PROC_WRITABLE:
                syscalls.mount(None, f"{self.target}/{name}", None, read_only)


@dataclasses.dataclass
class SysfsReadOnly(Step):
    target: str

    def describe(self) -> str:
        return f"read-only sysfs on {self.target}"

    def execute(self, ctx: Context) -> None:
        flags = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
        syscalls.mount("sysfs", self.target, "sysfs", flags)


# Character devices made with mknod, never bound from the host: a booted
# systemd once chmod-ed the host's /dev/null through such a bind.
DEVICE_NODES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}


@dataclasses.dataclass
class Cgroup2(Step):
    """The sandbox's own cgroup subtree (cgroup namespace), for its systemd."""

    target: str

    def describe(self) -> str:
        return f"cgroup2 on {self.target} (the sandbox's own subtree, through its cgroup namespace)"

    def execute(self, ctx: Context) -> None:
        syscalls.mount("cgroup2", self.target, "cgroup2", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)


def _device_node(path: str, mode: int, major: int, minor: int, fallback: str) -> None:
    """A node of the sandbox's own, made with mknod.

    Where mknod is refused (apt-rehearse itself runs confined: a rehearsal
    inside a rehearsal, a container without CAP_MKNOD), the same node of the
    current /dev is bound instead, as nspawn does, read-only: a chmod or
    chown through it fails (EROFS) instead of reaching the outer node, while
    reads and writes to the device work as on the node itself.
    """
    try:
        os.mknod(path, mode | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, mode)
        return
    except PermissionError:
        pass
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o000))
    syscalls.mount(fallback, path, None, syscalls.MS_BIND)
    syscalls.mount(None, path, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY | syscalls.MS_NOSUID)


@dataclasses.dataclass
class PrivateDev(Step):
    target: str
    console: bool = False  # a booted init wants /dev/console: a private null node, never the host's

    def describe(self) -> str:
        return f"private /dev on {self.target}: tmpfs with {', '.join(DEVICE_NODES)} made by mknod, own devpts"

    def execute(self, ctx: Context) -> None:
        syscalls.mount("tmpfs", self.target, "tmpfs", syscalls.MS_NOSUID, "mode=0755,size=16m")
        for name, (major, minor) in DEVICE_NODES.items():
            _device_node(f"{self.target}/{name}", 0o666, major, minor, f"/dev/{name}")
        for name in ("pts", "shm"):
            os.mkdir(f"{self.target}/{name}", 0o755)
        syscalls.mount(
            "devpts",
            f"{self.target}/pts",
            "devpts",
            syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )
        os.symlink("pts/ptmx", f"{self.target}/ptmx")
        if self.console:
            _device_node(f"{self.target}/console", 0o600, 1, 3, "/dev/null")
        syscalls.mount("tmpfs", f"{self.target}/shm", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777")
        for name, link in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ):
            os.symlink(link, f"{self.target}/{name}")


@dataclasses.dataclass
class BindReadOnly(Step):
    source: str  # host path (pinned)
    target: str

    def describe(self) -> str:
        return f"bind {self.source} read-only on {self.target}"

    def execute(self, ctx: Context) -> None:
        os.makedirs(self.target, exist_ok=True)
        syscalls.mount(ctx.host(self.source), self.target, None, syscalls.MS_BIND)
        flags = syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV
        syscalls.mount(None, self.target, None, flags)


@dataclasses.dataclass
class LoopbackUp(Step):
    def describe(self) -> str:
        return "bring up loopback in the private network namespace (no other interface)"

    def execute(self, ctx: Context) -> None:
        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH", b"lo", 0)
            flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request + b"\0" * 22)[:18])[1]
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up) + b"\0" * 22)


@dataclasses.dataclass
class Hostname(Step):
    name: str

    def describe(self) -> str:
        return f"hostname {self.name} (private uts namespace)"

    def execute(self, ctx: Context) -> None:
        syscalls.sethostname(self.name)


@dataclasses.dataclass
class PivotRoot(Step):
    new_root: str

    def describe(self) -> str:
        return f"pivot_root into {self.new_root}, detach the host root"

    def execute(self, ctx: Context) -> None:
        os.chdir(self.new_root)
        # put_old == new_root: the old root ends up stacked under "/" and is
        # detached at once, so nothing of the host stays reachable by path.
        syscalls.pivot_root(".", ".")
        syscalls.umount2(".", syscalls.MNT_DETACH)
        os.chdir("/")


@dataclasses.dataclass
class ChrootInto(Step):
    """The fallback when the current root is itself a chroot: pivot_root
    refuses to move a root that is not a mount point."""

    new_root: str

    def describe(self) -> str:
        return f"chroot into {self.new_root} (pivot_root needs / to be a mount point)"

    def execute(self, ctx: Context) -> None:
        os.chdir(self.new_root)
        os.chroot(".")
        os.chdir("/")


@dataclasses.dataclass
class Layer:
    """One overlaid mount: where it is in the target and where its upper lives."""

    mountpoint: str  # inside the target, "/" or "/var", ...
    lower: str  # host path
    layer_dir: str  # staging path holding upper/ and work/


@dataclasses.dataclass
class SandboxSpec:
    root: str = "/"
    tmpfs_size: str = "50%"
    upper_dir: str | None = None  # a host directory of ours for disk uppers
    read_only_binds: dict[str, str] = dataclasses.field(default_factory=dict)  # host dir -> inside path
    hostname: str | None = None
    boot: bool = False  # the system's own init runs inside (services)
    # host mount (or root) -> what to use as its lower instead: a read-only
    # snapshot of it (snapshots.py)
    lowers: dict[str, str] = dataclasses.field(default_factory=dict)
    # host directories below root overlaid live on top of the layers above:
    # the subvolumes nested in a snapshotted one, which the snapshot leaves empty
    live_layers: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SandboxPlan:
    steps: list[Step]
    layers: list[Layer]
    new_root: str
    stage: str = STAGE
    # steps[:first_boot_step] build the layers (once); the rest make one boot
    # of them (fresh /proc, /dev, /run, ...), again for every boot.
    first_boot_step: int = 0

    @property
    def layer_steps(self) -> list[Step]:
        return self.steps[: self.first_boot_step]

    @property
    def boot_steps(self) -> list[Step]:
        return self.steps[self.first_boot_step :]

    def describe(self) -> list[str]:
        return [step.describe() for step in self.steps]


def _chroot_stage(mounts: list[MountEntry]) -> tuple[list[str] | None, str]:
    """(mount points to make private one by one, staging path) in a chroot."""
    targets = [entry.target for entry in mounts]
    if "/" in targets:
        return None, STAGE
    for candidate in CHROOT_STAGES:
        if candidate in targets:
            return sorted(set(targets), key=lambda t: (t.count("/"), t)), candidate
    raise UnsupportedSystem(
        "/ is not a mount point (a chroot?) and nothing is mounted on /run or /tmp to build the sandbox on; "
        "mount a tmpfs on /run first"
    )


def plan_sandbox(spec: SandboxSpec, mounts: list[MountEntry] | None = None) -> SandboxPlan:
    root = os.path.realpath(spec.root)
    mounts = read_mountinfo() if mounts is None else mounts
    visible, stage = _chroot_stage(mounts)
    new_root = f"{stage}/root"
    layers_base = f"{stage}/layers"
    steps: list[Step] = []
    submounts = state_submounts(root, mounts)
    below = [
        ("/" + os.path.relpath(host, root), spec.lowers.get(host, host))
        for host in [entry.target for entry in submounts] + spec.live_layers
    ]
    # Parents before what is mounted inside them.
    layer_sources = [("/", spec.lowers.get(root, root)), *sorted(below, key=lambda pair: (pair[0].count("/"), pair[0]))]
    pins = [layer_sources[0][1], *spec.read_only_binds, *(lower for _inside, lower in layer_sources[1:])]
    if spec.upper_dir:
        pins.append(spec.upper_dir)
    steps.append(PinHostPaths(list(dict.fromkeys(pins))))
    steps.append(MakeMountsPrivate(visible))
    tmpfs_options = f"mode=0755,size={spec.tmpfs_size}" if not spec.upper_dir else "mode=0755,size=64m"
    steps.append(Tmpfs(stage, tmpfs_options))
    if spec.upper_dir:
        steps.append(BindWritable(spec.upper_dir, layers_base))
    layers = [Layer(inside, host, f"{layers_base}/{index}") for index, (inside, host) in enumerate(layer_sources)]
    for layer in layers:
        target = new_root if layer.mountpoint == "/" else new_root + layer.mountpoint
        steps.append(
            Overlay(layer.lower, layer.layer_dir, target, layer.mountpoint, volatile=spec.upper_dir is not None)
        )
    # Host directories are bound into the staging area while their pinned
    # descriptors are still of this mount namespace; each boot (a copy of
    # it) binds them on from there.
    staged_binds = {}
    for index, (host_path, inside) in enumerate(spec.read_only_binds.items()):
        staged = f"{stage}/binds/{index}"
        steps.append(BindReadOnly(host_path, staged))
        staged_binds[staged] = inside
    first_boot_step = len(steps)
    steps += [
        Proc(f"{new_root}/proc"),
        ProcMasks(f"{new_root}/proc", f"{stage}/masks"),
        SysfsReadOnly(f"{new_root}/sys"),
    ]
    if spec.boot:
        steps.append(Cgroup2(f"{new_root}/sys/fs/cgroup"))
    steps += [
        PrivateDev(f"{new_root}/dev", console=spec.boot),
        Tmpfs(f"{new_root}/run", "mode=0755"),
        Tmpfs(f"{new_root}/tmp", "mode=1777"),
    ]
    for staged, inside in staged_binds.items():
        steps.append(BindReadOnly(staged, new_root + inside))
    steps.append(LoopbackUp())
    if spec.hostname:
        steps.append(Hostname(spec.hostname))
    steps.append(PivotRoot(new_root) if visible is None else ChrootInto(new_root))
    return SandboxPlan(steps, layers, new_root, stage, first_boot_step)


def check_supported() -> None:
    """One clear line, exit 3, when this system cannot host a sandbox."""
    if os.geteuid() != 0:
        raise UnsupportedSystem("apt-rehearse must run as root (it builds a private copy of the system); try sudo")
    try:
        with open("/proc/filesystems", encoding="ascii") as handle:
            known = {line.split()[-1] for line in handle if line.strip()}
    except OSError:
        known = set()
    if "overlay" not in known and not os.path.exists("/sys/module/overlay"):
        raise UnsupportedSystem("the kernel has no overlayfs; load it with 'modprobe overlay' and try again")
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            effective = next(int(line.split()[1], 16) for line in handle if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        effective = 0
    if not effective & (1 << 21):  # CAP_SYS_ADMIN
        raise UnsupportedSystem(
            "no CAP_SYS_ADMIN here (an unprivileged container?); apt-rehearse needs to create namespaces and mounts"
        )
    confine.check_available()


# ---------------------------------------------------------------------------
# Running code inside


class Channel:
    """JSON lines from the sandbox to the host: events, then one result."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, kind: str, **payload: Any) -> None:
        data = (json.dumps({"kind": kind, **payload}) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]


def read_events(read_fd: int) -> Iterator[dict[str, Any]]:
    """The other end of a Channel: its JSON lines until the writer is gone."""
    buffer = b""
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        while chunk := stream.read(65536):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)


# The namespaces a sandbox has of its own, packages-only or booted. No user
# namespace: on this kernel an overlay mounted in one refuses the metacopy
# and redirect_dir the layers need; the host's root is held back by
# sandbox/confine.py instead.
SANDBOX_NAMESPACES = (
    syscalls.CLONE_NEWNS
    | syscalls.CLONE_NEWPID
    | syscalls.CLONE_NEWNET
    | syscalls.CLONE_NEWIPC
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWCGROUP
)


def forked_events(child: Callable[[int], int], end: Callable[[int], None]) -> Iterator[dict[str, Any]]:
    """Fork a process that reports on a Channel, yield its events, end it.

    ``child(write_fd)`` runs in the fork and returns its exit status (or
    exits itself); whatever it raises reaches the host as an internal error,
    never as a second copy of the CLI. ``end(pid)`` reaps the child, also when
    the host stops reading early."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_fd)
            code = child(write_fd)
        except BaseException:  # noqa: BLE001 - the child must never return into the CLI
            try:
                Channel(write_fd).send("error", error="internal", message=traceback.format_exc())
            except OSError:
                pass
        os._exit(code if 0 <= code < 256 else 1)
    os.close(write_fd)
    try:
        yield from read_events(read_fd)
    finally:
        end(pid)


InsideFunction = Callable[["SandboxSession", Channel], dict[str, Any]]


@dataclasses.dataclass
class SandboxSession:
    """What code running inside knows about its sandbox."""

    plan: SandboxPlan
    layer_fds: dict[str, int]  # mountpoint -> fd of its layer dir (reachable after pivot_root)
    stage_fd: int
    lower_fds: dict[str, int] = dataclasses.field(default_factory=dict)  # mountpoint -> pinned lower

    def measure(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """What each layer's upper holds, and what the real run would add to its mount."""
        return measure_layers(self.layer_fds, self.lower_fds)

    def upper_free_bytes(self) -> int:
        """Room left where the uppers live (the tmpfs, or the disk upper)."""
        info = os.fstatvfs(self.layer_fds.get("/", self.stage_fd))
        return info.f_bavail * info.f_frsize


def measure_layers(
    layer_fds: dict[str, int], lower_fds: dict[str, int]
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Per mount point: the bytes allocated in its layer's upper directory
    (what the rehearsal wrote), and its growth as the real run would see it
    (layer_growth). ``layer_fds`` are the layer directories, ``lower_fds``
    the pinned lowers."""
    upper = {mountpoint: tree_bytes(fd, "upper") for mountpoint, fd in layer_fds.items()}
    growth = {mountpoint: layer_growth(fd, lower_fds.get(mountpoint)) for mountpoint, fd in layer_fds.items()}
    return upper, growth


# apt's binary caches: rebuilt whole by the first apt tool after dpkg has
# changed the status file, in the replay as in the real run; what they
# weigh says nothing about the room the transaction needs.
REGENERATED = {("var/cache/apt", "pkgcache.bin"), ("var/cache/apt", "srcpkgcache.bin")}
# What the booted copy itself writes (its journal), not the transaction.
BOOT_ONLY = ("var/log/journal",)


def layer_growth(layer_fd: int, lower_fd: int | None) -> dict[str, int]:
    """How much the target's own mount grows when the real run writes what
    this layer's upper holds: each file's new allocation minus what the
    file it replaces had, whiteouts as what they delete. The upper's own
    size counts every replaced file whole, which is not the space the real
    run needs."""
    upper_total = growth = peak_extra = 0
    for dirpath, _, files, fd in os.fwalk("upper", dir_fd=layer_fd):
        relative_dir = dirpath[len("upper") :].lstrip("/")
        for filename in files:
            if (relative_dir, filename) in REGENERATED or relative_dir.startswith(BOOT_ONLY):
                continue
            try:
                info = os.stat(filename, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            lower_bytes = 0
            if lower_fd is not None:
                try:
                    lower = os.stat(
                        os.path.join(relative_dir, filename) if relative_dir else filename,
                        dir_fd=lower_fd,
                        follow_symlinks=False,
                    )
                    lower_bytes = lower.st_blocks * 512
                except OSError:
                    lower_bytes = 0
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:  # an overlay whiteout: a deletion
                growth -= lower_bytes
                continue
            allocated = info.st_blocks * 512
            upper_total += allocated
            data_source = _metacopy_source(fd, filename, relative_dir, info)
            if data_source is not None and lower_fd is not None:
                # Only the inode was copied up; the data is still the lower
                # file's (the same path, or the one it was renamed from).
                try:
                    allocated = os.stat(data_source, dir_fd=lower_fd, follow_symlinks=False).st_blocks * 512
                except OSError:
                    allocated = 0
            growth += allocated - lower_bytes
            # dpkg unpacks the new file beside the old one, then renames:
            # for a moment both are there.
            peak_extra = max(peak_extra, lower_bytes)
    return {"upper_bytes": upper_total, "growth_bytes": growth, "peak_extra_bytes": peak_extra}


METACOPY_XATTR = "trusted.overlay.metacopy"
REDIRECT_XATTR = "trusted.overlay.redirect"


def _metacopy_source(dir_fd: int, filename: str, relative_dir: str, info: os.stat_result) -> str | None:
    """The lower path holding the data of a metacopy upper file, or None
    when the upper file has its own data."""
    if not stat.S_ISREG(info.st_mode) or info.st_blocks * 512 >= info.st_size:
        return None  # data of its own (a metacopy file is all hole)
    path = f"/proc/self/fd/{dir_fd}/{filename}"
    try:
        os.getxattr(path, METACOPY_XATTR, follow_symlinks=False)
    except OSError:
        return None  # a sparse file, not a metacopy
    try:
        redirect = os.fsdecode(os.getxattr(path, REDIRECT_XATTR, follow_symlinks=False))
    except OSError:
        redirect = ""
    if redirect.startswith("/"):
        return redirect.lstrip("/")
    return os.path.join(relative_dir, redirect or filename) if relative_dir else (redirect or filename)


def tree_bytes(dir_fd: int, name: str) -> int:
    total = 0
    for _, _, files, fd in os.fwalk(name, dir_fd=dir_fd):
        for filename in files:
            try:
                total += os.stat(filename, dir_fd=fd, follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    return total


class SandboxRunner:
    """Forks the sandbox, runs ``inside`` there, yields its events."""

    def __init__(self, spec: SandboxSpec, plan: SandboxPlan) -> None:
        self.spec = spec
        self.plan = plan

    def run(self, inside: InsideFunction) -> Iterator[dict[str, Any]]:
        # Built here, loaded in the sandbox's PID 1 after pivot_root.
        syscall_filter = confine.build_filter()
        parent = os.getpid()
        yield from forked_events(
            lambda write_fd: _child_main(self.plan, inside, write_fd, syscall_filter, parent), _end_child
        )


def _end_child(pid: int) -> None:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            kill_and_reap(pid)  # still running (we are unwinding early): end what we started
    except ChildProcessError:
        pass


def _child_main(
    plan: SandboxPlan, inside: InsideFunction, write_fd: int, syscall_filter: Any, parent: int
) -> int:  # pragma: no cover
    """The intermediate process: unshare, then fork the sandbox's PID 1."""
    channel = Channel(write_fd)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent died before the line above (compared with its pid, not with 1:
    # apt-rehearse may itself be PID 1 of a container's pid namespace).
    if os.getppid() != parent:
        os._exit(1)
    try:
        syscalls.unshare(SANDBOX_NAMESPACES)
    except OSError as error:
        channel.send(
            "error",
            error="unsupported",
            message=(
                f"cannot create private namespaces ({error.strerror}); apt-rehearse needs to run as real root, "
                "not in an unprivileged container"
            ),
        )
        return 3
    init_pid = os.fork()
    if init_pid == 0:
        _init_main(plan, inside, channel, syscall_filter)
    # Keep our own descriptor closed so EOF reaches the host when init ends.
    os.close(write_fd)
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status)


def _init_main(
    plan: SandboxPlan, inside: InsideFunction, channel: Channel, syscall_filter: Any
) -> None:  # pragma: no cover
    """PID 1 of the sandbox: build the mounts, pivot, confine, run ``inside``."""
    code = 0
    try:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        ctx = Context()
        stage_fd = -1
        layer_fds: dict[str, int] = {}
        for step in plan.steps:
            if isinstance(step, (PivotRoot, ChrootInto)):
                # Keep handles on the layers: after pivot_root they are
                # unreachable by path, and the report measures them.
                stage_fd = os.open(plan.stage, os.O_RDONLY | os.O_DIRECTORY)
                for layer in plan.layers:
                    layer_fds[layer.mountpoint] = os.open(layer.layer_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                step.execute(ctx)
            except RehearsalError:
                raise
            except OSError as error:
                raise UnsupportedSystem(f"sandbox step failed: {step.describe()}: {error}") from error
        lower_fds = {layer.mountpoint: ctx.pinned[layer.lower] for layer in plan.layers if layer.lower in ctx.pinned}
        for fd in set(ctx.pinned.values()) - set(lower_fds.values()):
            os.close(fd)
        session = SandboxSession(plan, layer_fds, stage_fd, lower_fds)
        try:
            confine.confine(syscall_filter)
        except OSError as error:
            raise UnsupportedSystem(
                f"cannot confine the sandbox ({error}); apt-rehearse will not run a rehearsal " "it cannot confine"
            ) from error
        result = inside(session, channel)
        channel.send("result", result=result)
    except RehearsalLimit as error:
        channel.send("error", error="limit", message=str(error))
        code = 1
    except UnsupportedSystem as error:
        channel.send("error", error="unsupported", message=str(error))
        code = 3
    except RehearsalError as error:
        channel.send("error", error="failed", message=str(error))
        code = 1
    except BaseException:  # noqa: BLE001
        channel.send("error", error="internal", message=traceback.format_exc())
        code = 1
    os._exit(code)


def cleanup_upper_dir(path: str) -> None:
    """Remove a disk upper of ours; overlay work dirs can hold root-only 000 dirs."""
    shutil.rmtree(path, ignore_errors=True)
