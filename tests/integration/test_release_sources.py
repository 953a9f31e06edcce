"""--release when a source has not published the new release yet.

Right after a Debian release, third-party repositories (Docker, PostgreSQL's
pgdg, ...) often offer nothing for it. apt's update says so for that
repository and goes on with the others; the rehearsal must do the same and
say what it left out, and stop with one line only when no source at all
offers the release (a misspelt codename). Two local suite-based
repositories stand in for the archive and the late third party.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import stat
import subprocess
import tempfile
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import run_cli, run_json
from debian.deb822 import Deb822
from lib.localrepo import build_deb
from lib.trees import bookworm_tree, install_into, tree_hash

pytestmark = pytest.mark.integration


def suite_repo(root: Path, suites: dict[str, list[Path]]) -> Path:
    """A repository laid out like Debian's: dists/SUITE/main/binary-amd64."""
    for suite, debs in suites.items():
        pool = root / "pool" / suite
        pool.mkdir(parents=True)
        for deb in debs:
            shutil.copy(deb, pool)
        index_dir = root / "dists" / suite / "main/binary-amd64"
        index_dir.mkdir(parents=True)
        packages = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", f"pool/{suite}", "/dev/null"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        (index_dir / "Packages").write_bytes(packages)
        (index_dir / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        release = Deb822()
        release.update(
            {
                "Suite": suite,
                "Codename": suite,
                "Architectures": "amd64 all",
                "Components": "main",
                "Date": format_datetime(datetime.now(timezone.utc).replace(microsecond=0), usegmt=True),
            }
        )
        lines = [""]
        for name in ("Packages", "Packages.gz"):
            data = (index_dir / name).read_bytes()
            lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-amd64/{name}")
        release["SHA256"] = "\n".join(lines)
        (root / "dists" / suite / "Release").write_bytes(release.dump().encode())
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def two_sources(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-rel-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        debs = base / "debs"
        tool1 = build_deb(debs, "rh-tool", "1.0", files={"/usr/share/rh-tool/version": "1.0\n"})
        tool2 = build_deb(
            debs,
            "rh-tool",
            "2.0",
            files={"/usr/share/rh-tool/version": "2.0\n"},
            postinst='echo "rh-tool 2.0 configured"\n',
        )
        extra = build_deb(debs, "rh-extra", "1.0", files={"/usr/share/rh-extra/version": "1.0\n"})
        archive = suite_repo(base / "archive", {"bookworm": [tool1], "trixie": [tool2]})
        late = suite_repo(base / "late", {"bookworm": [extra]})  # nothing for trixie yet
        tree = bookworm_tree(base / "tree", variant="minimal")
        install_into(tree, [tool1, extra])
        (tree / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{archive} bookworm main\n")
        (tree / "etc/apt/sources.list.d/late.list").write_text(f"deb [trusted=yes] file:{late} bookworm main\n")
        for other in (tree / "etc/apt/sources.list.d").glob("*.sources"):
            other.unlink()
        yield {"base": base, "tree": tree, "late": late}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_source_without_the_release_is_left_out_and_said(two_sources: dict) -> None:
    tree = two_sources["tree"]
    before = tree_hash(tree)
    proc, document = run_json(
        "--root",
        str(tree),
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={two_sources['base']}/log",
        "dist-upgrade",
        "--release",
        "trixie",
    )
    assert proc.returncode == 0, (proc.stderr, document.get("findings"))
    changes = {c["package"]: c for c in document["transaction"]["changes"]}
    assert (changes["rh-tool"]["from"], changes["rh-tool"]["to"]) == ("1.0", "2.0")
    assert "rh-extra" not in changes
    [missing] = [f for f in document["findings"] if "Source-Missing" in f["kinds"]]
    assert missing["subject"] == f"file:{two_sources['late']} trixie"
    assert missing["severity"] == "warn" and "offers nothing for trixie" in missing["message"]
    assert document["verdict"] == "warn"
    assert "rh-extra" in document["obsolete"]
    assert tree_hash(tree) == before


def test_a_release_no_source_offers_is_one_line_and_exit_2(two_sources: dict) -> None:
    proc = run_cli("--root", str(two_sources["tree"]), "--no-services", "dist-upgrade", "--release", "trixy")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("E: no apt source offers 'trixy'"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_apt_inside_takes_the_prepared_cache_of_the_release(two_sources: dict) -> None:
    # apt's own check decides (index paths, sizes, mtimes, apt's version):
    # it keeps a srcpkgcache.bin it finds valid and replaces a stale one.
    proc = run_cli(
        "--root",
        str(two_sources["tree"]),
        "--no-services",
        "--debug",
        "--json",
        "-o",
        f"APT::Rehearse::Log-Dir={two_sources['base']}/log",
        "dist-upgrade",
        "--release",
        "trixie",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "D: replay: apt inside reused the release's prepared srcpkgcache.bin" in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def unsigned_source(sandbox_capable: None):
    """The archive, unsigned and without [trusted=yes] (issue 14)."""
    base = Path(tempfile.mkdtemp(prefix="rh-rel-unsigned-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        debs = base / "debs"
        tool1 = build_deb(debs, "rh-tool", "1.0", files={"/usr/share/rh-tool/version": "1.0\n"})
        tool2 = build_deb(debs, "rh-tool", "2.0", files={"/usr/share/rh-tool/version": "2.0\n"})
        archive = suite_repo(base / "archive", {"bookworm": [tool1], "trixie": [tool2]})
        tree = bookworm_tree(base / "tree", variant="minimal")
        install_into(tree, [tool1])
        (tree / "etc/apt/sources.list").write_text(f"deb file:{archive} bookworm main\n")
        for other in (tree / "etc/apt/sources.list.d").glob("*"):
            other.unlink()
        yield {"base": base, "tree": tree, "archive": archive}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _release_run(unsigned_source: dict, *options: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "--root",
        str(unsigned_source["tree"]),
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={unsigned_source['base']}/log",
        *options,
        "dist-upgrade",
        "--release",
        "trixie",
    )


def test_an_unsigned_source_is_refused_as_apt_update_refuses_it(unsigned_source: dict) -> None:
    before = tree_hash(unsigned_source["tree"])
    proc = _release_run(unsigned_source)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        f"E: the repository file:{unsigned_source['archive']} trixie has no valid signature, "
        "so apt update refuses it"
    ), line
    assert "[trusted=yes]" in line and "Traceback" not in proc.stderr
    assert tree_hash(unsigned_source["tree"]) == before


def test_an_insecure_source_of_the_release_is_not_authenticated(unsigned_source: dict) -> None:
    # apt update takes it with Acquire::AllowInsecureRepositories; apt-get would not install from it.
    before = tree_hash(unsigned_source["tree"])
    proc = _release_run(unsigned_source, "-o", "Acquire::AllowInsecureRepositories=true")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        f"E: package rh-tool cannot be authenticated (source file:{unsigned_source['archive']} "
        "trixie has no valid signature); "
    ), line
    assert tree_hash(unsigned_source["tree"]) == before


def test_an_insecure_source_allowed_unauthenticated_is_rehearsed(unsigned_source: dict) -> None:
    before = tree_hash(unsigned_source["tree"])
    proc, document = run_json(
        "--root",
        str(unsigned_source["tree"]),
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={unsigned_source['base']}/log",
        "-o",
        "Acquire::AllowInsecureRepositories=true",
        "-o",
        "APT::Get::AllowUnauthenticated=true",
        "dist-upgrade",
        "--release",
        "trixie",
    )
    assert proc.returncode == 0, (proc.stderr[-3000:], document.get("findings"))
    changes = {c["package"]: c for c in document["transaction"]["changes"]}
    assert (changes["rh-tool"]["from"], changes["rh-tool"]["to"]) == ("1.0", "2.0")
    assert tree_hash(unsigned_source["tree"]) == before


def test_a_repeated_release_plan_opens_the_kept_apt_cache_of_its_lists(two_sources: dict, tmp_path: Path) -> None:
    # The release's lists are apt-rehearse's own (its release state): apt's
    # cache files of them are kept beside them, root's only, and opened, not
    # rebuilt, while neither the lists nor the status changed.
    cache_dir = tmp_path / "cache"

    def plan() -> dict:
        proc, document = run_json(
            "--root",
            str(two_sources["tree"]),
            "--no-services",
            "-o",
            f"APT::Rehearse::Cache-Dir={cache_dir}",
            "-o",
            f"APT::Rehearse::Log-Dir={tmp_path / 'log'}",
            "dist-upgrade",
            "--release",
            "trixie",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {c["package"]: c["to"] for c in document["transaction"]["changes"]}

    assert plan() == {"rh-tool": "2.0"}
    [index] = list(cache_dir.glob("releases/trixie-*/index/pkgcache.bin"))
    built = index.stat().st_mtime_ns
    assert stat.S_IMODE(index.stat().st_mode) & 0o077 == 0 and stat.S_IMODE(index.parent.stat().st_mode) == 0o700
    assert plan() == {"rh-tool": "2.0"}
    assert index.stat().st_mtime_ns == built
    assert not (cache_dir / "apt-index").exists()  # the system's own lists were not opened for it
