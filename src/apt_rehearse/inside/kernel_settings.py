"""What the upgrade would change in the kernel: sysctl.d, modules-load.d, binfmt.d.

The sandbox never applies these (the kernel's sysctl outside /proc/sys/net,
its modules and binfmt_misc are not namespaced): the rehearsal reads the
configuration of the rehearsed tree just before and just after apt runs,
resolved the way systemd-sysctl, systemd-modules-load and systemd-binfmt (and
procps' ``sysctl --system``) resolve it at boot, and reports what changes.

- The directories, in precedence order: /etc, /run, /usr/local/lib, /usr/lib,
  /lib. A file name in an earlier directory hides the same name in a later
  one (an empty file or a link to /dev/null in /etc masks a vendor file); the
  files left are applied in the lexical order of their names.
- sysctl: "key = value" lines, a later assignment wins; "/" or "." separate
  the key's parts (net/ipv4/ip_forward is net.ipv4.ip_forward); a leading "-"
  means ignore errors; glob patterns (net.ipv4.conf.*.rp_filter) are kept as
  keys. /etc/sysctl.conf comes last (procps), unless one of the sysctl.d files
  already is it (Debian's /etc/sysctl.d/99-sysctl.conf link).
- modules-load.d: a module name a line; /etc/modules (Debian's, also reached
  through /etc/modules-load.d/modules.conf) counts too.
- binfmt.d: ":name:type:offset:magic:mask:interpreter:flags" lines, with any
  character as the delimiter; a later rule of the same name replaces one before.

collect() runs inside the sandbox (root "/") and uses only modules imported
beforehand; changes() is pure; running() reads the host's kernel.
"""

from __future__ import annotations

import glob
import os
from typing import Any

PREFIXES = ("/etc", "/run", "/usr/local/lib", "/usr/lib", "/lib")
SYSCTL_DIRS = tuple(f"{p}/sysctl.d" for p in PREFIXES)
MODULES_DIRS = tuple(f"{p}/modules-load.d" for p in PREFIXES)
BINFMT_DIRS = tuple(f"{p}/binfmt.d" for p in PREFIXES)
SYSCTL_CONF = "/etc/sysctl.conf"
MODULES_FILE = "/etc/modules"
KINDS = ("sysctl", "modules", "binfmt")
MAX_BYTES = 1 << 20  # a configuration file larger than this is not read
GLOB_CHARS = "*?["
BINFMT_MISC = "/proc/sys/fs/binfmt_misc"


