"""The version-3 hook stream, from streams real apt wrote (tests/unit/data)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from apt_rehearse.hookstream import HookInputError, parse, requested_packages, to_transaction

DATA = Path(__file__).parent / "data"


def load(name: str) -> str:
    return (DATA / name).read_text()


def transaction_of(text: str):
    return to_transaction(parse(text), "/", "s" * 64, lambda path: "h:" + os.path.basename(path),
                          lambda package, arch: package == "libauto")  # fmt: skip


def test_config_dump_is_read_like_apt() -> None:
    hook = parse(load("hook-v3-install-remove.txt"))
    assert hook.version == 3
    assert hook.get("APT::Architecture") == "amd64"
    assert hook.get("apt::architecture") == "amd64"
    assert hook.get_bool("APT::Get::Assume-Yes") is True
    assert hook.get("CommandLine::AsString") == "apt-get install -y -q hello nano-"
    assert "/usr/sbin/dpkg-preconfigure --apt || true" in hook.values("DPkg::Pre-Install-Pkgs")


def test_install_and_remove() -> None:
    tx = transaction_of(load("hook-v3-install-remove.txt"))
    changes = {c.package: c for c in tx.changes}
    assert set(changes) == {"hello", "nano"}
    hello = changes["hello"]
    assert (hello.action, hello.from_version, hello.to_version, hello.arch) == ("install", None, "2.10-3", "amd64")
    assert hello.deb == "/var/cache/apt/archives/hello_2.10-3_amd64.deb" and hello.sha256 == "h:hello_2.10-3_amd64.deb"
    assert hello.requested is True and hello.manual is True
    nano = changes["nano"]
    assert (nano.action, nano.from_version, nano.to_version) == ("remove", "7.2-1+deb12u1", None)
    assert nano.requested is True
    assert tx.request == "install -y -q hello nano-"


@pytest.mark.parametrize(
    ("fixture", "package", "action"),
    [("hook-v3-purge.txt", "hello", "purge"), ("hook-v3-reinstall.txt", "nano", "reinstall"),
     ("hook-v3-downgrade.txt", "tzdata", "downgrade"), ("hook-v3-upgrade.txt", "tzdata", "upgrade")],
)  # fmt: skip
def test_every_action(fixture: str, package: str, action: str) -> None:
    tx = transaction_of(load(fixture))
    assert [(c.package, c.action) for c in tx.changes] == [(package, action)]


def test_arch_all_stays_all() -> None:
    [change] = transaction_of(load("hook-v3-upgrade.txt")).changes
    assert change.arch == "all"


def test_same_identity_as_the_cli_would_compute() -> None:
    from apt_rehearse.transaction import Change, Transaction

    tx = transaction_of(load("hook-v3-upgrade.txt"))
    cli = Transaction([Change("tzdata", "all", "2026b-0+deb12u1", "2026f-0+deb12u1", "upgrade",
                              sha256="h:tzdata_2026f-0+deb12u1_all.deb")], dpkg_status_sha256="s" * 64)  # fmt: skip
    assert tx.identity == cli.identity


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no hook input"),
        ("VERSION 2\nA=b\n\nfoo\n", "version 2 is not supported"),
        ("hello\n", "does not start with 'VERSION 3'"),
        ("VERSION 3\nAPT::X=1\n", "truncated"),
        ("VERSION 3\nnoequals\n\n", "malformed configuration line"),
        ("VERSION 3\nA=1\n\nfoo 1 amd64 none < 2 amd64 none\n", "has 8 fields"),
        ("VERSION 3\nA=1\n\nfoo 1 amd64 none ? 2 amd64 none /x/foo.deb\n", "unknown direction"),
        ("VERSION 3\nA=1\n\nfoo 1 amd64 none < 2 amd64 none rm -rf\n", "fields"),
        ("VERSION 3\nA=1\n\nfoo 1 amd64 none < 2 amd64 none ../foo.deb\n", "unknown action"),
        ("VERSION 3\nA=1\n\nfoo - - none < 2 amd64 none /x/foo.deb", "truncated"),
    ],
)
def test_malformed_input_is_one_clear_error(text: str, words: str) -> None:
    with pytest.raises(HookInputError) as raised:
        parse(text)
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_fuzzed_streams_never_raise_anything_else() -> None:
    """Random damage to real streams: either a parse, or one HookInputError."""
    rng = random.Random(20261126)
    seeds = [load(name) for name in sorted(os.listdir(DATA))]
    for _ in range(1000):
        text = rng.choice(seeds)
        operation = rng.randrange(4)
        position = rng.randrange(len(text))
        if operation == 0:
            text = text[:position]
        elif operation == 1:
            text = text[:position] + text[position + rng.randrange(1, 40):]
        elif operation == 2:
            text = text[:position] + rng.choice(["\n", " ", "=", "%", "\0", "VERSION 3", "**REMOVE**", "é"]) + text[position:]
        else:
            text = text.replace(" ", "  ", 1)
        try:
            hook = parse(text)
            transaction_of(text) if hook.lines else None
        except HookInputError as error:
            assert str(error) and "\n" not in str(error)


def test_requested_packages_from_the_command_line() -> None:
    assert requested_packages("apt-get install -y foo bar=1.0 baz/trixie qux- -o X=1") >= {"foo", "bar", "baz", "qux"}
    assert requested_packages("apt-get -y dist-upgrade") == set()
    assert requested_packages("apt remove --purge 'x:amd64'") == {"x"}
    assert requested_packages("/usr/bin/unattended-upgrade") == set()


def test_configure_only_is_nothing_to_rehearse() -> None:
    text = "VERSION 3\nA=1\n\nfoo 1 amd64 none = 1 amd64 none **CONFIGURE**\n"
    assert transaction_of(text).is_empty


def test_the_hook_finds_renames_in_the_debs_control(tmp_path: Path) -> None:
    from lib.localrepo import build_deb

    from apt_rehearse.hook import _successors
    from apt_rehearse.transaction import Change, Transaction

    renamed = build_deb(tmp_path, "libmagic1t64", "1:5.46-5", arch="amd64", provides="libmagic1 (= 1:5.46-5)")
    plain = build_deb(tmp_path, "file", "1:5.46-5", arch="amd64", depends="libmagic1t64")
    changes = [
        Change("libmagic1", "amd64", "1:5.44-3", None, "remove", manual=True),
        Change("libmagic1t64", "amd64", None, "1:5.46-5", "install", deb=str(renamed)),
        Change("file", "amd64", "1:5.44-3", "1:5.46-5", "upgrade", deb=str(plain)),
    ]
    assert _successors(Transaction(changes)) == {"libmagic1": "libmagic1t64"}
    # Only a manual removal makes the .debs worth opening.
    changes[0] = Change("libmagic1", "amd64", "1:5.44-3", None, "remove", manual=False)
    assert _successors(Transaction(changes)) == {}
