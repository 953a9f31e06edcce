"""Boot the rehearsed system's own init, and run code beside its services.

A keeper process holds a private mount namespace with the overlay layers
(built once); each boot is a child of it in fresh pid, net, ipc, uts, cgroup
and mount namespaces whose PID 1 execs the system's init (systemd) on those
layers, with fresh /proc, /dev, /run and /tmp. Booting again after the
upgrade boots the very same layers: a reboot into the upgraded system.

Code runs inside through ``run_inside``: a process that joins the booted
PID 1's namespaces (setns) and its root, so apt, systemctl and the probes
see exactly what the services see. Everything dies with the keeper: boots
with their pid namespace, layers with the keeper's mount namespace. The
booted init and every process that joins it run confined (confine.py):
the bounding set and the seccomp filter, set before init is exec'd, pass to
every service; a joiner confines itself once it has joined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
import traceback
from typing import Any, Callable, Iterator

from apt_rehearse.sandbox import confine
from apt_rehearse.sandbox import syscalls
from apt_rehearse.sandbox.processes import kill_and_reap
from apt_rehearse.sandbox.cgroups import SandboxCgroup
from apt_rehearse.model.errors import ERROR_KINDS, RehearsalError, UnsupportedSystem, from_kind
from apt_rehearse.sandbox.namespaces import (
    SANDBOX_NAMESPACES,
    Channel,
    Context,
    SandboxPlan,
    forked_events,
    measure_layers,
)

INIT_CANDIDATES = ("/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd")
SIGRTMIN = 34
POWEROFF = SIGRTMIN + 4  # systemd: "start poweroff.target"

# Held back inside the sandbox: what acts on the outside world or on time
# (jobs, mail runs, backups, network set-up and waits, terminals). Every
# *.timer is masked too.
HELD_BACK = (
    "cron.service",
    "anacron.service",
    "atd.service",
    "unattended-upgrades.service",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "man-db.service",
    "logrotate.service",
    "e2scrub_reap.service",
    "fstrim.service",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "systemd-networkd-wait-online.service",
    "NetworkManager-wait-online.service",
    "ifupdown-wait-online.service",
    "networking.service",
    "NetworkManager.service",
    "systemd-networkd.service",
    "wpa_supplicant.service",
    "ModemManager.service",
    "dhcpcd.service",
    "systemd-timesyncd.service",
    "chrony.service",
    "ntp.service",
    "ntpsec.service",
    "rsync.service",
    "smartmontools.service",
    "systemd-firstboot.service",
    # The host's FUSE connections (fusectl can abort them): the confinement
    # refuses the mount, so the unit would fail in every boot of the copy.
    "sys-fs-fuse-connections.mount",
)
UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")


def find_init(root: str, candidates: tuple[str, ...] = INIT_CANDIDATES) -> str | None:
    """The system's init when it is systemd; None for systems without it."""
    for candidate in candidates:
        path = os.path.join(root, candidate.lstrip("/"))
        for _ in range(10):  # resolve links inside the tree, not on the host
            if not os.path.islink(path):
                break
            link = os.readlink(path)
            path = (
                os.path.join(root, link.lstrip("/"))
                if link.startswith("/")
                else os.path.join(os.path.dirname(path), link)
            )
        if os.path.isfile(path) and os.path.basename(path) == "systemd":
            return candidate
    return None


def hold_back(root: str) -> list[str]:
    """Mask, in the overlay only, what must not run inside the sandbox."""
    masked = []
    names = set(HELD_BACK)
    for directory in UNIT_DIRS:
        full = os.path.join(root, directory)
        if os.path.isdir(full):
            names.update(name for name in os.listdir(full) if name.endswith(".timer"))
    target_dir = os.path.join(root, "etc/systemd/system")
    os.makedirs(target_dir, exist_ok=True)
    for name in sorted(names):
        path = os.path.join(target_dir, name)
        if os.path.lexists(path) and not os.path.islink(path):
            continue
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink("/dev/null", path)
        masked.append(name)
    return masked