def _in_root(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def config_files(root: str, directories: tuple[str, ...], suffix: str = ".conf") -> list[str]:
    """The files applied, in order: per name the earliest directory's, sorted by name."""
    chosen: dict[str, str] = {}
    for directory in directories:
        try:
            names = os.listdir(_in_root(root, directory))
        except OSError:
            continue
        for name in names:
            if name.endswith(suffix) and name not in chosen:
                path = f"{directory}/{name}"
                if not os.path.isdir(_in_root(root, path)):
                    chosen[name] = path
    return [chosen[name] for name in sorted(chosen)]


def resolve(root: str, path: str) -> str:
    """Where a file that is a symbolic link leads, as a path of the tree.

    An absolute link stays inside the tree (the sandbox's "/" is the tree; the
    unit tests' roots are directories).
    """
    for _ in range(40):
        try:
            target = os.readlink(_in_root(root, path))
        except OSError:
            return path
        path = os.path.normpath(target if target.startswith("/") else os.path.join(os.path.dirname(path), target))
    return path


def _read(root: str, path: str) -> str:
    """A file's text; nothing for a link to /dev/null (a mask), a missing or unreadable file."""
    if path == "/dev/null":
        return ""
    try:
        with open(_in_root(root, path), "rb") as handle:
            data = handle.read(MAX_BYTES)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def _lines(text: str) -> list[str]:
    return [s for s in (line.strip() for line in text.splitlines()) if s and s[0] not in "#;"]


def normalize_key(key: str) -> str:
    """A sysctl key with dots between its parts.

    As systemd's sysctl_normalize, read the other way: when the first separator
    is a "/", slashes are the separators and a dot is part of a name (an
    interface "eth0.1"), so the two swap.
    """
    key = key.strip()
    first = next((c for c in key if c in "./"), "")
    if first == "/":
        key = key.strip("/").translate(str.maketrans("/.", "./"))
        while ".." in key:
            key = key.replace("..", ".")
    return key


def proc_path(key: str) -> str:
    """The file under /proc/sys of a normalized key (dots -> slashes, a slash -> a dot)."""
    return key.translate(str.maketrans("./", "/."))


def parse_sysctl(text: str) -> list[tuple[str, str, bool]]:
    """(key, value, ignore errors) for each assignment, in order."""
    assignments = []
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if not sep:
            continue  # not an assignment ("-key" alone excludes a key from a glob)
        key = key.strip()
        ignore = key.startswith("-")
        key = normalize_key(key.lstrip("-"))
        if key:
            assignments.append((key, value.strip(), ignore))
    return assignments


def parse_modules(text: str) -> list[str]:
    """Module names, one a line (/etc/modules may give options after the name)."""
    return [line.split()[0] for line in _lines(text)]


def parse_binfmt(text: str) -> list[tuple[str, str, str]]:
    """(name, rule, interpreter): the name is the field after the first delimiter."""
    rules = []
    for line in _lines(text):
        fields = line[1:].split(line[0])
        if fields and fields[0]:
            rules.append((fields[0], line, fields[5] if len(fields) > 5 else ""))
    return rules


def _read_order(root: str, dirs: tuple[str, ...], single: str) -> list[str]:
    """The files as the boot applies them: the directories', then the single
    file, unless one of them already links to it (Debian's 99-sysctl.conf)."""
    read = [resolve(root, path) for path in config_files(root, dirs)]
    if resolve(root, single) not in read:
        read.append(resolve(root, single))
    return read


def effective_sysctl(root: str = "/") -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {}
    for real in _read_order(root, SYSCTL_DIRS, SYSCTL_CONF):
        for key, value, ignore in parse_sysctl(_read(root, real)):
            settings[key] = {"value": value, "file": real, "ignore_errors": ignore}
    return settings


def _module_key(name: str) -> str:
    return name.replace("-", "_")  # the kernel takes both spellings for one module


def effective_modules(root: str = "/") -> dict[str, dict[str, Any]]:
    modules: dict[str, dict[str, Any]] = {}
    for real in _read_order(root, MODULES_DIRS, MODULES_FILE):
        for name in parse_modules(_read(root, real)):
            modules.setdefault(_module_key(name), {"module": name, "file": real})
    return modules


def effective_binfmt(root: str = "/") -> dict[str, dict[str, Any]]:
    formats: dict[str, dict[str, Any]] = {}
    for path in config_files(root, BINFMT_DIRS):
        real = resolve(root, path)
        for name, rule, interpreter in parse_binfmt(_read(root, real)):
            formats[name] = {"rule": rule, "interpreter": interpreter, "file": real}
    return formats


def collect(root: str = "/") -> dict[str, dict[str, dict[str, Any]]]:
    """The kernel settings the tree configures for its next boot (plain data)."""
    return {"sysctl": effective_sysctl(root), "modules": effective_modules(root), "binfmt": effective_binfmt(root)}


def _configured(kind: str, entry: dict[str, Any] | None) -> str | None:
    if entry is None:
        return None
    if kind == "sysctl":
        return " ".join(entry["value"].split())
    if kind == "modules":
        return "load"
    return entry["rule"]


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Each setting whose configured value the run changes, adds or drops.

    A file that moves, or a second file that sets the same value, is no
    change; a value the configuration already set before the run is not the
    run's doing, whatever the kernel runs with now.
    """
    found = []
    for kind in KINDS:
        old_all, new_all = before.get(kind) or {}, after.get(kind) or {}
        for key in sorted(set(old_all) | set(new_all)):
            old, new = old_all.get(key), new_all.get(key)
            value, was = _configured(kind, new), _configured(kind, old)
            if value == was:
                continue
            entry = new if new is not None else old
            assert entry is not None
            row: dict[str, Any] = {
                "kind": kind,
                "key": entry.get("module", key),
                "value": value,
                "was": was,
                "file": entry["file"],
                "was_file": old["file"] if old else None,
            }
            if kind == "sysctl":
                row["ignore_errors"] = entry["ignore_errors"]
            if kind == "binfmt":
                row["interpreter"] = entry["interpreter"]
            found.append(row)
    return found


# --- the running kernel (the host's, read after the rehearsal) ---------------


def running_sysctl(key: str, proc_sys: str = "/proc/sys") -> str | None:
    """The value the kernel runs with; a glob's values when they agree; None when unreadable."""
    path = os.path.join(proc_sys, proc_path(key))
    paths = sorted(glob.glob(path)) if any(c in key for c in GLOB_CHARS) else [path]
    values = []
    for one in paths:
        try:
            with open(one, encoding="utf-8", errors="replace") as handle:
                values.append(" ".join(handle.read(4096).split()))
        except OSError:
            return None  # missing (a module not loaded), write-only, or not ours to read
    distinct = sorted(set(values))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else "varies: " + ", ".join(distinct)


def binfmt_mounted(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether binfmt_misc is mounted: only then is it looked at, since a look
    at an automount point would mount it on the host."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            return any(" - binfmt_misc " in line and line.split()[4] == BINFMT_MISC for line in handle)
    except (OSError, IndexError):
        return False


def running(
    rows: list[dict[str, Any]],
    proc_sys: str = "/proc/sys",
    sys_module: str = "/sys/module",
    binfmt_dir: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of changes() with what the kernel runs with now ("running"):
    a sysctl value, "loaded" or "not loaded", "registered" or "not registered";
    None when it cannot be read. ``binfmt_dir``: binfmt_misc, where it is mounted."""
    result = []
    for row in rows:
        now: str | None
        if row["kind"] == "sysctl":
            now = running_sysctl(row["key"], proc_sys)
        elif row["kind"] == "modules":
            now = "loaded" if os.path.isdir(os.path.join(sys_module, _module_key(row["key"]))) else "not loaded"
        elif binfmt_dir is None:
            now = None
        else:
            now = "registered" if os.path.exists(os.path.join(binfmt_dir, row["key"])) else "not registered"
        result.append({**row, "running": now})
    return result


def running_now(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """running() against this machine's kernel."""
    return running(rows, binfmt_dir=BINFMT_MISC if binfmt_mounted() else None)


def summary(after: dict[str, Any]) -> dict[str, int]:
    """How much was compared: the report's "also checked" line."""
    return {kind: len(after.get(kind) or {}) for kind in KINDS}
