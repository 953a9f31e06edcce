"""Confinement: what runs inside the sandbox cannot reach the host's kernel.

Namespaces give the sandbox its own mounts, pids, network, hostname and
cgroups, but the kernel's global state is not namespaced: sysctl outside
/proc/sys/net, modules, the clock, binfmt_misc, swap, kexec, devices, the
kernel log, keyrings, audit, BPF and perf. A booted systemd applies the
tree's sysctl.d (systemd-sysctl), a postinst runs modprobe, a time daemon
sets the clock: ordinary behaviour that, with every capability of the init
user namespace, lands on the host.

Everything inside (the booted init and its services, the replay's apt, dpkg
and maintainer scripts, the shell, the probes) runs confined as
systemd-nspawn confines a container, its lists the reference:

- a reduced capability bounding set (KEPT below; dropped from the effective,
  permitted, inheritable and ambient sets too, so nothing exec'd regains them);
- a seccomp filter returning EPERM for the syscalls that act on global state
  (DENIED below), from Debian's python3-seccomp, on every architecture the
  kernel runs for this machine (an i386 binary gets the same rules);
- /proc/sys read-only except /proc/sys/net (the private network's own), and
  /proc entries that reach the kernel (sysrq-trigger, kcore, kmsg, ...)
  masked or read-only (ProcMasks, a mount step of the sandbox plan);
- no device but the sandbox's own: CAP_MKNOD is dropped (nspawn keeps it
  behind a device cgroup, which this host may not have), and every overlay is
  mounted nodev, so a device node already in the tree cannot be opened.

Services that need these powers are skipped as in any container: systemd's
own units carry ConditionCapability= (CAP_SYS_RAWIO for debugfs and tracefs,
CAP_SYS_TIME for time daemons, CAP_SYS_MODULE for modules) and
ConditionPathIsReadWrite=/proc/sys (systemd-sysctl, systemd-binfmt), in the
rehearsal before the upgrade as after it.

This module is imported before the sandbox forks: its code runs after
pivot_root, where only modules already loaded can be used.
"""

from __future__ import annotations

import errno
import os
import platform

from apt_rehearse.sandbox import syscalls
from apt_rehearse.model.errors import UnsupportedSystem

try:  # Debian's python3-seccomp (libseccomp's own bindings)
    import seccomp
except ImportError:  # pragma: no cover - reported by check_available
    seccomp = None  # type: ignore[assignment]

# capabilities(7) numbers.
CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# systemd-nspawn's default set, plus CAP_NET_ADMIN (nspawn adds it with a
# private network, which the sandbox always has), less CAP_MKNOD (no device
# cgroup here: see the module's docstring) and CAP_AUDIT_CONTROL (the audit
# rules are the host kernel's; nspawn keeps it only because audit is off in
# its containers anyway).
KEPT = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_OWNER",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TTY_CONFIG",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_SETFCAP",
    }
)

# What nspawn's allow list leaves out, as a deny list (the sandbox runs the
# system's own software, which may use any other syscall): its groups
# @clock, @module, @raw-io, @swap, @keyring, @cpu-emulation, @obsolete, and
# the syscalls it names one by one. CAP_SYS_ADMIN, which systemd needs to
# mount, would allow several of them (swapon, bpf, perf, quotactl, fanotify).
DENIED = (
    # @clock: the host's clock (date -s, hwclock, ntp daemons)
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_settime",
    "clock_settime64",
    "settimeofday",
    "stime",
    # @module
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    # @raw-io
    "ioperm",
    "iopl",
    "pciconfig_iobase",
    "pciconfig_read",
    "pciconfig_write",
    "s390_mmio_read",
    "s390_mmio_write",
    # @swap
    "swapon",
    "swapoff",
    # @keyring: keyrings are not namespaced
    "add_key",
    "keyctl",
    "request_key",
    # @cpu-emulation
    "modify_ldt",
    "subpage_prot",
    "switch_endian",
    "vm86",
    "vm86old",
    # @obsolete
    "_sysctl",
    "afs_syscall",
    "bdflush",
    "break",
    "ftime",
    "getpmsg",
    "gtty",
    "idle",
    "lock",
    "mpx",
    "prof",
    "profil",
    "putpmsg",
    "security",
    "sgetmask",
    "ssetmask",
    "stty",
    "sysfs",
    "tuxcall",
    "ulimit",
    "uselib",
    "ustat",
    "vserver",
    # one by one: kexec, BPF (bpffs is not namespaced), perf, fanotify,
    # open_by_handle_at (reaches host files past the mount namespace),
    # quotactl, and the capability-gated ones nspawn drops with the
    # capability (acct, syslog: the host's kernel log).
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "fanotify_init",
    "fanotify_mark",
    "open_by_handle_at",
    "lookup_dcookie",
    "nfsservctl",
    "quotactl",
    "quotactl_fd",
    "acct",
    "syslog",
)

