"""The host kernel's global state, and a hostile package that reaches for it.

Namespaces do not isolate the kernel's settings, modules, clock, binfmt_misc,
swap, kexec or devices; the sandbox's confinement must. rh-hostile's postinst
and its service (started at every boot of the rehearsed system) try each
change an ordinary package or service might make, one line each
("HOSTILE postinst sysctl-vm: refused (...)"), and this module reads the
host's side of the same things before and after: every readable /proc/sys
value, /proc/modules, /proc/swaps, the binfmt_misc entries (through a
binfmt_misc mount this module holds in a private mount namespace for the
whole run: the kernel drops the entries of an instance nobody has mounted,
which would hide a registration), the clock against the monotonic clock,
and the bytes and times of a loop device's backing file.

Every attempt is harmless if it got through: a sysctl is set to a value the
test restores, the clock to the time it has, the loop device's first block
written back with its own bytes, a binfmt handler for an extension nobody
uses (removed afterwards), swapon and module calls with arguments the kernel
rejects after the permission check (so a call that reached the kernel says
ENOENT, EFAULT or EBADF, and a confined one EPERM).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, install_into

from rel_scenario import REPLAY_MARK

# The syscalls are tried by number (perl-base's syscall()): x86_64's, where the suite runs.
ATTACK = r"""#!/bin/sh
# rh-hostile: each change to the host kernel an ordinary package might make.
where=$1
. /etc/rh-hostile.conf
out() { echo "HOSTILE $where $1: $2"; }
# try NAME COMMAND...: exit 0 = it got through, 3 = not on this machine, else refused
try() {
    name=$1; shift
    msg=$("$@" 2>&1); code=$?
    msg=$(printf '%s' "$msg" | tr '\n' ' ' | cut -c1-120)
    case $code in 0) out "$name" "ok ($msg)";; 3) out "$name" "n/a ($msg)";; *) out "$name" "refused ($msg)";; esac
}
# sys NUMBER ARGS...: EPERM/EACCES = refused; ENOSYS = not on this kernel; anything else reached the kernel
sys() {
    perl -e '@a = map { /^-?\d+$/ ? $_ + 0 : $_ } @ARGV; $n = shift @a; $! = 0;
             $r = @a == 1 ? syscall($n, $a[0]) : @a == 2 ? syscall($n, @a[0, 1]) : @a == 3 ? syscall($n, @a[0 .. 2])
                : @a == 4 ? syscall($n, @a[0 .. 3]) : syscall($n, @a[0 .. 4]);
             if ($r == -1 && ($!{EPERM} || $!{EACCES})) { print "$!"; exit 1 }
             if ($r == -1 && $!{ENOSYS}) { print "$!"; exit 3 }
             print "reached the kernel: ", ($r == -1 ? "$!" : "returned $r"); exit 0' "$@"
}
try sysctl-vm sysctl -w vm.swappiness=$SWAPPINESS
try sysctl-kernel sysctl -w kernel.printk_ratelimit=$RATELIMIT
try sysctl-fs sysctl -w fs.lease-break-time=$LEASE
try proc-sys-write sh -c "echo $RATELIMIT > /proc/sys/kernel/printk_ratelimit"
try binfmt sh -c "mkdir -p /tmp/rh-bm-$where && mount -t binfmt_misc binfmt_misc /tmp/rh-bm-$where && echo ':rh-hostile-$where:E::rhhostile::/bin/true:' > /tmp/rh-bm-$where/register"
try clock sh -c 'date -s "@$(date +%s.%N)"'
try swapon sys 167 /rh-hostile-no-such-file 0
if [ -d /lib/modules/$(uname -r) ]; then try modprobe modprobe dummy; else out modprobe "n/a (no modules for this kernel)"; fi
try init-module sys 175 0 0 ""
try finit-module sys 313 -1 "" 0
try kexec-load sys 246 0 0 0 0
try kexec-file-load sys 320 -1 -1 0 "" 0
try mknod-dev sh -c "mknod /dev/rh-loop-$where b 7 $LOOP_MINOR && dd if=/dev/rh-loop-$where of=/tmp/rh-blk-$where bs=512 count=1 status=none && dd if=/tmp/rh-blk-$where of=/dev/rh-loop-$where bs=512 count=1 conv=notrunc,fsync status=none"
try mknod-disk sh -c "mknod /var/tmp/rh-loop-$where b 7 $LOOP_MINOR && dd if=/var/tmp/rh-loop-$where of=/dev/null bs=512 count=1 status=none"
try debugfs sh -c "mkdir -p /tmp/rh-dbg-$where && mount -t debugfs debugfs /tmp/rh-dbg-$where"
try tracefs sh -c "mkdir -p /tmp/rh-trc-$where && mount -t tracefs tracefs /tmp/rh-trc-$where"
if [ -e /proc/sysrq-trigger ]; then try sysrq sh -c 'echo h > /proc/sysrq-trigger'; else out sysrq "n/a (no sysrq on this kernel)"; fi
try keyring sys 250 1 rh-hostile
try bpf sys 321 0 0 0
try perf sys 298 0 0 -1 -1 0
"""

POSTINST = f"""if [ "$1" = configure ]; then
    # What the service saw at the boot before the upgrade, then the script's own tries.
    cat /run/rh-hostile-service.out 2>/dev/null || echo "HOSTILE service none: no output"
    /usr/lib/rh-hostile/attack postinst || true
    /bin/sleep {REPLAY_MARK}
