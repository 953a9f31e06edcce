"""apt.conf keys become Settings: defaults, and what a sysadmin sets."""

from __future__ import annotations

from typing import Iterator

from pathlib import Path

import apt_pkg
import pytest

from apt_rehearse.model.config import KNOWN_SETTINGS, read_settings, setting_warnings

KEYS = (
    "APT::Rehearse::Keep-Reports",
    "APT::Rehearse::Archives-Max-Age",
    "APT::Rehearse::Cache-Max-Age",
    "APT::Rehearse::CPU-Weight",
    "APT::Rehearse::IO-Weight",
    "APT::Rehearse::Mail",
    "APT::Rehearse::Boot-Timeout",
)


@pytest.fixture
def clean_keys() -> Iterator[None]:
    apt_pkg.init_config()
    for key in KEYS:
        apt_pkg.config.clear(key)
    yield
    for key in KEYS:
        apt_pkg.config.clear(key)


def test_housekeeping_defaults(clean_keys: None) -> None:
    settings = read_settings()
    assert settings.keep_reports == 100
    assert settings.archives_max_age == 7 * 86400
    assert settings.verdict_max_age == 6 * 3600  # the hook's own default


def test_the_boot_waits_longer_than_systemd_s_own_start_timeout(clean_keys: None) -> None:
    # Samba (corpus): nmbd stalls for systemd's 90 s with loopback only, smbd waits behind it; observed
    # at 90 s, smbd looked lost after the reboot and blocked an upgrade that works.
    assert read_settings().boot_timeout > 90 + 30
    apt_pkg.config.set("APT::Rehearse::Boot-Timeout", "30")
    assert read_settings().boot_timeout == 30


def test_housekeeping_keys_are_read_in_their_units(clean_keys: None) -> None:
    apt_pkg.config.set("APT::Rehearse::Keep-Reports", "3")
    apt_pkg.config.set("APT::Rehearse::Archives-Max-Age", "2")  # days, as APT::Archives::MaxAge
    apt_pkg.config.set("APT::Rehearse::Cache-Max-Age", "60")  # seconds, as the hook reads it
    settings = read_settings()
    assert (settings.keep_reports, settings.archives_max_age, settings.verdict_max_age) == (3, 2 * 86400, 60)


def test_weights_and_mail(clean_keys: None) -> None:
    from apt_rehearse.model.errors import UsageError

    settings = read_settings()
    assert (settings.cpu_weight, settings.io_weight, settings.mail) == (None, None, "root")
    apt_pkg.config.set("APT::Rehearse::CPU-Weight", "20")
    apt_pkg.config.set("APT::Rehearse::IO-Weight", "10000")
    apt_pkg.config.set("APT::Rehearse::Mail", "")
    settings = read_settings()
    assert (settings.cpu_weight, settings.io_weight, settings.mail) == (20, 10000, "")
    apt_pkg.config.set("APT::Rehearse::CPU-Weight", "idle")  # systemd's CPUWeight=idle, its weight 0
    assert read_settings().cpu_weight == 0
    apt_pkg.config.set("APT::Rehearse::CPU-Weight", "0")
    with pytest.raises(UsageError, match="CPU-Weight must be a number from 1 to 10000 or idle"):
        read_settings()
    apt_pkg.config.set("APT::Rehearse::CPU-Weight", "")
    apt_pkg.config.set("APT::Rehearse::IO-Weight", "idle")  # no idle for I/O (IOSchedulingClass=idle is)
    with pytest.raises(UsageError, match="IO-Weight must be a number from 1 to 10000, not 'idle'"):
        read_settings()


def test_keeping_no_report_at_all_is_not_an_option(clean_keys: None) -> None:
    apt_pkg.config.set("APT::Rehearse::Keep-Reports", "0")
    assert read_settings().keep_reports == 1  # the report just written stays


def test_apt_setup_survives_python_debian_imported_after_it(tmp_path) -> None:
    """debian.debian_support runs apt_pkg.init() on its first import: after
    our set-up that would put apt's defaults back, and the package caches
    would be written into the target's /var/cache/apt."""
    import subprocess
    import sys

    code = (
        "import apt_pkg\n"
        "from apt_rehearse.model import config\n"
        f"config.init_apt_config({str(tmp_path)!r}, ['APT::Rehearse::Test=yes'])\n"
        "from debian.deb822 import Deb822\n"
        "from debian.debfile import DebFile\n"
        "print(repr(apt_pkg.config.find('Dir::Cache::srcpkgcache')), repr(apt_pkg.config.find('Dir::Cache::pkgcache')),"
        " apt_pkg.config.find('APT::Rehearse::Test'), apt_pkg.config.find('Dir'))\n"
    )
    source = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": source})
    assert proc.stdout.split() == ["''", "''", "yes", f"{tmp_path}/"], proc.stderr


def test_what_nothing_reads_is_said(clean_keys: None) -> None:
    apt_pkg.config.clear("APT::Rehearse")
    try:
        for key in KNOWN_SETTINGS:  # every known one, set, says nothing
            if key != "Policy":
                apt_pkg.config.set(f"APT::Rehearse::{key}", "1")
        apt_pkg.config.set("APT::Rehearse::policy::remove-manual", "WARN")  # apt's keys are case-blind
        apt_pkg.config.set("APT::Rehearse::Policy::Conffile-Prompt", "block")
        assert setting_warnings() == []
        apt_pkg.config.set("APT::Rehearse::Polcy::Remove", "warn")
        apt_pkg.config.set("APT::Rehearse::Policy::Remove-Manaul", "warn")
        apt_pkg.config.set("APT::Rehearse::Policy::Remove", "maybe")
        warnings = setting_warnings()
        assert len(warnings) == 3, warnings
        assert warnings[0].startswith("APT::Rehearse::Polcy is not an apt-rehearse setting (ignored)")
        assert any("no finding is of kind Remove-Manaul (ignored)" in w for w in warnings)
        assert any('Remove "maybe" is none of info, warn, block: the default applies' in w for w in warnings)
    finally:
        apt_pkg.config.clear("APT::Rehearse")