# File systems whose instance is the host kernel's own, whatever namespace
# mounts them: a registration in binfmt_misc, a write to debugfs, tracefs,
# securityfs (LSM policy), efivarfs (firmware variables), configfs, pstore,
# bpffs or fusectl, or the host's device nodes in a devtmpfs, reach the
# host. A new sysfs instance is writable: only read-only ones are let
# through. seccomp cannot read the type string mount(2) is given, so these
# calls go to a supervisor (MountSupervisor) that reads it and answers.
# Bind, move, remount and propagation calls ignore the type: they never
# leave the kernel.
DENIED_FILESYSTEMS = frozenset(
    {
        "binfmt_misc",
        "debugfs",
        "tracefs",
        "securityfs",
        "efivarfs",
        "configfs",
        "pstore",
        "bpf",
        "fusectl",
        "devtmpfs",
        "selinuxfs",
        "smackfs",
        "apparmorfs",
        "resctrl",
    }
)
READ_ONLY_FILESYSTEMS = frozenset({"sysfs"})
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_MOVE = 1, 32, 4096, 8192
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
TYPE_IGNORED = MS_REMOUNT | MS_BIND | MS_MOVE | MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1

# /proc entries nspawn makes inaccessible (files) or read-only (directories).
PROC_INACCESSIBLE = ("kallsyms", "kcore", "keys", "kmsg", "sysrq-trigger", "timer_list", "config.gz")
PROC_READ_ONLY = ("acpi", "apm", "asound", "bus", "fs", "irq", "scsi", "sys")
PROC_WRITABLE = ("sys/net",)  # the private network namespace's own settings

# <linux/prctl.h>
PR_GET_SECCOMP = 21
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
AF_NETLINK, NETLINK_AUDIT = 16, 9  # <linux/netlink.h>


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


LAST_CAP = _last_cap()  # read on the host, before any pivot_root
KEPT_MASK = sum(1 << CAPABILITIES[name] for name in KEPT)


def _architectures() -> list[object]:
    """The native architecture and the ones the kernel also runs here."""
    if seccomp is None:
        return []
    machine = platform.machine()
    extra = {"x86_64": ("X86", "X32"), "aarch64": ("ARM",), "ppc64le": (), "s390x": ("S390",)}.get(machine, ())
    return [getattr(seccomp.Arch, name) for name in extra if hasattr(seccomp.Arch, name)]


def _need_seccomp() -> None:
    if seccomp is None:
        raise UnsupportedSystem(
            "python3-seccomp is not installed; apt-rehearse needs it to confine the sandbox "
            "(apt-get install python3-seccomp)"
        )


