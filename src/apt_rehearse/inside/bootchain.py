"""The boot chain, inside the sandbox: kernels, initramfs, bootloader configs,
and the commands that would write to disks or firmware.

The sandbox has no block devices and a read-only /sys, so grub-install and
friends could not touch hardware anyway; but failing there, they would fail a
maintainer script that succeeds on the real machine. So they are diverted in
the overlay (with dpkg-divert, as debootstrap and live-build divert
start-stop-daemon) and replaced by a recorder: the call is written down with
the maintainer script that made it, and reported ("would run grub-install
/dev/vda"). A package that installs one of them during the run gets the
recorder too: dpkg runs the placing script after each of its invocations
(--post-invoke), and apt unpacks and configures in separate invocations.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import subprocess
from typing import Any

STATE_DIR = "/run/apt-rehearse"
RECORD_FILE = f"{STATE_DIR}/recorded-commands"
PLACE_SCRIPT = f"{STATE_DIR}/place-recorders"
DIVERTED_SUFFIX = ".apt-rehearse"
MARKER = "apt-rehearse: recorded, not run"
# Each command by the paths Debian packages have shipped it at (before and
# after the /usr merge moved files).
RECORDED_COMMANDS: dict[str, tuple[str, ...]] = {
    "grub-install": ("/usr/sbin/grub-install",),
    "grub-bios-setup": ("/usr/sbin/grub-bios-setup",),
    "efibootmgr": ("/bin/efibootmgr", "/usr/bin/efibootmgr", "/sbin/efibootmgr", "/usr/sbin/efibootmgr"),
    "os-prober": ("/usr/bin/os-prober",),
    "flash-kernel": ("/usr/sbin/flash-kernel",),
    "lilo": ("/sbin/lilo", "/usr/sbin/lilo"),
    "zipl": ("/sbin/zipl", "/usr/sbin/zipl"),
    "mokutil": ("/usr/bin/mokutil",),
}
RECORDER = f"""#!/bin/sh
# {MARKER}: this command writes to disks or firmware.
{{ printf '%s\\t%s\\t%s' "${{DPKG_MAINTSCRIPT_PACKAGE:-}}" "${{DPKG_MAINTSCRIPT_NAME:-}}" "${{0##*/}}"
  for word in "$@"; do printf ' %s' "$word"; done; printf '\\n'; }} >>{RECORD_FILE} 2>/dev/null
