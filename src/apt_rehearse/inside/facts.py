"""What the target system says about its packages, read without changing it.

Which files a package owns, which of its services are enabled, whether it
ships a web-server or PHP module, and which conffiles the sysadmin changed:
the facts that make a REMOVED line or a conffile prompt mean something.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess

import apt_pkg
from debian.debfile import DebFile, DebError
from apt_rehearse.model.package_facts import ConffilePrompt, RemovalFacts

UNIT_DIRS = ("/lib/systemd/system/", "/usr/lib/systemd/system/")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path")
# systemctl is-enabled's words for a unit the system starts by itself
ENABLED_STATES = ("enabled", "enabled-runtime")
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
WEB_MODULE_PATTERNS = (
    ("apache", "/usr/lib/apache2/modules/*.so"),
    ("apache", "/etc/apache2/mods-available/*.load"),
    ("nginx", "/usr/lib/nginx/modules/*.so"),
    ("nginx", "/usr/share/nginx/modules-available/*.conf"),
    ("php", "/usr/lib/php/*/*.so"),
    ("php", "/etc/php/*/mods-available/*.ini"),
)


def package_files(root: str, package: str, arch: str) -> list[str]:
    info = os.path.join(root, "var/lib/dpkg/info")
    for name in (f"{package}:{arch}.list", f"{package}.list"):
        try:
            with open(os.path.join(info, name), encoding="utf-8", errors="surrogateescape") as handle:
                return [line.rstrip("\n") for line in handle if line.strip()]
        except FileNotFoundError:
            continue
    return []


def enabled_services(root: str, files: list[str]) -> list[str]:
    """Units and init scripts among ``files`` that the system starts."""
    units = sorted({os.path.basename(f) for f in files if f.startswith(UNIT_DIRS) and f.endswith(UNIT_SUFFIXES)})
    enabled = enabled_units(root, units)
    scripts = {os.path.basename(f) for f in files if f.startswith("/etc/init.d/")}
    for script in sorted(scripts):
        if f"{script}.service" in enabled:
            continue
        for level in "2345":
            rc_dir = os.path.join(root, f"etc/rc{level}.d")
            if os.path.isdir(rc_dir) and any(n.startswith("S") and n[3:] == script for n in os.listdir(rc_dir)):
                enabled.append(f"/etc/init.d/{script}")
                break
    return enabled


def enabled_units(root: str, units: list[str]) -> list[str]:
    """Which of ``units`` the system at ``root`` starts, as ``systemctl
    --root`` says: it reads the unit files and their links offline, asks no
    manager and changes nothing. Without systemctl (no systemd to start
    units either), none."""
    systemctl = shutil.which("systemctl", path=TOOL_PATH)
    if not systemctl or not units:
        return []
    states = _unit_states(systemctl, root, units)
    if states is None:
        # systemctl stops at the first unit it cannot find (a unit file
        # deleted by hand): then one by one.
        states = [(_unit_states(systemctl, root, [unit]) or ["unknown"])[0] for unit in units]
    return [unit for unit, state in zip(units, states) if state in ENABLED_STATES]


def _unit_states(systemctl: str, root: str, units: list[str]) -> list[str] | None:
    try:
        proc = subprocess.run(
            [systemctl, f"--root={root}", "is-enabled", "--", *units],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={"PATH": TOOL_PATH, "LC_ALL": "C"},
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = proc.stdout.split()
    return states if len(states) == len(units) else None


def web_modules(files: list[str]) -> list[str]:
    """Apache, Nginx and PHP modules or extensions a package ships."""
    found = []
    for kind, pattern in WEB_MODULE_PATTERNS:
        for path in files:
            if fnmatch.fnmatch(path, pattern):
                found.append(f"{kind}: {path}")
    return found


def removal_facts(root: str, package: str, arch: str) -> RemovalFacts:
    files = package_files(root, package, arch)
    return RemovalFacts(enabled_services(root, files), web_modules(files))


# --- conffiles -------------------------------------------------------------


def installed_conffiles(root: str) -> dict[str, dict[str, str]]:
    """name:arch and plain name -> {conffile path: md5 dpkg recorded}."""
    result: dict[str, dict[str, str]] = {}
    path = os.path.join(root, "var/lib/dpkg/status")
    with apt_pkg.TagFile(path) as tagfile:
        for section in tagfile:
            if "Conffiles" not in section or "install ok" not in section.get("Status", ""):
                continue
            files = {}
            for line in section["Conffiles"].splitlines():
                parts = line.split()
                if len(parts) >= 2 and "obsolete" not in parts[2:]:
                    files[parts[0]] = parts[1]
            name = section["Package"]
            result[f"{name}:{section.get('Architecture', 'all')}"] = files
            result.setdefault(name, files)
    return result


def md5_of(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "md5").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def deb_conffiles(deb: str) -> dict[str, str]:
    """conffile path -> md5 of the version the .deb ships."""
    try:
        package = DebFile(deb)
        listed = package.control.get_content("conffiles", encoding="utf-8") or ""
        names = [line.strip() for line in listed.splitlines() if line.strip().startswith("/")]
        result = {}
        for name in names:
            for candidate in (name, "." + name, name.lstrip("/")):
                try:
                    data = package.data.get_content(candidate)
                except (KeyError, DebError):
                    data = None
                if data is not None:
                    result[name] = hashlib.md5(data).hexdigest()
                    break
        return result
    except (DebError, OSError, KeyError, ValueError):
        return {}


def predict_prompts(
    root: str, package: str, arch: str, deb: str, installed: dict[str, dict[str, str]]
) -> list[ConffilePrompt]:
    """Conffiles dpkg will ask about: changed locally AND changed by the package.

    dpkg's rule (as unattended-upgrades applies it): prompt when the file on
    disk differs from what the old version shipped, and the new version
    ships something else again. A file the sysadmin deleted is not asked
    about.
    """
    recorded = installed.get(f"{package}:{arch}") or installed.get(package) or {}
    prompts = []
    for path, new_md5 in deb_conffiles(deb).items():
        old_md5 = recorded.get(path)
        if old_md5 is None or old_md5 in ("newconffile",):
            continue
        current = md5_of(os.path.join(root, path.lstrip("/")))
        if current is None or current == old_md5 or current == new_md5 or new_md5 == old_md5:
            continue
        prompts.append(ConffilePrompt(package, path))
    return prompts


def _canonical(root: str, path: str) -> str:
    """A path as the /usr merge aliases it: /lib/x and /usr/lib/x are one file."""
    for alias in ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"):
        if path.startswith(alias) and os.path.islink(os.path.join(root, alias.strip("/"))):
            return "/usr" + path
    return path


def owners_of(root: str, paths: list[str]) -> dict[str, str]:
    """The package whose file list names each path (dpkg -S, read directly)."""
    wanted = {_canonical(root, p): p for p in paths}
    real_root = os.path.realpath(root)
    for path in paths:
        # ldconfig makes some soname links itself: the file they point to is listed.
        real = os.path.realpath(os.path.join(real_root, path.lstrip("/")))
        if real_root != "/" and real.startswith(real_root + "/"):
            real = real[len(real_root) :]
        wanted.setdefault(_canonical(root, real), path)
    owners: dict[str, str] = {}
    info = os.path.join(root, "var/lib/dpkg/info")
    try:
        names = sorted(n for n in os.listdir(info) if n.endswith(".list"))
    except OSError:
        return owners
    for name in names:
        try:
            with open(os.path.join(info, name), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    original = wanted.get(_canonical(root, line.rstrip("\n")))
                    if original is not None:
                        owners.setdefault(original, name[: -len(".list")].split(":", 1)[0])
        except OSError:
            continue
    return owners
