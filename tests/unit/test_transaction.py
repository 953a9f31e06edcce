from __future__ import annotations

import apt_pkg
import pytest

from apt_rehearse.model.transaction import Change, Transaction, classify

apt_pkg.init_system()


def change(**overrides: object) -> Change:
    fields = dict(
        package="foo",
        arch="amd64",
        from_version="1.0",
        to_version="2.0",
        action="upgrade",
        deb="/x/foo_2.0_amd64.deb",
        sha256="a" * 64,
    )
    fields.update(overrides)
    return Change(**fields)  # type: ignore[arg-type]


def test_identity_ignores_order_and_informational_fields() -> None:
    a = Transaction([change(), change(package="bar")], dpkg_status_sha256="s1", request="dist-upgrade")
    b = Transaction([change(package="bar"), change()], dpkg_status_sha256="s1", request="upgrade", kept_back=["x"])
    assert a.identity == b.identity


@pytest.mark.parametrize(
    "other",
    [
        Transaction([change(to_version="2.1")], dpkg_status_sha256="s1"),
        Transaction([change(sha256="b" * 64)], dpkg_status_sha256="s1"),
        Transaction([change(action="downgrade")], dpkg_status_sha256="s1"),
        Transaction([change()], dpkg_status_sha256="s2"),
        Transaction(
            [change(), change(package="baz", action="remove", to_version=None, deb=None)], dpkg_status_sha256="s1"
        ),
    ],
)
def test_identity_changes_with_what_matters(other: Transaction) -> None:
    assert Transaction([change()], dpkg_status_sha256="s1").identity != other.identity


def test_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError):
        change(action="frobnicate")


@pytest.mark.parametrize(
    ("old", "new", "action"),
    [
        (None, "1.0", "install"),
        ("1.0", None, "remove"),
        ("1.0", "1.0", "reinstall"),
        ("1.0", "1:0.9", "upgrade"),
        ("2.0~rc1", "1.9", "downgrade"),
        ("1.0", "1.0+deb12u1", "upgrade"),
    ],
)
def test_classify_uses_debian_version_order(old: str | None, new: str | None, action: str) -> None:
    assert classify(old, new, apt_pkg.version_compare) == action


def test_json_round_trip() -> None:
    original = change(manual=True, requested=True)
    assert Change.from_json(original.to_json()) == original
    document = Transaction([original], root="/srv/tree", dpkg_status_sha256="s").to_json()
    assert document["changes"][0]["from"] == "1.0" and document["changes"][0]["to"] == "2.0"
    assert document["id"] == Transaction([original], dpkg_status_sha256="s").identity


def test_by_action_sorts_and_filters() -> None:
    tx = Transaction(
        [
            change(package="zz", action="remove", to_version=None),
            change(package="aa", action="remove", to_version=None),
            change(package="mm"),
        ]
    )
    assert [c.package for c in tx.by_action("remove")] == ["aa", "zz"]