exit 0
"""
GRUB_PROBE = "/usr/sbin/grub-probe"
GRUB_PROBE_ANSWERS = f"{STATE_DIR}/grub-probe"
GRUB_PROBE_PATHS = ("/", "/boot", "/boot/grub", "/boot/efi")
GRUB_PROBE_TARGETS = (
    "device",
    "fs",
    "fs_uuid",
    "fs_label",
    "partuuid",
    "partmap",
    "abstraction",
    "cryptodisk_uuid",
    "drive",
    "disk",
    "compatibility_hint",
    "hints_string",
    "bios_hints",
    "efi_hints",
    "baremetal_hints",
    "arc_hints",
    "ieee1275_hints",
    "msdos_parttype",
    "gpt_parttype",
)
# Packages whose scripts run update-grub (kernels run it through /etc/kernel/postinst.d).
BOOT_PACKAGE_PREFIXES = ("linux-image", "linux-signed", "grub", "shim", "os-prober", "memtest86")
GRUB_PROBE_SHIM = f"""#!/bin/sh
# {MARKER}: grub-probe answered from what the host's own grub-probe said
# before the rehearsal; the sandbox has no block devices to probe.
key=$(printf '%s\n' "$@" | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
if [ -f "{GRUB_PROBE_ANSWERS}/$key.out" ]; then
  cat "{GRUB_PROBE_ANSWERS}/$key.out"; exit "$(cat "{GRUB_PROBE_ANSWERS}/$key.rc")"
fi
printf '%s\n' "$*" >>"{GRUB_PROBE_ANSWERS}/unanswered"
echo "grub-probe: error: apt-rehearse has no answer from this machine for: grub-probe $*" >&2
exit 1
"""
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
LOADER_ENTRY_DIRS = ("/boot/loader/entries", "/boot/efi/loader/entries", "/efi/loader/entries")
EXTLINUX_CONFIGS = ("/boot/extlinux/extlinux.conf",)
BOOT_LINKS = (
    "/vmlinuz",
    "/vmlinuz.old",
    "/initrd.img",
    "/initrd.img.old",
    "/boot/vmlinuz",
    "/boot/vmlinuz.old",
    "/boot/initrd.img",
    "/boot/initrd.img.old",
)
# What the kernel starts as PID 1 when the command line names no init=.
INIT_PATH = "/sbin/init"
GRUB_LINE_RE = re.compile(r"^\s*(?P<kind>linux|linux16|linuxefi|initrd|initrd16|initrdefi)\s+(?P<args>.+)$")
KEYWORD_LINE_RE = re.compile(r"^\s*(?P<kind>linux|kernel|initrd)\s+(?P<args>.+)$", re.IGNORECASE)


def _placing_script() -> str:
    # dpkg runs this after each of its invocations (a release upgrade makes
    # over a hundred): shell builtins only, no grep or cat per path, unless a
    # recorder is really missing.
    lines = [
        "#!/bin/sh",
        f"# {MARKER}: put the recorder where a diverted command was, once.",
        "place() {",
        f'  [ -e "$1{DIVERTED_SUFFIX}" ] || return 0',
        "  second=",
        '  { read -r _ && read -r second; } 2>/dev/null <"$1"',
        f'  case $second in *"{MARKER}"*) return 0 ;; esac',
        f'  cat >"$1" <<"APT_REHEARSE_EOF" && chmod 0755 "$1"\n{RECORDER}APT_REHEARSE_EOF',
        "}",
    ]
    for paths in RECORDED_COMMANDS.values():
        lines += [f'place "{path}"' for path in paths]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def grub_probe_key(args: list[str]) -> str:
    """The shim's lookup key: the arguments in any order, as sort(1) orders them in C."""
    return hashlib.sha256("".join(a + "\n" for a in sorted(args)).encode()).hexdigest()


def capture_grub_probe(
    grub_probe: str = GRUB_PROBE, paths: tuple[str, ...] = GRUB_PROBE_PATHS
) -> dict[str, tuple[int, str]]:
    """On the host, before the rehearsal: what grub-probe says about this
    machine's boot file systems and their devices, for update-grub inside.

    grub-probe only reads; it is asked the questions grub-mkconfig asks."""
    answers: dict[str, tuple[int, str]] = {}

    def ask(args: list[str]) -> tuple[int, str]:
        try:
            proc = subprocess.run(
                [grub_probe, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=PATH_ENV,
                timeout=30,
                check=False,
            )
            result = (proc.returncode, proc.stdout.decode("utf-8", "replace"))
        except (OSError, subprocess.TimeoutExpired):
            result = (1, "")
        answers[grub_probe_key(args)] = result
        return result

    devices: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            continue
        for target in GRUB_PROBE_TARGETS:
            code, output = ask([f"--target={target}", path])
            if target == "device" and code == 0:
                found = output.split()
                devices += [d for d in found if d not in devices]
                if len(found) > 1:
                    for each in GRUB_PROBE_TARGETS:
                        ask(["--device", *found, f"--target={each}"])
    for device in devices:
        for target in GRUB_PROBE_TARGETS:
            ask(["--device", device, f"--target={target}"])
    return answers


def needs_grub_probe(package_names: list[str]) -> bool:
    return os.path.exists(GRUB_PROBE) and any(n.startswith(BOOT_PACKAGE_PREFIXES) for n in package_names)


def _divert(path: str, rename: bool) -> dict[str, str] | None:
    """A local diversion of ``path`` to ``path.apt-rehearse``; why dpkg refused it, or None."""
    argv = [
        "dpkg-divert",
        "--quiet",
        "--local",
        "--rename" if rename else "--no-rename",
        "--divert",
        path + DIVERTED_SUFFIX,
        "--add",
        path,
    ]
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=PATH_ENV, check=False
    )
    if proc.returncode != 0:
        return {"path": path, "why": proc.stdout.decode("utf-8", "replace").strip()[-200:]}
    return None


def _install_grub_probe_shim(answers: dict[str, tuple[int, str]]) -> dict[str, Any] | None:
    os.makedirs(GRUB_PROBE_ANSWERS, exist_ok=True)
    for key, (code, output) in answers.items():
        with open(f"{GRUB_PROBE_ANSWERS}/{key}.out", "w", encoding="utf-8") as handle:
            handle.write(output)
        with open(f"{GRUB_PROBE_ANSWERS}/{key}.rc", "w", encoding="utf-8") as handle:
            handle.write(f"{code}\n")
    refused = _divert(GRUB_PROBE, rename=True)
    if refused:
        return refused
    with open(GRUB_PROBE, "w", encoding="utf-8") as handle:
        handle.write(GRUB_PROBE_SHIM)
    os.chmod(GRUB_PROBE, 0o755)
    return None


def unanswered_grub_probes() -> list[str]:
    return _read_lines(f"{GRUB_PROBE_ANSWERS}/unanswered")


def install_recorders(grub_probe_answers: dict[str, tuple[int, str]] | None = None) -> dict[str, Any]:
    """Divert every recorded command's paths; the recorder goes where one was.

    Returns the dpkg option that keeps placing recorders during the run, and
    the paths whose diversion dpkg refused (a package diverts them itself).
    """
    os.makedirs(STATE_DIR, exist_ok=True)
    refused = []
    for paths in RECORDED_COMMANDS.values():
        for path in paths:
            # Only the first of several aliases of one file (/bin and /usr/bin
            # after the /usr merge) has anything to move aside.
            rename = os.path.lexists(path) and not os.path.lexists(path + DIVERTED_SUFFIX)
            failed = _divert(path, rename)
            if failed:
                refused.append(failed)
    if grub_probe_answers and os.path.exists(GRUB_PROBE):
        failed = _install_grub_probe_shim(grub_probe_answers)
        if failed:
            refused.append(failed)
    with open(PLACE_SCRIPT, "w", encoding="utf-8") as handle:
        handle.write(_placing_script())
    os.chmod(PLACE_SCRIPT, 0o755)
    subprocess.run([PLACE_SCRIPT], stdin=subprocess.DEVNULL, env=PATH_ENV, check=False)
    # dpkg runs the hook with "sh -c": sourced there, it costs one shell
    # per dpkg invocation, not two (a release upgrade has some 230).
    return {"dpkg_option": f"Dpkg::Options::=--post-invoke=. {PLACE_SCRIPT}", "refused": refused}


def recorded_commands() -> list[dict[str, str]]:
    try:
        with open(RECORD_FILE, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    calls = []
    for line in lines:
        package, script, command = (line.split("\t", 2) + ["", ""])[:3]
        if command:
            calls.append({"package": package, "script": script, "command": command})
    return calls


def _exists_on_boot(path: str, bases: tuple[str, ...]) -> bool:
    # A bootloader path is relative to the file system it is on: "/vmlinuz-X"
    # on a separate /boot, "/boot/vmlinuz-X" on the root.
    path = re.sub(r"^\([^)]*\)", "", path)
    return any(os.path.exists(os.path.join(base, path.lstrip("/"))) for base in bases)


def _paths_in(args: str) -> list[str]:
    try:
        words = shlex.split(args, comments=False)
    except ValueError:
        words = args.split()
    return [w for w in words if w.startswith(("/", "(")) and "$" not in w]


def bootloader_references() -> list[dict[str, Any]]:
    """Every kernel and initrd a bootloader config names, and whether it exists."""
    references = []

    def add(config: str, kind: str, path: str, bases: tuple[str, ...]) -> None:
        references.append(
            {
                "config": config,
                "kind": "initrd" if kind.lower().startswith("initrd") else "kernel",
                "path": path,
                "exists": _exists_on_boot(path, bases),
            }
        )

    for config in GRUB_CONFIGS:
        for line in _read_lines(config):
            match = GRUB_LINE_RE.match(line)
            if match:
                paths = _paths_in(match.group("args"))
                for path in paths if match.group("kind").startswith("initrd") else paths[:1]:
                    add(config, match.group("kind"), path, ("/", "/boot"))
    for directory in LOADER_ENTRY_DIRS:
        esp = os.path.dirname(os.path.dirname(directory))
        for config in sorted(glob.glob(os.path.join(directory, "*.conf"))):
            for line in _read_lines(config):
                match = KEYWORD_LINE_RE.match(line)
                if match:
                    for path in _paths_in(match.group("args"))[:1]:
                        add(config, match.group("kind"), path, (esp,))
    for config in EXTLINUX_CONFIGS:
        for line in _read_lines(config):
            match = KEYWORD_LINE_RE.match(line)
            if match:
                for path in match.group("args").split(","):
                    path = path.strip().split()[0] if path.strip() else ""
                    if path and "$" not in path:
                        add(config, match.group("kind"), path, ("/", "/boot", os.path.dirname(config)))
    return references


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def initramfs_generator() -> str | None:
    if os.path.exists("/usr/sbin/update-initramfs"):
        return "initramfs-tools"
    if os.path.exists("/usr/bin/dracut") or os.path.exists("/usr/sbin/dracut"):
        return "dracut"
    return None


def boot_state() -> dict[str, Any]:
    """Kernels with their initrds, bootloader references, the /vmlinuz links, the init."""
    kernels: dict[str, dict[str, Any]] = {}
    try:
        names = sorted(os.listdir("/boot"))
    except OSError:
        names = []
    for name in names:
        for prefix in ("vmlinuz-", "vmlinux-"):
            if name.startswith(prefix):
                version = name[len(prefix) :]
                initrd = f"/boot/initrd.img-{version}"
                kernels[version] = {
                    "kernel": f"/boot/{name}",
                    "kernel_bytes": _size(f"/boot/{name}"),
                    "initrd": initrd if os.path.exists(initrd) else None,
                    "initrd_bytes": _size(initrd),
                    "initrd_mtime_ns": _mtime(initrd),
                }
    links = {
        link: {"target": os.readlink(link), "exists": os.path.exists(link)}
        for link in BOOT_LINKS
        if os.path.islink(link)
    }
    return {
        "kernels": kernels,
        "generator": initramfs_generator(),
        "references": bootloader_references(),
        "links": links,
        "init": init_state(),
    }


def init_state() -> dict[str, Any]:
    """/sbin/init: where it leads, and whether a kernel could start it."""
    target = os.path.realpath(INIT_PATH)
    return {
        "path": INIT_PATH,
        "target": target,
        "exists": os.path.isfile(target) and os.access(target, os.X_OK),
    }


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
