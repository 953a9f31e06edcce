"""The confinement's own tables and decisions (confine.py), against nspawn's."""

from __future__ import annotations

import os
import tempfile

import pytest

from apt_rehearse.sandbox import confine

seccomp = pytest.importorskip("seccomp")

# systemd-nspawn's DEFAULT_CAPABILITY (src/nspawn/nspawn.c).
NSPAWN_DEFAULT = {
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_NICE",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TTY_CONFIG",
}


def test_capabilities_are_nspawns_less_mknod_and_audit_control_plus_net_admin() -> None:
    assert set(confine.KEPT) == (NSPAWN_DEFAULT - {"CAP_MKNOD", "CAP_AUDIT_CONTROL"}) | {"CAP_NET_ADMIN"}
    for gone in (
        "CAP_SYS_MODULE",
        "CAP_SYS_TIME",
        "CAP_SYS_RAWIO",
        "CAP_MKNOD",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYSLOG",
    ):
        assert not confine.KEPT_MASK & (1 << confine.CAPABILITIES[gone]), gone


@pytest.mark.parametrize(
    ("fstype", "flags", "allowed"),
    [
        ("binfmt_misc", 0, False),
        ("debugfs", 0, False),
        ("tracefs", 0, False),
        ("securityfs", 0, False),
        ("efivarfs", 0, False),
        ("devtmpfs", 0, False),
        ("bpf", 0, False),
        ("configfs", 0, False),
        ("sysfs", 0, False),
        ("sysfs", confine.MS_RDONLY, True),
        ("tmpfs", 0, True),
        ("proc", 0, True),
        ("cgroup2", 0, True),
        ("mqueue", 0, True),
        ("overlay", 0, True),
    ],
)
def test_which_new_mounts_stay_inside(fstype: str, flags: int, allowed: bool) -> None:
    assert confine.mount_allowed(fstype, flags) is allowed


def _pfc(syscall_filter: object) -> str:
    with tempfile.TemporaryFile("w+") as handle:
        syscall_filter.export_pfc(handle)  # type: ignore[attr-defined]
        handle.seek(0)
        return handle.read()


def test_the_filter_refuses_what_acts_on_the_host_kernel() -> None:
    text = _pfc(confine.build_filter())
    for name in (
        "swapon",
        "init_module",
        "finit_module",
        "kexec_load",
        "clock_settime",
        "settimeofday",
        "bpf",
        "perf_event_open",
        "open_by_handle_at",
        "keyctl",
        "syslog",
        "acct",
        "iopl",
    ):
        rule = text.split(f'# filter for syscall "{name}"', 1)
        assert len(rule) == 2, name
        assert rule[1].split("# filter for", 1)[0].strip().endswith("action ERRNO(1);"), name  # EPERM
    # mount(2) of a new file system goes to the supervisor (SCMP_ACT_NOTIFY), binds and remounts do not.
    mount = text.split('# filter for syscall "mount"', 1)[1].split("# filter for", 1)[0]
    assert "action 0x7fc00000" in mount and f"0x{confine.TYPE_IGNORED & 0xFFFFFFFF:08x} == 0" in mount
    nested = _pfc(confine.build_filter(supervised=False))
    assert '"mount"' not in nested and "0x7fc00000" not in nested


def test_strings_of_another_process_are_read_up_to_their_nul() -> None:
    import ctypes

    buffer = ctypes.create_string_buffer(b"binfmt_misc\0garbage")
    assert confine._read_string(os.getpid(), ctypes.addressof(buffer)) == "binfmt_misc"
    assert confine._read_string(os.getpid(), 0) == ""
