"""apt.conf keys become Settings: defaults, and what a sysadmin sets."""

from __future__ import annotations

from typing import Iterator

import apt_pkg
import pytest

from apt_rehearse.model.config import read_settings

KEYS = ("APT::Rehearse::Keep-Reports", "APT::Rehearse::Archives-Max-Age", "APT::Rehearse::Cache-Max-Age")


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


def test_housekeeping_keys_are_read_in_their_units(clean_keys: None) -> None:
    apt_pkg.config.set("APT::Rehearse::Keep-Reports", "3")
    apt_pkg.config.set("APT::Rehearse::Archives-Max-Age", "2")  # days, as APT::Archives::MaxAge
    apt_pkg.config.set("APT::Rehearse::Cache-Max-Age", "60")  # seconds, as the hook reads it
    settings = read_settings()
    assert (settings.keep_reports, settings.archives_max_age, settings.verdict_max_age) == (3, 2 * 86400, 60)


def test_keeping_no_report_at_all_is_not_an_option(clean_keys: None) -> None:
    apt_pkg.config.set("APT::Rehearse::Keep-Reports", "0")
    assert read_settings().keep_reports == 1  # the report just written stays
