"""From findings to a verdict, by the sysadmin's policy.

Each kind of finding has a default severity; ``APT::Rehearse::Policy::<Kind>``
("block", "warn" or "info") overrides it, in apt.conf.d or with -o.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

SEVERITIES = ("info", "warn", "block")

# kind -> (default severity, what it means); the man page lists the same.
DEFAULTS: dict[str, tuple[str, str]] = {
    "Remove": ("info", "a package is removed as a side effect (a library replaced, ...)"),
    "Remove-Requested": ("info", "a package you asked to remove is removed"),
    "Remove-Manual": ("block", "a manually installed package is removed"),
    "Remove-Renamed": (
        "warn",
        "a manually installed package is replaced by one that provides its name (libfoo1 -> "
        "libfoo1t64); the new name is not marked manual",
    ),
    "Remove-Replaced": (
        "warn",
        "a removed package's replacement is in the same transaction and does what it did: its "
        "modules load, its services run, the pages answer the same (seen in the booted rehearsal)",
    ),
    "Remove-Service": ("block", "a removed package ships a service the system starts"),
    "Remove-Module": ("block", "a removed package ships an Apache/Nginx module or a PHP extension"),
    "Script-Failure": ("block", "a maintainer script fails"),
    "Needs-Network": ("warn", "a maintainer script failed reaching for the network, which the sandbox does not have"),
    "Needs-Kernel": (
        "warn",
        "a maintainer script failed changing the host kernel's state (a sysctl, a module, the "
        "clock, swap, a device), which the sandbox's confinement refuses",
    ),
    "Broken-State": ("block", "a package is left unpacked, half-installed or half-configured"),
    "Apt-Failure": ("block", "apt itself fails to apply the transaction"),
    "Dependency-Check": ("block", "'apt-get check' finds broken dependencies afterwards"),
    "Conffile-Prompt": ("warn", "dpkg would ask about a locally modified conffile"),
    "Conffile-Prompt-Unattended": ("block", "the same, in a run with nobody to answer (no --force-conf* option)"),
    "Mismatch": ("warn", "apt did something else than the transaction said"),
    "Timeout": ("block", "the replay did not finish in time (a hanging maintainer script?)"),
    "Disk-Space": ("block", "a mount has less free space than the run writes there (measured, not estimated)"),
    "Disk-Margin": ("warn", "a mount keeps less than 5% free after the run"),
    "Lost-Library": ("block", "a program or module outside dpkg's knowledge no longer finds a library it needs"),
    "Boot-Chain": (
        "block",
        "a kernel's initramfs is not built, a bootloader config names a missing kernel/initrd, or /sbin/init is gone",
    ),
    "Boot-Command": ("info", "a command that writes to disks or firmware (grub-install, ...) would run; recorded"),
    "Kernel-Settings": (
        "info",
        "the upgrade changes a sysctl.d value, a modules-load.d or binfmt.d entry: the kernel "
        "takes it at the next boot (reported, never applied in the sandbox)",
    ),
    "Conffile-Left": ("info", "the run leaves a .dpkg-dist/.dpkg-old/.ucf-* file beside a conffile"),
    "Source-Missing": (
        "warn",
        "a source offers nothing for the target release (a repository that has not published "
        "it yet): what came from it is neither upgraded nor rehearsed",
    ),
    "Obsolete": ("info", "after a release upgrade, installed packages no source offers any more"),
    "Auto-Removable": ("info", "packages that become auto-removable"),
    "Service-Failed": ("block", "a service active before the upgrade is failed or gone after it (or after a reboot)"),
    "Lost-Socket": ("block", "a port that was listening before no longer is"),
    "Http-Changed": ("block", "an HTTP page changes status or content type, stops answering, or serves PHP source"),
    "Http-Body-Changed": ("warn", "a page that was stable serves a different body"),
    "Module-Lost": ("block", "apache2ctl -M or php -m loses a module"),
    "Config-Test": ("block", "a daemon's config test (apache2ctl -t, nginx -t, ...) passed before and fails after"),
    "Sshd-Config": ("block", "sshd -t fails after the upgrade: the next sshd restart loses the machine"),
    "Dangling-Socket": (
        "block",
        "a web server's enabled configuration names a unix socket (PHP-FPM's, ...) that was there before the "
        "upgrade and is not after it",
    ),
    "Probe-Failed": ("block", "a probe of /etc/apt-rehearse/probes.d passed before and fails after"),
    "Downtime": (
        "info",
        "a service stops answering during the run (the forecast of its downtime in the real run, from the "
        "rehearsal's probes)",
    ),
    "Downtime-Max": (
        "block",
        "a service's forecast downtime (or the host's, all services together) passes APT::Rehearse::Downtime-Max",
    ),
}


@dataclasses.dataclass
class Finding:
    check: str
    kinds: list[str]  # policy kinds that apply; the most severe one wins
    subject: str
    message: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    severity: str = "info"

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "kinds": self.kinds,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
            "details": self.details,
        }


def severity_for(kind: str, lookup: Callable[[str, str], str]) -> str:
    default = DEFAULTS.get(kind, ("warn", ""))[0]
    value = lookup(f"APT::Rehearse::Policy::{kind}", default).strip().lower()
    return value if value in SEVERITIES else default


def apply_policy(findings: list[Finding], lookup: Callable[[str, str], str]) -> list[Finding]:
    for finding in findings:
        levels = [severity_for(kind, lookup) for kind in finding.kinds] or ["info"]
        finding.severity = max(levels, key=SEVERITIES.index)
    return findings


def verdict(findings: list[Finding]) -> str:
    severities = {f.severity for f in findings}
    if "block" in severities:
        return "block"
    if "warn" in severities:
        return "warn"
    return "pass"