def build_filter(supervised: bool = True) -> "seccomp.SyscallFilter":
    """The seccomp filter everything inside runs under."""
    _need_seccomp()
    action = seccomp.ERRNO(errno.EPERM)
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    # No no_new_privs: setuid programs (su, sudo, ping's file capability)
    # must behave inside as on the host, within the bounding set.
    syscall_filter.set_attr(seccomp.Attr.CTL_NNP, 0)
    for arch in _architectures():
        try:
            syscall_filter.add_arch(arch)
        except (OSError, RuntimeError, ValueError):
            pass
    for name in DENIED:
        try:
            syscall_filter.add_rule(action, name)
        except (OSError, RuntimeError, ValueError):
            pass  # not a syscall on these architectures
    # A new mount whose type the kernel reads goes to the supervisor; the new
    # mount API's fsopen fails as on a kernel without it (util-linux and
    # systemd then use mount(2)).
    if supervised:
        syscall_filter.add_rule(seccomp.NOTIFY, "mount", seccomp.Arg(3, seccomp.MASKED_EQ, TYPE_IGNORED, 0))
    for name in ("fsopen", "fspick"):
        try:
            syscall_filter.add_rule(seccomp.ERRNO(errno.ENOSYS), name)
        except (OSError, RuntimeError, ValueError):
            pass
    # Audit is the host kernel's: as nspawn does, creating an audit socket
    # fails the way it does on a kernel without audit.
    syscall_filter.add_rule(
        seccomp.ERRNO(errno.EAFNOSUPPORT),
        "socket",
        seccomp.Arg(0, seccomp.EQ, AF_NETLINK),
        seccomp.Arg(2, seccomp.EQ, NETLINK_AUDIT),
    )
    return syscall_filter


def drop_bounding_set() -> None:
    for number in range(LAST_CAP + 1):
        if not KEPT_MASK & (1 << number) and syscalls.prctl(PR_CAPBSET_READ, number) == 1:
            syscalls.prctl(PR_CAPBSET_DROP, number)


def limit_process_capabilities() -> None:
    """This process's own sets, as a new process under the bounding set gets them."""
    effective, permitted, _inheritable = syscalls.capget()
    syscalls.capset(effective & KEPT_MASK, permitted & KEPT_MASK, 0)
    try:
        syscalls.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as error:
        if error.errno != errno.EINVAL:  # kernels before 4.3 have no ambient set
            raise


def _filtered() -> bool:
    """Whether this process already runs under a seccomp filter (prctl, not
    /proc: a joiner's /proc is a pid namespace it is not in)."""
    try:
        return syscalls.prctl(PR_GET_SECCOMP, 0) != 0
    except OSError:
        return False


def confine(syscall_filter: "seccomp.SyscallFilter") -> int:
    """Confine the calling process and everything it will start; returns the
    pid of the mount supervisor it started (a child of the caller), or 0
    when an outer sandbox's supervisor answers for it.

    The order matters: dropping from the bounding set needs CAP_SETPCAP,
    loading a filter without no_new_privs needs CAP_SYS_ADMIN; both are
    kept, but each step is done while the capability it needs is certain.
    """
    drop_bounding_set()
    try:
        syscall_filter.load()
    except (OSError, RuntimeError):
        # A process can be under one listener only: a sandbox started inside
        # a rehearsal is under the outer one's filter, whose supervisor goes
        # on answering for it. The same rules without the listener, then
        # (built here: libseccomp needs no file for it).
        if not _filtered():
            raise
        build_filter(supervised=False).load()
        limit_process_capabilities()
        return 0
    limit_process_capabilities()
    listener = syscall_filter.get_notify_fd()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the supervisor
        code = 0
        try:
            # It holds nothing of its parent's: a pipe it kept open would
            # keep the far end from seeing EOF.
            os.closerange(3, listener)
            os.closerange(listener + 1, 65536)
            supervise_mounts(syscall_filter, listener)
        except BaseException:  # noqa: BLE001 - it must never return into its parent's code
            code = 1
        os._exit(code)
    os.close(listener)
    return pid