fi
"""

SERVICE = """[Unit]
Description=rh-hostile: reaches for the host kernel at boot

[Service]
ExecStart=/bin/sh -c '/usr/lib/rh-hostile/attack service > /run/rh-hostile-service.out 2>&1; exec sleep infinity'

[Install]
WantedBy=multi-user.target
"""

ENABLE = """if [ "$1" = configure ]; then
    systemctl enable rh-hostile.service >/dev/null 2>&1 || true
fi
"""

# Keys this suite's targets set (and restores); every other readable key is compared as it is.
TARGET_KEYS = ("vm/swappiness", "kernel/printk_ratelimit", "fs/lease-break-time")
# Values the kernel changes by itself.
VOLATILE = re.compile(
    r"^(kernel/random/|fs/(dentry-state|dentry-negative|inode-nr|inode-state|file-nr|aio-nr)$"
    r"|kernel/(ns_last_pid|pty/nr|perf_event_max_sample_rate)$|net/netfilter/nf_conntrack_count$)"
)


def read_sysctls() -> dict[str, str]:
    """Every readable setting: the writable entries of /proc/sys (a read-only
    one is a statistic the kernel keeps, fs/quota/syncs, not a setting)."""
    values = {}
    for dirpath, _dirs, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(dirpath, name)
            key = path[len("/proc/sys/") :]
            try:
                if not os.stat(path).st_mode & 0o222:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                values[key] = os.read(fd, 65536).decode("utf-8", "replace")
            except OSError:
                pass
            finally:
                os.close(fd)
    return values


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


class BinfmtWatch:
    """A binfmt_misc mount of the host's instance, held in a private mount namespace."""

    def __init__(self, base: Path) -> None:
        self.point = base / "binfmt"
        self.point.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'mount -t binfmt_misc binfmt_misc "{self.point}" && echo ready && exec sleep 100000',
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        self.view = Path(f"/proc/{self.process.pid}/root") / str(self.point).lstrip("/")

    def entries(self) -> list[str]:
        return sorted(name for name in os.listdir(self.view) if name not in ("register", "status"))

    def remove(self, name: str) -> None:
        (self.view / name).write_text("-1\n")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.point, ignore_errors=True)


@dataclasses.dataclass
class KernelState:
    sysctl: dict[str, str]
    modules: str | None
    swaps: str | None
    binfmt: list[str]
    clock_offset: float  # realtime - monotonic
    kexec_loaded: str | None
    loop_file: tuple[str, int, int]  # sha256, mtime_ns, ctime_ns


@dataclasses.dataclass
class Hostile:
    base: Path
    tree: Path
    repo: LocalRepo
    loop_file: Path
    loop_device: str
    binfmt: BinfmtWatch
    original: dict[str, str]  # the target keys' values before the suite
    volatile: set[str]

    def state(self) -> KernelState:
        info = self.loop_file.stat()
        return KernelState(
            read_sysctls(),
            _read("/proc/modules"),
            _read("/proc/swaps"),
            self.binfmt.entries(),
            time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC),
            _read("/sys/kernel/kexec_loaded"),
            (hashlib.sha256(self.loop_file.read_bytes()).hexdigest(), info.st_mtime_ns, info.st_ctime_ns),
        )

    def restore(self) -> None:
        """Put back whatever got through (the test fails on it all the same)."""
        for key, value in self.original.items():
            if read_sysctls().get(key) != value:
                Path("/proc/sys", key).write_text(value)
        for name in self.binfmt.entries():
            if name.startswith("rh-hostile"):
                self.binfmt.remove(name)

    def stop(self) -> None:
        self.restore()
        self.binfmt.stop()
        subprocess.run(["losetup", "-d", self.loop_device], check=False)
        self.loop_file.unlink(missing_ok=True)


