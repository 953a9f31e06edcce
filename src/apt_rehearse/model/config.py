"""apt-rehearse's settings, read from apt's own configuration.

Everything lives under APT::Rehearse:: so /etc/apt/apt.conf.d/ snippets and
``-o Key=Value`` both work, exactly as for apt-get. python-apt does the
reading; nothing here parses apt.conf by hand.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import apt_pkg

from apt_rehearse.model.defaults import DEFAULT_MAX_AGE, IDLE_WEIGHT
from apt_rehearse.model.errors import UsageError
from apt_rehearse.model.policy import DEFAULTS, SEVERITIES

LOG_DIR = "/var/log/apt-rehearse"
CACHE_DIR = "/var/cache/apt-rehearse"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


@dataclasses.dataclass
class Settings:
    enable: bool = True
    tmpfs_size: str = "50%"
    upper_dir: str | None = None
    # A transaction whose unpacked size passes this many bytes goes to a disk
    # upper even when none was asked for: a tmpfs that large would eat RAM.
    large_change_bytes: int = 2 << 30
    disk_upper_base: str = "/var/tmp/apt-rehearse"
    timeout: float = 3600.0
    log_dir: str = LOG_DIR
    cache_dir: str = CACHE_DIR
    save_report: bool = True
    services: bool = True  # boot the system's own init and compare its services
    snapshots: bool = True  # btrfs subvolumes: a read-only snapshot is the lower, not the live system
    # Longer than systemd's own start timeout (DefaultTimeoutStartSec, 90 s): a
    # unit that stalls (nmbd with loopback only) has timed out, and what waits
    # for it (smbd) has started, when the services are observed.
    boot_timeout: float = 150.0
    # After systemd has settled: how long an observation waits for what
    # should answer (see observe.wait_ready); only a failure costs it.
    ready_timeout: float = 60.0
    memory_max: int | None = None
    # The sandbox cgroup's cpu.weight and io.weight (1-10000, cpu also 0 = idle; systemd's CPUWeight=,
    # IOWeight=): None = the default.
    cpu_weight: int | None = None
    io_weight: int | None = None
    http_urls: list[str] = dataclasses.field(default_factory=list)
    # Software dpkg does not know about, beyond /opt, /usr/local and /srv.
    library_paths: list[str] = dataclasses.field(default_factory=list)
    # What stays of earlier rehearsals (see housekeeping).
    keep_reports: int = 100
    archives_max_age: float = 7 * 86400.0
    verdict_max_age: float = float(DEFAULT_MAX_AGE)
    mail: str = "root"  # who hears of a blocked prepared upgrade ("" = nobody)
    # Where Debian's prometheus-node-exporter reads textfiles; written only when it exists ("" = never).
    textfile_dir: str = TEXTFILE_DIR
    # The downtime forecast (checks/downtime): how much slower than the
    # rehearsal the real run may be, and the sysadmin's limits in seconds.
    downtime_slowdown: float = 1.5
    downtime_max: float | None = None  # the host's: at least one service out
    downtime_max_units: dict[str, float] = dataclasses.field(default_factory=dict)


def parse_option(option: str) -> tuple[str, str]:
    """Split one ``-o Key=Value`` the way apt-get does."""
    key, sep, value = option.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"option '{option}' is not of the form Key=Value (as in apt-get -o)")
    return key.strip(), value


def init_apt_config(root: str, options: list[str]) -> None:
    """Load apt's configuration for ``root`` and apply ``-o`` options on top.

    For a tree in a directory, its own /etc/apt is read, not the host's:
    pkgInitConfig reads the configuration files relative to Dir when Dir is
    set before it runs.
    """
    _import_what_resets_apt_pkg()
    root = os.path.realpath(root)
    if root != "/":
        apt_pkg.config.set("Dir", root + "/")
    apt_pkg.init_config()
    if root != "/":
        # The one path apt keeps absolute whatever Dir says.
        apt_pkg.config.set("Dir::State::status", os.path.join(root, "var/lib/dpkg/status"))
    for option in options:
        key, value = parse_option(option)
        apt_pkg.config.set(key, value)
    _finish_apt_config()


def load_dumped_config(dump: dict[str, list[str]]) -> None:
    """apt's configuration as apt dumped it to the hook (its -o included):
    a key ending in "::" is a list apt cleared before setting its values."""
    _import_what_resets_apt_pkg()
    apt_pkg.init_config()
    for key in dump:
        if key.endswith("::"):
            apt_pkg.config.clear(key[:-2])
    for key, values in dump.items():
        for value in values:
            apt_pkg.config.set(key, value)
    _finish_apt_config()


def _import_what_resets_apt_pkg() -> None:
    """python-debian's debian_support (imported by deb822 and debfile) runs
    apt_pkg.init() when it is first imported: imported after the set-up
    here, it would put apt's defaults back (the package caches would be
    written into the target). Imported first, its init comes before ours."""
    importlib.import_module("debian.debian_support")


def _finish_apt_config() -> None:
    # Building the package cache as root would write pkgcache.bin into the
    # target's /var/cache/apt: keep it in memory, the target stays untouched.
    apt_pkg.config.set("Dir::Cache::pkgcache", "")
    apt_pkg.config.set("Dir::Cache::srcpkgcache", "")
    apt_pkg.init_system()


def _weight(value: str, name: str, idle: bool = False) -> int | None:
    """A cgroup weight, as systemd's CPUWeight=/IOWeight= take it (1-10000;
    CPUWeight= also "idle": only what nothing else wants)."""
    if not value.strip():
        return None
    if idle and value.strip() == "idle":
        return IDLE_WEIGHT
    if not value.strip().isdigit() or not 1 <= int(value) <= 10000:
        also = " or idle" if idle else ""
        raise UsageError(f"APT::Rehearse::{name} must be a number from 1 to 10000{also}, not {value!r}")
    return int(value)


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text.strip().removesuffix("s").strip())
    except ValueError:
        value = -1.0
    if value < 0 or value != value:
        raise UsageError(f"APT::Rehearse::{name} '{text}' is not a number of seconds (e.g. 5 or 1.5)")
    return value


def _size_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMGT" else text
    try:
        return int(float(number) * factor)
    except ValueError as error:
        raise UsageError(f"'{text}' is not a size (use e.g. 512M or 4G)") from error


def read_settings() -> Settings:
    config = apt_pkg.config
    settings = Settings()
    settings.enable = config.find_b("APT::Rehearse::Enable", True)
    settings.tmpfs_size = config.find("APT::Rehearse::Tmpfs-Size", settings.tmpfs_size)
    if not settings.tmpfs_size.endswith("%"):
        settings.tmpfs_size = str(_size_bytes(settings.tmpfs_size))
    settings.upper_dir = config.find("APT::Rehearse::Upper-Dir", "") or None
    large = config.find("APT::Rehearse::Large-Change", "")
    if large:
        settings.large_change_bytes = _size_bytes(large)
    settings.timeout = float(config.find_i("APT::Rehearse::Timeout", int(settings.timeout)))
    settings.log_dir = config.find("APT::Rehearse::Log-Dir", settings.log_dir)
    settings.cache_dir = config.find("APT::Rehearse::Cache-Dir", settings.cache_dir)
    settings.save_report = config.find_b("APT::Rehearse::Save-Report", True)
    settings.services = config.find_b("APT::Rehearse::Services", True)
    settings.snapshots = config.find_b("APT::Rehearse::Snapshots", True)
    settings.boot_timeout = float(config.find_i("APT::Rehearse::Boot-Timeout", int(settings.boot_timeout)))
    settings.ready_timeout = float(max(config.find_i("APT::Rehearse::Ready-Timeout", int(settings.ready_timeout)), 0))
    memory = config.find("APT::Rehearse::Memory-Max", "")
    settings.memory_max = _size_bytes(memory) if memory else None
    settings.cpu_weight = _weight(config.find("APT::Rehearse::CPU-Weight", ""), "CPU-Weight", idle=True)
    settings.io_weight = _weight(config.find("APT::Rehearse::IO-Weight", ""), "IO-Weight")
    settings.http_urls = list(config.value_list("APT::Rehearse::Http-Urls"))
    settings.library_paths = [p for p in config.value_list("APT::Rehearse::Library-Paths") if p.startswith("/")]
    settings.keep_reports = max(config.find_i("APT::Rehearse::Keep-Reports", settings.keep_reports), 1)
    # In days, as apt's own APT::Archives::MaxAge.
    settings.archives_max_age = 86400.0 * config.find_i("APT::Rehearse::Archives-Max-Age", 7)
    settings.verdict_max_age = float(config.find_i("APT::Rehearse::Cache-Max-Age", int(settings.verdict_max_age)))
    settings.downtime_slowdown = _seconds(config.find("APT::Rehearse::Downtime-Slowdown", "1.5"), "Downtime-Slowdown")
    limit = config.find("APT::Rehearse::Downtime-Max", "")
    settings.downtime_max = _seconds(limit, "Downtime-Max") if limit else None
    for key in config.list("APT::Rehearse::Downtime-Max"):
        unit = key.rsplit("::", 1)[-1]
        settings.downtime_max_units[unit] = _seconds(config.find(key), f"Downtime-Max::{unit}")
    # Set to "" means nobody (find() would give the default for an empty value).
    if config.exists("APT::Rehearse::Mail"):
        settings.mail = config.find("APT::Rehearse::Mail").strip()
    if config.exists("APT::Rehearse::Textfile-Dir"):
        settings.textfile_dir = config.find("APT::Rehearse::Textfile-Dir").strip()
    return settings


# Every APT::Rehearse:: setting read anywhere (the man page's CONFIGURATION).
KNOWN_SETTINGS = (
    "Archives-Max-Age",
    "Boot-Timeout",
    "CPU-Weight",
    "Cache-Dir",
    "Cache-Max-Age",
    "Downtime-Max",
    "Downtime-Slowdown",
    "Enable",
    "Http-Urls",
    "IO-Weight",
    "Keep-Reports",
    "Large-Change",
    "Library-Paths",
    "Log-Dir",
    "Mail",
    "Memory-Max",
    "On-Error",
    "Policy",
    "Ready-Timeout",
    "Save-Report",
    "Services",
    "Snapshots",
    "Textfile-Dir",
    "Timeout",
    "Tmpfs-Size",
    "Upper-Dir",
)


def setting_warnings() -> list[str]:
    """What apt's configuration says under APT::Rehearse:: that nothing reads:
    a misspelt key, a policy kind that does not exist, a severity that is
    none. apt takes any key silently; a sysadmin who believes a policy was
    relaxed or tightened must hear otherwise (apt's keys are case-blind)."""
    config = apt_pkg.config
    known = {name.lower() for name in KNOWN_SETTINGS}
    kinds = {kind.lower() for kind in DEFAULTS}
    warnings = []
    for key in config.list("APT::Rehearse"):
        name = key.split("::")[2]
        if name.lower() not in known:
            warnings.append(f"{key} is not an apt-rehearse setting (ignored); see apt-rehearse(8), CONFIGURATION")
    for key in config.list("APT::Rehearse::Policy"):
        kind = key.rsplit("::", 1)[-1]
        value = config.find(key).strip().lower()
        if kind.lower() not in kinds:
            warnings.append(f"{key}: no finding is of kind {kind} (ignored); see apt-rehearse(8), POLICY KINDS")
        elif value not in SEVERITIES:
            warnings.append(f"{key} \"{config.find(key)}\" is none of {', '.join(SEVERITIES)}: the default applies")
    return warnings


def dpkg_options() -> list[str]:
    return list(apt_pkg.config.value_list("DPkg::Options"))


def replay_apt_options(options: list[str]) -> list[str]:
    """The user's ``-o`` options that apt inside the sandbox must see too.

    Paths (Dir::*) point at the host and our own keys mean nothing to apt
    inside; everything else (Dpkg::Options, APT::Get::*, ...) passes on.
    """
    passed = []
    for option in options:
        key, _ = parse_option(option)
        lowered = key.lower()
        if lowered.startswith(("apt::rehearse", "dir")):
            continue
        passed.append(option)
    return passed


def apt_download_dir(path: str) -> str:
    """A directory apt downloads into, laid out as apt's own: the directory
    0755, its partial/ 0700 and owned by _apt, so apt keeps its download
    sandbox (no "Download is performed unsandboxed as root").

    A tree in a directory (--root) may sit where _apt cannot read its
    keyrings; there apt downloads as root, as it would have to anyway."""
    import pwd

    partial = os.path.join(path, "partial")
    os.makedirs(partial, mode=0o700, exist_ok=True)
    os.chmod(path, 0o755)
    owner = 0
    if apt_pkg.config.find("Dir", "/") in ("/", ""):
        try:
            owner = pwd.getpwnam(apt_pkg.config.find("APT::Sandbox::User", "_apt")).pw_uid
        except KeyError:
            owner = 0  # no _apt user: apt downloads as root anyway
    else:
        apt_pkg.config.set("APT::Sandbox::User", "root")
    os.chown(partial, owner, 0)
    os.chmod(partial, 0o700)
    return path
