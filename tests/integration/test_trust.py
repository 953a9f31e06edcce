"""Packages apt itself would refuse are refused (issue 14).

A rehearsal unpacks the packages and runs their maintainer scripts as root:
a package that cannot be authenticated is refused, as apt-get refuses it,
with one line and exit 2 and nothing changed, unless the sysadmin's apt
configuration allows it the ways apt honours: [trusted=yes] on the source,
or APT::Get::AllowUnauthenticated.

The local repository is unsigned. Its lists are fetched the one way apt
keeps an unsigned source's packages without [trusted=yes]: with
Acquire::AllowInsecureRepositories, which apt allows and then marks the
source untrusted (apt-get install refuses its packages). The lists stay
while [trusted=yes] comes and goes: apt reads trust from the sources.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from conftest import assert_host_clean, host_snapshot, run_cli, run_json
from lib.localrepo import LocalRepo, build_deb
from lib.trees import bookworm_tree, install_into, tree_hash

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def unsigned(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-trust-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        debs = base / "debs"
        v1 = build_deb(debs, "rh-trust", "1.0", files={"/usr/share/rh-trust/version": "1.0\n"})
        v2 = build_deb(
            debs,
            "rh-trust",
            "2.0",
            files={"/usr/share/rh-trust/version": "2.0\n"},
            postinst='echo "rh-trust 2.0 configured"\n',
        )
        new = build_deb(debs, "rh-trust-new", "1.0", files={"/usr/share/rh-trust-new/version": "1.0\n"})
        tree = bookworm_tree(base / "tree", variant="minimal")
        install_into(tree, [v1])
        repo = LocalRepo(base / "repo")
        for deb in (v1, v2, new):
            repo.add(deb)
        repo.publish()
        sources = tree / "etc/apt/sources.list"
        sources.write_text(f"deb file:{repo.root} ./\n")  # no [trusted=yes], no signature
        for extra in (tree / "etc/apt/sources.list.d").glob("*"):
            extra.unlink()
        update = ["apt-get", "-q", "-o", f"Dir={tree}/", "update"]
        refused = subprocess.run(update, capture_output=True, text=True, check=False)
        assert refused.returncode != 0 and "is not signed" in refused.stdout + refused.stderr, refused
        subprocess.run(
            [*update[:-1], "-o", "Acquire::AllowInsecureRepositories=true", "update"], check=True, capture_output=True
        )
        yield {"base": base, "tree": tree, "repo": repo, "sources": sources}
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def trusted_yes(unsigned: dict) -> Iterator[None]:
    """The same source, with [trusted=yes] as the sysadmin may write it."""
    sources: Path = unsigned["sources"]
    original = sources.read_text()
    sources.write_text(original.replace("deb file:", "deb [trusted=yes] file:"))
    try:
        yield
    finally:
        sources.write_text(original)


def rehearse_args(unsigned: dict, *args: str) -> list[str]:
    return [
        "--root",
        str(unsigned["tree"]),
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={unsigned['base']}/log",
        *args,
    ]


@pytest.mark.parametrize(
    "request_words, refused",
    [
        (("install", "rh-trust"), "package rh-trust cannot"),
        (("install", "rh-trust-new"), "package rh-trust-new cannot"),
        (("dist-upgrade",), "package rh-trust cannot"),
    ],
)
def test_an_unauthenticated_package_is_refused_in_one_line_with_exit_2(
    unsigned: dict, request_words: tuple, refused: str
) -> None:
    tree = unsigned["tree"]
    before, host = tree_hash(tree), host_snapshot()
    proc = run_cli(*rehearse_args(unsigned, *request_words))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    source = f"file:{unsigned['repo'].root} ./"
    assert line.startswith(f"E: {refused} be authenticated (source {source} has no valid signature); "), line
    assert "[trusted=yes]" in line and "-o APT::Get::AllowUnauthenticated=true" in line, line
    # Refused while planning: no rehearsal ran, no report was written.
    assert not (unsigned["base"] / "log").exists() or not any((unsigned["base"] / "log").iterdir())
    assert tree_hash(tree) == before
    assert_host_clean(host)


def test_insecure_repositories_alone_do_not_authenticate(unsigned: dict) -> None:
    # As with apt-get: fetching an unsigned source's lists is allowed, installing from it is not.
    proc = run_cli(*rehearse_args(unsigned, "-o", "Acquire::AllowInsecureRepositories=true", "install", "rh-trust"))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "cannot be authenticated" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def _assert_rehearsed(unsigned: dict, *args: str) -> None:
    tree = unsigned["tree"]
    before = tree_hash(tree)
    proc, document = run_json(*rehearse_args(unsigned, *args))
    assert proc.returncode == 0, (proc.stderr[-3000:], document.get("findings"))
    changes = {c["package"]: c for c in document["transaction"]["changes"]}
    assert (changes["rh-trust"]["action"], changes["rh-trust"]["from"], changes["rh-trust"]["to"]) == (
        "upgrade",
        "1.0",
        "2.0",
    )
    assert document["verdict"] == "pass", document["findings"]
    assert tree_hash(tree) == before


def test_allow_unauthenticated_is_honoured_as_apt_does(unsigned: dict) -> None:
    _assert_rehearsed(unsigned, "-o", "APT::Get::AllowUnauthenticated=true", "install", "rh-trust")


def test_allow_unauthenticated_from_apt_conf_is_honoured(unsigned: dict) -> None:
    snippet = unsigned["tree"] / "etc/apt/apt.conf.d/99rh-allow-unauthenticated"
    snippet.write_text('APT::Get::AllowUnauthenticated "true";\n')
    try:
        _assert_rehearsed(unsigned, "install", "rh-trust")
    finally:
        snippet.unlink()


def test_a_source_marked_trusted_yes_is_rehearsed(unsigned: dict) -> None:
    with trusted_yes(unsigned):
        _assert_rehearsed(unsigned, "install", "rh-trust")