def differences(hostile: Hostile, before: KernelState, after: KernelState) -> dict[str, list[str]]:
    """What changed in the host's kernel, by row of the reliability table."""
    found: dict[str, list[str]] = {}
    changed = [
        key
        for key in set(before.sysctl) | set(after.sysctl)
        if before.sysctl.get(key) != after.sysctl.get(key) and key not in hostile.volatile
    ]
    for key in sorted(changed):
        found.setdefault("sysctl", []).append(f"{key}: {before.sysctl.get(key)!r} -> {after.sysctl.get(key)!r}")
    if before.modules != after.modules:
        found.setdefault("modules", []).append("/proc/modules changed")
    if before.swaps != after.swaps:
        found.setdefault("swap", []).append(f"/proc/swaps: {after.swaps!r}")
    if before.binfmt != after.binfmt:
        found.setdefault("binfmt", []).append(f"binfmt_misc entries {before.binfmt} -> {after.binfmt}")
    if abs(after.clock_offset - before.clock_offset) > 0.5:
        found.setdefault("clock", []).append(f"the clock jumped {after.clock_offset - before.clock_offset:+.3f} s")
    if before.kexec_loaded != after.kexec_loaded:
        found.setdefault("kexec", []).append(f"kexec_loaded {before.kexec_loaded!r} -> {after.kexec_loaded!r}")
    if before.loop_file != after.loop_file:
        found.setdefault("devices", []).append("the loop device's backing file was written")
    return found


def _distinct(value: str, low: int, high: int) -> int:
    """A valid value other than the running one."""
    current = int(value.split()[0])
    return low if current != low else high


def make(base: Path) -> Hostile:
    base.mkdir(parents=True, exist_ok=True)
    original = {key: read_sysctls()[key] for key in TARGET_KEYS}
    loop_file = base / "loop.img"
    loop_file.write_bytes(os.urandom(1 << 20))
    loop_device = subprocess.run(
        ["losetup", "-f", "--show", str(loop_file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    minor = os.minor(os.stat(loop_device).st_rdev)
    binfmt = BinfmtWatch(base)
    # What the kernel changes by itself, learnt over a few seconds of nothing.
    first = read_sysctls()
    time.sleep(1.0)
    second = read_sysctls()
    volatile = {key for key in set(first) | set(second) if first.get(key) != second.get(key)}
    volatile |= {key for key in first if VOLATILE.search(key)}
    volatile -= set(TARGET_KEYS)
    tree = bookworm_tree(base / "tree", variant="minimal")
    (tree / "etc/rh-hostile.conf").write_text(
        f"SWAPPINESS={_distinct(original['vm/swappiness'], 17, 19)}\n"
        f"RATELIMIT={_distinct(original['kernel/printk_ratelimit'], 7, 8)}\n"
        f"LEASE={_distinct(original['fs/lease-break-time'], 44, 46)}\nLOOP_MINOR={minor}\n"
    )
    # The sysadmin's own settings, which a booted systemd-sysctl applies (issue #14's case).
    (tree / "etc/sysctl.d/99-local.conf").write_text(
        f"vm.swappiness = {_distinct(original['vm/swappiness'], 13, 14)}\n"
        f"kernel.printk_ratelimit = {_distinct(original['kernel/printk_ratelimit'], 9, 10)}\n"
    )
    debs = base / "debs"
    files = {"/usr/lib/rh-hostile/attack": ATTACK, "/lib/systemd/system/rh-hostile.service": SERVICE}
    v1 = build_deb(debs, "rh-hostile", "1.0", files=files, postinst=ENABLE)
    v2 = build_deb(debs, "rh-hostile", "2.0", files=files, postinst=ENABLE + POSTINST)
    # Its postinst fails on the first refusal: a script failing only because
    # of the confinement (Needs-Kernel), never the package's fault.
    strict = build_deb(
        debs,
        "rh-hostile-strict",
        "1.0",
        depends="rh-hostile (>= 2.0)",
        postinst='if [ "$1" = configure ]; then /usr/lib/rh-hostile/attack strict; '
        ". /etc/rh-hostile.conf; sysctl -w vm.swappiness=$SWAPPINESS; fi\n",
    )
    install_into(tree, [v1])
    repo = LocalRepo(base / "repo")
    for deb in (v1, v2, strict):
        repo.add(deb)
    repo.publish()
    serve_to_tree(tree, repo)
    return Hostile(base, tree, repo, loop_file, loop_device, binfmt, original, volatile)


LINE = re.compile(r"^HOSTILE (?P<where>\S+) (?P<what>\S+): (?P<result>ok|refused|n/a)\b(?P<detail>.*)$", re.M)


def attempts(text: str) -> list[tuple[str, str, str, str]]:
    """(where, what, result, detail) of each HOSTILE line."""
    return [(m["where"], m["what"], m["result"], m["detail"].strip()) for m in LINE.finditer(text)]


def replay_logs(log_dir: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(log_dir.glob("*.log")))


def scratch(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
