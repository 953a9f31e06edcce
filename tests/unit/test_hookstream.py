"""The version-3 hook stream, from streams real apt wrote (tests/unit/data)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from apt_rehearse.plan.hookstream import HookInputError, parse, requested_packages, to_transaction
from apt_rehearse.model.transaction import sha256_file

DATA = Path(__file__).parent / "data"


def load(name: str) -> str:
    return (DATA / name).read_text()


def transaction_of(text: str):
    return to_transaction(
        parse(text),
        "/",
        "s" * 64,
        lambda path: "h:" + os.path.basename(path),
        lambda package, arch: package == "libauto",
    )


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
    [
        ("hook-v3-purge.txt", "hello", "purge"),
        ("hook-v3-reinstall.txt", "nano", "reinstall"),
        ("hook-v3-downgrade.txt", "tzdata", "downgrade"),
        ("hook-v3-upgrade.txt", "tzdata", "upgrade"),
    ],
)
def test_every_action(fixture: str, package: str, action: str) -> None:
    tx = transaction_of(load(fixture))
    assert [(c.package, c.action) for c in tx.changes] == [(package, action)]


def test_arch_all_stays_all() -> None:
    [change] = transaction_of(load("hook-v3-upgrade.txt")).changes
    assert change.arch == "all"


TZDATA_STATUS = """\
Package: tzdata
Status: install ok installed
Priority: required
Section: localization
Installed-Size: 1
Maintainer: apt-rehearse tests <apt-rehearse-tests@localhost>
Architecture: all
Multi-Arch: foreign
Version: 2026b-0+deb12u1
Description: time zone and daylight-saving time data

"""

# The CLI's own planning steps (cli._rehearse_request), in a process of their
# own as in the CLI: apt_pkg's configuration is global to a process.
PLAN_LIKE_THE_CLI = """
import json, sys
from apt_rehearse.model import config
from apt_rehearse.store import deb_hashes
from apt_rehearse.plan import planner
root, cache_dir, command = sys.argv[1:]
config.init_apt_config(root, [])
request = planner.Request(command, [], root)
known_debs = deb_hashes.DebHashes(cache_dir)
transaction = planner.plan_transaction(request, cache_dir + "/archives", False, None, known_debs.sha256)
print(json.dumps(transaction.to_json()))
"""


def test_same_identity_as_the_cli_would_compute(tmp_path: Path) -> None:
    """The hook's transaction from apt's stream and the planner's from the
    same system (the stream's tzdata 2026b installed, 2026f offered) are one
    transaction: one identity, so the hook finds the CLI's verdict."""
    import subprocess

    from lib.localrepo import LocalRepo, build_deb, serve_to_tree

    from apt_rehearse.store.deb_hashes import DebHashes, digest

    if os.geteuid() != 0:
        pytest.skip("the planner makes its download directory root's (config.apt_download_dir): needs root")
    tree = tmp_path / "tree"
    for directory in (
        "var/lib/dpkg",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
    ):
        (tree / directory).mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text(TZDATA_STATUS)
    repo = LocalRepo(tmp_path / "repo")
    deb = repo.add(build_deb(tmp_path / "debs", "tzdata", "2026f-0+deb12u1", extra_control={"Multi-Arch": "foreign"}))
    repo.publish()
    serve_to_tree(tree, repo)

    proc = subprocess.run(
        ["/usr/bin/python3", "-c", PLAN_LIKE_THE_CLI, str(tree), str(tmp_path / "cache"), "upgrade"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    assert [(c["package"], c["arch"], c["from"], c["to"], c["action"], c["sha256"]) for c in cli["changes"]] == [
        ("tzdata", "all", "2026b-0+deb12u1", "2026f-0+deb12u1", "upgrade", sha256_file(deb))
    ]

    # The hook's side, as hook.main computes it: the status file's digest and
    # the hash of the .deb apt names (the stream's path is apt's archive, where
    # apt would have put this very file).
    with open(tree / "var/lib/dpkg/status", "rb") as handle:
        status_sha = digest(handle)
    hashes = DebHashes(str(tmp_path / "hook-cache"))

    def sha256_of(path: str) -> str:
        assert os.path.basename(path) == deb.name
        return hashes.sha256(str(deb))

    tx = to_transaction(
        parse(load("hook-v3-upgrade.txt")), str(tree), status_sha, sha256_of, lambda package, arch: False
    )
    assert tx.identity == cli["id"]


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
    seeds = [path.read_text() for path in sorted(DATA.glob("hook-v3-*.txt"))]
    assert len(seeds) == 5
    for _ in range(1000):
        text = rng.choice(seeds)
        operation = rng.randrange(4)
        position = rng.randrange(len(text))
        if operation == 0:
            text = text[:position]
        elif operation == 1:
            text = text[:position] + text[position + rng.randrange(1, 40) :]
        elif operation == 2:
            text = (
                text[:position]
                + rng.choice(["\n", " ", "=", "%", "\0", "VERSION 3", "**REMOVE**", "é"])
                + text[position:]
            )
        else:
            text = text.replace(" ", "  ", 1)
        try:
            hook = parse(text)
            transaction_of(text) if hook.lines else None
        except HookInputError as error:
            assert str(error) and "\n" not in str(error)


def test_requested_packages_from_the_command_line() -> None:
    # -o takes the next word as its value: "X=1" is an option, not a package.
    assert requested_packages("apt-get install -y foo bar=1.0 baz/trixie qux- -o X=1") == {"foo", "bar", "baz", "qux"}
    assert requested_packages("apt-get -y dist-upgrade") == set()
    assert requested_packages("apt remove --purge 'x:amd64'") == {"x"}
    assert requested_packages("/usr/bin/unattended-upgrade") == set()


def test_configure_only_is_nothing_to_rehearse() -> None:
    text = "VERSION 3\nA=1\n\nfoo 1 amd64 none = 1 amd64 none **CONFIGURE**\n"
    assert transaction_of(text).is_empty


def test_the_hook_finds_renames_in_the_debs_control(tmp_path: Path) -> None:
    from lib.localrepo import build_deb

    from apt_rehearse.fronts.hook import _successors
    from apt_rehearse.model.transaction import Change, Transaction

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