def mount_allowed(fstype: str, flags: int) -> bool:
    """Whether a new mount of this type stays inside the sandbox."""
    if fstype in DENIED_FILESYSTEMS:
        return False
    return fstype not in READ_ONLY_FILESYSTEMS or bool(flags & MS_RDONLY)


def _read_string(pid: int, address: int, limit: int = 64) -> str | None:
    """A NUL-terminated string of another process, read through /proc."""
    if not address:
        return ""
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            memory.seek(address)
            # Up to the page's end first: the string may end before an unmapped page.
            first = min(limit, 4096 - address % 4096)
            data = memory.read(first)
            if b"\0" not in data and first < limit:
                try:
                    data += memory.read(limit - first)
                except OSError:
                    pass
    except (OSError, ValueError, OverflowError):
        return None
    return data.split(b"\0", 1)[0].decode("ascii", "replace")


def _still_waiting(listener: int, notification_id: int) -> bool:
    import fcntl
    import struct

    for request in (0x40082102, 0x80082102):  # SECCOMP_IOCTL_NOTIF_ID_VALID (_IOW; _IOR before 5.17)
        try:
            fcntl.ioctl(listener, request, struct.pack("Q", notification_id))
            return True
        except OSError as error:
            if error.errno == errno.ENOENT:
                return False
    return False


def supervise_mounts(syscall_filter: "seccomp.SyscallFilter", listener: int) -> None:
    """Answer the mount(2) calls the filter hands over, until nobody is left under it.

    What is read can change between the read and the kernel going on (a
    second thread of the caller rewriting the string): a deliberate process
    can win that race, which the kernel's documentation says of every such
    supervisor; an ordinary package or service cannot.
    """
    import select

    poller = select.poll()
    poller.register(listener, select.POLLIN)
    while True:
        events = poller.poll()
        if any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in events):
            return  # every process under the filter is gone
        try:
            notification = syscall_filter.receive_notify()
        except (OSError, RuntimeError, ValueError):
            continue  # the caller died meanwhile
        fstype = _read_string(notification.pid, notification.syscall_args[2])
        if not _still_waiting(listener, notification.id):
            continue
        flags = notification.syscall_args[3]
        if fstype is not None and mount_allowed(fstype, flags):
            response = seccomp.NotificationResponse(notification, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        else:
            response = seccomp.NotificationResponse(notification, 0, -errno.EPERM, 0)
        try:
            syscall_filter.respond_notify(response)
        except (OSError, RuntimeError, ValueError):
            pass


def check_available() -> None:
    """One clear line (exit 3) when this host cannot confine a sandbox."""
    _need_seccomp()
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            has_seccomp = any(line.startswith("Seccomp:") for line in handle)
    except OSError:
        has_seccomp = False
    if not has_seccomp:
        raise UnsupportedSystem(
            "this kernel has no seccomp (CONFIG_SECCOMP_FILTER); apt-rehearse will not run "
            "a rehearsal it cannot confine to the sandbox"
        )
    try:
        effective = int(status_of().get("CapEff", "0"), 16)
    except (OSError, ValueError):
        effective = 0
    if not effective & (1 << CAPABILITIES["CAP_SETPCAP"]):
        raise UnsupportedSystem(
            "no CAP_SETPCAP here, so the sandbox's capabilities cannot be dropped; apt-rehearse "
            "will not run a rehearsal it cannot confine"
        )
    try:
        syscalls.prctl(PR_CAPBSET_READ, CAPABILITIES["CAP_SYS_MODULE"])
    except OSError as error:
        raise UnsupportedSystem(
            f"cannot read the capability bounding set ({error.strerror}); apt-rehearse will "
            "not run a rehearsal it cannot confine to the sandbox"
        ) from error


def status_of(pid: int | str = "self") -> dict[str, str]:
    """CapBnd, CapEff, Seccomp and NoNewPrivs of a process, as /proc shows them."""
    wanted = ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb", "Seccomp", "NoNewPrivs")
    result = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in wanted:
                result[key] = value.strip()
    return result
