"""The apt-get command line the replay runs: what it names, how it removes."""

from __future__ import annotations

from apt_rehearse.inside.replay import ReplayPlan, apt_command
from apt_rehearse.model.transaction import Change, Transaction


def _plan(*changes: Change) -> ReplayPlan:
    debs = {c.name: f"/run/apt-rehearse/debs/0/{c.package}.deb" for c in changes if c.to_version}
    return ReplayPlan(Transaction(changes=list(changes), root="/", request="test"), debs, [], 60)


def test_purges_are_apt_s_purge_option_with_the_remove_suffix() -> None:
    # apt-get has no "_" suffix: "postgresql-15_" is "Unable to locate package".
    argv = apt_command(_plan(Change("db", "amd64", "1", None, "purge"), Change("db-x", "all", "1", None, "purge")))
    assert argv[-2:] == ["db-x-", "db:amd64-"]  # sorted by name; arch all by its bare name
    assert "APT::Get::Purge=true" in argv and not any(word.endswith("_") for word in argv)


def test_removals_alone_keep_the_config_files() -> None:
    argv = apt_command(_plan(Change("db", "amd64", "1", None, "remove"), Change("app", "amd64", "1", "2", "upgrade")))
    assert "APT::Get::Purge=true" not in argv
    assert argv[-2:] == ["/run/apt-rehearse/debs/0/app.deb", "db:amd64-"]


def test_purge_and_remove_together_remove_both() -> None:
    argv = apt_command(_plan(Change("a", "amd64", "1", None, "purge"), Change("b", "amd64", "1", None, "remove")))
    assert "APT::Get::Purge=true" not in argv  # the remove's config files must stay; the purge not done is reported
    assert argv[-2:] == ["a:amd64-", "b:amd64-"]