@dataclasses.dataclass(frozen=True)
class BootSpec:
    """What the keeper, its boot children and the booted PID 1 are given:
    they run in processes of their own, forked from the host's client."""

    plan: SandboxPlan
    init: str
    syscall_filter: Any  # confine.build_filter()


class BootedSandbox:
    """The keeper, its boots, and code run beside the services."""

    def __init__(self, plan: SandboxPlan, init: str, cgroup: SandboxCgroup, boot_timeout: float = 90.0) -> None:
        self.plan = plan
        self.init = init
        self.cgroup = cgroup
        self.boot_timeout = boot_timeout
        self.keeper: int | None = None
        self.pid1: int | None = None
        self.boots = 0
        self.masked: list[str] = []
        self.syscall_filter = confine.build_filter()

    # -- the keeper ----------------------------------------------------------

    def start(self) -> None:
        command_read, command_write = os.pipe2(os.O_CLOEXEC)
        reply_read, reply_write = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the keeper
            os.close(command_write)
            os.close(reply_read)
            keeper_main(BootSpec(self.plan, self.init, self.syscall_filter), command_read, reply_write)
        os.close(command_read)
        os.close(reply_write)
        self.keeper = pid
        self._commands = os.fdopen(command_write, "w", buffering=1)
        self._replies = os.fdopen(reply_read, "r")
        self.cgroup.adopt(pid)
        self._ask({"do": "go", "cgroup": self.cgroup.path})

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self._commands.write(json.dumps(command) + "\n")
        self._commands.flush()
        line = self._replies.readline()
        if not line:
            raise RehearsalError("the sandbox keeper died (killed? out of memory?)")
        reply = json.loads(line)
        if reply.get("error"):
            kind = reply.get("kind")
            raise from_kind(kind, reply["error"]) if kind in ERROR_KINDS else RehearsalError(reply["error"])
        return reply

    # -- what the rehearsal drives ------------------------------------------------

    def boot(self) -> int:
        self.boots += 1
        self.pid1 = self._ask({"do": "boot", "n": self.boots})["pid1"]
        return self.pid1

    def poweroff(self, timeout: float = 60) -> bool:
        """A clean shutdown (services stop as on a real reboot); timeout 0 just ends it."""
        clean = self._ask({"do": "poweroff", "timeout": timeout})["clean"]
        self.pid1 = None
        return clean

    def measure(self) -> dict[str, Any]:
        return self._ask({"do": "measure"})

    def stop(self) -> None:
        """End everything: the keeper's death takes boots and layers with it."""
        if self.keeper is None:
            return
        try:
            self._ask({"do": "exit"})
        except (RehearsalError, OSError, ValueError):
            pass
        kill_and_reap(self.keeper)
        self.keeper = None
        for stream in (self._commands, self._replies):
            try:
                stream.close()
            except OSError:
                pass
        self.cgroup.remove()

    def _namespace_fds(self) -> tuple[dict[str, int], int]:
        if self.pid1 is None:
            raise RehearsalError("nothing is booted")
        fds = {name: os.open(f"/proc/{self.pid1}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in JOIN_ORDER}
        return fds, os.open(f"/proc/{self.pid1}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def shell(self, argv: list[str], env: dict[str, str]) -> int:
        """An interactive program inside the booted system, on our terminal."""
        fds, root_fd = self._namespace_fds()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - joins the sandbox
            try:
                syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
                _join(fds, root_fd)
                supervisor = confine.confine(self.syscall_filter)
                child = os.fork()
                if child == 0:
                    os.execvpe(argv[0], argv, env)
                _, status = os.waitpid(child, 0)
                kill_and_reap(supervisor)  # under the filter it serves, it would wait for ever (0: none of ours)
                os._exit(max(0, os.waitstatus_to_exitcode(status)) & 0xFF)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                os._exit(127)
        for fd in (*fds.values(), root_fd):
            os.close(fd)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C belongs to the shell
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            signal.signal(signal.SIGINT, previous)
        return os.waitstatus_to_exitcode(status)

    def run_inside(self, function: Callable[[Channel], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Run ``function`` in the booted system's namespaces; yield its events."""
        fds, root_fd = self._namespace_fds()
        filter_ = self.syscall_filter
        weighed = [path for path in (self.cgroup.path, *self.cgroup.v1_paths) if path]

        def joiner(write_fd: int) -> int:  # pragma: no cover - joins the sandbox
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            # The replay (apt, dpkg, the scripts) counts and weighs as the
            # booted services do: in the sandbox's cgroup (its memory limit,
            # its weights), and on a hybrid host its cgroup v1 cpu group.
            for path in weighed:
                with contextlib.suppress(OSError), open(f"{path}/cgroup.procs", "w", encoding="ascii") as handle:
                    handle.write(str(os.getpid()))
            _join(fds, root_fd)
            supervisor = confine.confine(filter_)
            worker = os.fork()  # only children enter the pid namespace
            if worker == 0:
                channel = Channel(write_fd)
                try:
                    channel.send("result", result=function(channel))
                    os._exit(0)
                except RehearsalError as error:
                    channel.send("error", error="failed", message=str(error))
                except BaseException:  # noqa: BLE001
                    channel.send("error", error="internal", message=traceback.format_exc())
                os._exit(1)
            os.close(write_fd)
            _, status = os.waitpid(worker, 0)
            kill_and_reap(supervisor)  # under the filter it serves, it would wait for ever (0: none of ours)
            return os.waitstatus_to_exitcode(status)

        try:
            yield from forked_events(joiner, _end_joiner)
        finally:
            for fd in (*fds.values(), root_fd):
                os.close(fd)


JOIN_ORDER = ("ipc", "uts", "net", "cgroup", "pid", "mnt")


def _end_joiner(pid: int, grace: float = 5.0) -> None:
    """Reap the process that joined the sandbox, killing it only if it does not end.

    Once its worker has sent everything, the joiner is about to reap that
    worker and exit. Killing it in that instant orphans the worker's zombie
    outside the sandbox's pid namespace (to a subreaper of ours, when there
    is one); until someone reaps it, the booted PID 1 cannot finish exiting
    and the next poweroff waits for ever.
    """
    deadline = time.monotonic() + grace
    try:
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.01)
    except ChildProcessError:
        return
    kill_and_reap(pid)


def _join(fds: dict[str, int], root_fd: int) -> None:  # pragma: no cover - in a child
    """Enter the booted system's namespaces and its root (as nsenter -a -r -w)."""
    for name in JOIN_ORDER:
        syscalls.setns(fds[name], 0)
    os.fchdir(root_fd)
    os.chroot(".")
    os.chdir("/")


# ---------------------------------------------------------------------------
# The keeper's process, its boot children, and the booted PID 1 before it execs init


def keeper_main(spec: BootSpec, command_read: int, reply_write: int) -> None:  # pragma: no cover - runs in the keeper
    """The keeper: holds the layers in its mount namespace, boots and powers off on command."""
    replies = os.fdopen(reply_write, "w", buffering=1)
    commands = os.fdopen(command_read, "r")

    def reply(**payload: Any) -> None:
        replies.write(json.dumps(payload) + "\n")
        replies.flush()

    ctx = Context()
    boot_child = pid1 = None
    cgroup_path = ""
    try:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        for line in commands:
            command = json.loads(line)
            action = command["do"]
            try:
                if action == "go":
                    cgroup_path = command["cgroup"]
                    syscalls.unshare(syscalls.CLONE_NEWNS)
                    for step in spec.plan.layer_steps:
                        step.execute(ctx)
                    reply(masked=hold_back(spec.plan.new_root))
                elif action == "boot":
                    boot_child, pid1 = _boot(spec, ctx, os.path.join(cgroup_path, f"boot-{command['n']}"))
                    reply(pid1=pid1)
                elif action == "poweroff":
                    reply(clean=_poweroff(boot_child, pid1, command.get("timeout", 60)))
                    boot_child = pid1 = None
                elif action == "measure":
                    fds = {
                        layer.mountpoint: os.open(layer.layer_dir, os.O_RDONLY | os.O_DIRECTORY)
                        for layer in spec.plan.layers
                    }
                    lowers = {
                        layer.mountpoint: ctx.pinned[layer.lower]
                        for layer in spec.plan.layers
                        if layer.lower in ctx.pinned
                    }
                    try:
                        bytes_by_layer, growth = measure_layers(fds, lowers)
                    finally:
                        for fd in fds.values():
                            os.close(fd)
                    info = os.statvfs(spec.plan.layers[0].layer_dir)
                    reply(upper_bytes=bytes_by_layer, growth=growth, free=info.f_bavail * info.f_frsize)
                elif action == "exit":
                    _poweroff(boot_child, pid1, 0)
                    boot_child = pid1 = None
                    reply(bye=True)
                    break
            except UnsupportedSystem as error:
                reply(error=str(error), kind="unsupported")
            except OSError as error:
                reply(error=f"{action}: {error}", kind="unsupported" if action == "go" else "failed")
    except BaseException:  # noqa: BLE001
        try:
            reply(error=traceback.format_exc().strip().splitlines()[-1], kind="failed")
        except OSError:
            pass
    if pid1:
        _poweroff(boot_child, pid1, 5)
    os._exit(0)


def _boot(spec: BootSpec, ctx: Context, cgroup_path: str) -> tuple[int, int]:  # pragma: no cover - in the keeper
    os.makedirs(cgroup_path, exist_ok=True)
    pid_read, pid_write = os.pipe()
    # Closed by the execve of init (O_CLOEXEC): EOF on it means init runs,
    # so nothing joins the new PID 1 before its mounts and pivot_root are done.
    exec_read, exec_write = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(pid_read)
            os.close(exec_read)
            # Dies with the keeper; its PID 1 dies with it, and with that
            # PID 1 every process of the boot.
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            with open(os.path.join(cgroup_path, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write(str(os.getpid()))
            syscalls.unshare(SANDBOX_NAMESPACES)
            pid1 = os.fork()
            if pid1 == 0:
                _exec_init(spec, ctx, exec_write)
            os.close(exec_write)
            os.write(pid_write, f"{pid1}\n".encode())
            os.close(pid_write)
            while True:
                try:
                    os.waitpid(pid1, 0)
                    break
                except InterruptedError:
                    continue
        except BaseException:  # noqa: BLE001
            os.write(exec_write, traceback.format_exc().strip().splitlines()[-1].encode())
            os.write(pid_write, b"0\n")
        os._exit(0)
    os.close(pid_write)
    os.close(exec_write)
    with os.fdopen(pid_read) as handle:
        pid1 = int(handle.readline().strip() or "0")
    with os.fdopen(exec_read, "rb") as handle:
        failure = handle.read().decode("utf-8", "replace").strip()
    if not pid1 or failure:
        os.waitpid(child, 0)
        raise RehearsalError(f"the sandbox could not start the system's init: {failure or 'unknown error'}")
    return child, pid1


def _exec_init(spec: BootSpec, ctx: Context, exec_write: int) -> None:  # pragma: no cover - becomes the sandbox's PID 1
    try:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        for step in spec.plan.boot_steps:
            step.execute(ctx)
        for fd in ctx.pinned.values():
            os.close(fd)
        confine.confine(spec.syscall_filter)
        env = {
            "container": "apt-rehearse",
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        null = os.open("/dev/null", os.O_RDWR)
        # The console of the booted system is /dev/null (its journal
        # keeps what matters); APT_REHEARSE_DEBUG shows it on stderr.
        for fd in (0, 1, 2) if not os.environ.get("APT_REHEARSE_DEBUG") else (0,):
            os.dup2(null, fd)
        os.execve(spec.init, [spec.init], env)
    except BaseException as error:  # noqa: BLE001
        os.write(exec_write, f"{error.__class__.__name__}: {error}".encode())
        os._exit(127)


def _poweroff(child: int | None, pid1: int | None, timeout: float) -> bool:  # pragma: no cover - in the keeper
    if not child or not pid1:
        return True
    clean = True
    try:
        os.kill(pid1, POWEROFF if timeout > 0 else signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            return clean
        time.sleep(0.05)
    kill_and_reap(pid1, reap=child)
    return False
