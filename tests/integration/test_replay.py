"""Real rehearsals of small real packages on a real bookworm tree.

The packages are built here with dpkg-deb and served from a local file:
repository; version 1.0 of each is installed into a bookworm tree made by
mmdebstrap, version 2.0 is what the rehearsal replays. Every rehearsal runs
in real namespaces on real overlayfs with the tree's own apt and dpkg, and
the tree must be byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SRC, assert_host_clean, host_snapshot, run_cli, run_json
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, dpkg_status_digest, install_into, tree_hash

pytestmark = pytest.mark.integration

CONF_V1 = "# rh-conf settings\nsetting=1\n"
CONF_LOCAL = "# rh-conf settings\nsetting=local-change\n"
CONF_V2 = "# rh-conf settings\nsetting=2\nnew_option=yes\n"


def _packages(debs: Path) -> tuple[list[Path], list[Path]]:
    v1 = [
        build_deb(debs, "rh-clean", "1.0", files={"/usr/share/rh-clean/version": "1.0\n"}),
        build_deb(debs, "rh-fail", "1.0", files={"/usr/share/rh-fail/version": "1.0\n"}),
        build_deb(debs, "rh-keep", "1.0", files={"/usr/share/rh-keep/data": "kept\n"}),
        build_deb(debs, "rh-app", "1.0", files={"/usr/share/rh-app/version": "1.0\n"}),
        build_deb(debs, "rh-conf", "1.0", conffiles={"/etc/rh-conf.conf": CONF_V1}),
        build_deb(debs, "rh-libold1", "1.0", arch="amd64", files={"/usr/lib/rh-libold.so.1": "1.0\n"}),
        build_deb(debs, "rh-user", "1.0", depends="rh-libold1"),
        build_deb(debs, "rh-arch", "1.0", files={"/usr/share/rh-arch/version": "1.0\n"}),
    ]
    v2 = [
        build_deb(
            debs,
            "rh-clean",
            "2.0",
            files={"/usr/share/rh-clean/version": "2.0\n"},
            postinst='echo "rh-clean configured"\n',
        ),
        build_deb(
            debs,
            "rh-fail",
            "2.0",
            files={"/usr/share/rh-fail/version": "2.0\n"},
            postinst='echo "rh-fail: cannot migrate the database" >&2\nexit 3\n',
        ),
        build_deb(debs, "rh-app", "2.0", files={"/usr/share/rh-app/version": "2.0\n"}, conflicts="rh-keep"),
        build_deb(debs, "rh-conf", "2.0", conffiles={"/etc/rh-conf.conf": CONF_V2}),
        # A rename, the way trixie's 64-bit time transition made them.
        build_deb(
            debs,
            "rh-libold1t64",
            "2.0",
            arch="amd64",
            files={"/usr/lib/rh-libold.so.1": "2.0\n"},
            provides="rh-libold1 (= 2.0)",
            replaces="rh-libold1",
            extra_control={"Breaks": "rh-libold1 (<< 2.0)"},
        ),
        build_deb(debs, "rh-user", "2.0", depends="rh-libold1t64"),
        # Architecture: all -> amd64 (linux-libc-dev went the other way in trixie).
        build_deb(debs, "rh-arch", "2.0", arch="amd64", files={"/usr/share/rh-arch/version": "2.0\n"}),
    ]
    return v1, v2


@pytest.fixture(scope="module")
def scenario(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-int-", dir="/var/tmp"))
    try:
        tree = bookworm_tree(base / "tree", variant="minimal")
        v1, v2 = _packages(base / "debs")
        install_into(tree, v1)
        (tree / "etc/rh-conf.conf").write_text(CONF_LOCAL)
        repo = LocalRepo(base / "repo")
        # Installed by one test only: its postinst builds a file far larger
        # than its .deb (as update-initramfs or a database migration may).
        grow = build_deb(
            base / "debs", "rh-grow", "1.0", postinst="fallocate -l 300M /var/lib/rh-grow-data\nsleep 60\n"
        )
        for deb in [*v1, *v2, grow]:
            repo.add(deb)
        repo.publish()
        serve_to_tree(tree, repo)
        log_dir = base / "log"
        yield {"base": base, "tree": tree, "log": log_dir, "hash": tree_hash(tree), "status": dpkg_status_digest(tree)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def rehearse(scenario: dict, *args: str):
    return run_json("--root", str(scenario["tree"]), "-o", f"APT::Rehearse::Log-Dir={scenario['log']}", *args)


def by_check(document: dict, check: str) -> list[dict]:
    return [f for f in document["findings"] if f["check"] == check]


def test_failing_postinst_is_reported_and_blocks(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-fail")
    assert proc.returncode == 10, (proc.stderr, document["transaction"]["changes"], document["findings"])
    assert document["verdict"] == "block"
    failures = by_check(document, "script-failure")
    assert len(failures) == 1
    failure = failures[0]
    assert failure["subject"] == "rh-fail"
    assert failure["severity"] == "block"
    assert failure["details"]["script"] == "postinst"
    assert failure["details"]["exit_status"] == 3
    assert any("cannot migrate the database" in line for line in failure["details"]["output_tail"])
    states = by_check(document, "package-state")
    assert [f["subject"] for f in states] == ["rh-fail"]


def test_conflict_removes_manual_package(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-app")
    assert proc.returncode == 10, (proc.stderr, document["transaction"]["changes"], document["findings"])
    changes = {c["package"]: c for c in document["transaction"]["changes"]}
    assert changes["rh-keep"]["action"] == "remove"
    assert changes["rh-keep"]["manual"] is True
    assert changes["rh-app"]["action"] == "upgrade"
    assert (changes["rh-app"]["from"], changes["rh-app"]["to"]) == ("1.0", "2.0")
    [removal] = by_check(document, "removal")
    assert removal["subject"] == "rh-keep"
    assert removal["details"]["manual"] is True
    assert removal["severity"] == "block"
    assert "REMOVED" in removal["message"] and "manually installed" in removal["message"]
    assert not by_check(document, "replay-mismatch")


def test_a_renamed_package_and_an_architecture_change_are_what_they_are(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-user", "rh-arch")
    assert proc.returncode == 0, (proc.stderr, document["transaction"]["changes"], document["findings"])
    changes = {c["package"]: c for c in document["transaction"]["changes"]}
    assert (changes["rh-libold1"]["action"], changes["rh-libold1"]["manual"]) == ("remove", True)
    assert (changes["rh-libold1t64"]["action"], changes["rh-libold1t64"]["manual"]) == ("install", False)
    assert (changes["rh-arch"]["arch"], changes["rh-arch"]["from"], changes["rh-arch"]["to"]) == ("amd64", "1.0", "2.0")
    assert document["transaction"]["successors"] == {"rh-libold1": "rh-libold1t64"}
    [removal] = by_check(document, "removal")
    assert removal["severity"] == "warn" and "Remove-Renamed" in removal["kinds"], removal
    assert "renamed: rh-libold1t64 provides it and is marked automatic" in removal["message"]
    assert not by_check(document, "replay-mismatch"), by_check(document, "replay-mismatch")
    assert document["verdict"] == "warn"


def test_modified_conffile_is_a_prompt(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-conf")
    assert proc.returncode == 0, proc.stderr
    [prompt] = by_check(document, "conffile")
    assert prompt["subject"] == "rh-conf"
    assert prompt["details"]["path"] == "/etc/rh-conf.conf"
    assert prompt["details"]["seen_in_replay"] is True
    assert document["verdict"] == "warn"


def test_purge_is_replayed_as_a_purge(scenario: dict) -> None:
    # apt-get knows no "rh-conf_" (aptitude's purge suffix): apt failed on every purge before.
    proc, document = rehearse(scenario, "purge", "rh-conf")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert [(c["package"], c["action"]) for c in document["transaction"]["changes"]] == [("rh-conf", "purge")]
    assert not by_check(document, "apt") and not by_check(document, "replay-mismatch"), document["findings"]
    assert document["verdict"] == "pass"


def test_clean_upgrade_passes(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-clean")
    assert proc.returncode == 0, proc.stderr
    assert document["verdict"] == "pass"
    assert all(f["severity"] == "info" for f in document["findings"])
    [change] = document["transaction"]["changes"]
    assert (change["package"], change["action"], change["from"], change["to"]) == ("rh-clean", "upgrade", "1.0", "2.0")
    assert len(document["id"]) == 64


def test_dist_upgrade_reports_everything_in_text(scenario: dict) -> None:
    proc = run_cli("--root", str(scenario["tree"]), "-o", f"APT::Rehearse::Log-Dir={scenario['log']}", "dist-upgrade")
    assert proc.returncode == 10, (proc.stdout, proc.stderr)
    text = proc.stdout
    assert "The following packages will be upgraded:" in text
    assert "Verdict: BLOCK" in text
    assert "rh-fail: postinst failed (exit status 3)" in text
    assert "/etc/rh-conf.conf" in text
    report = text.strip().splitlines()[-1]
    assert report.startswith("Report: ")
    path = Path(report.removeprefix("Report: "))
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o640, oct(mode)
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o007 == 0
    assert path.with_suffix(".log").read_text().count("Setting up rh-clean") == 1


def test_no_change_transaction_is_a_pass(scenario: dict) -> None:
    proc = run_cli("--root", str(scenario["tree"]), "remove", "rh-not-installed-anywhere")
    assert proc.returncode == 2
    assert proc.stderr.startswith("E: unknown package 'rh-not-installed-anywhere'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    proc, document = rehearse(scenario, "install", "apt")
    assert proc.returncode == 0
    assert document["transaction"]["changes"] == []
    assert document["verdict"] == "pass"


def test_tree_and_host_unchanged(scenario: dict) -> None:
    before = host_snapshot()
    proc, _ = rehearse(scenario, "dist-upgrade")
    assert proc.returncode == 10
    assert_host_clean(before)
    assert dpkg_status_digest(scenario["tree"]) == scenario["status"]
    assert tree_hash(scenario["tree"]) == scenario["hash"]
    assert not any(name.startswith(("rh-", "apt-rehearse")) for name in os.listdir("/run"))


def test_disk_upper_on_request(scenario: dict) -> None:
    upper_base = scenario["base"] / "uppers"
    proc, document = rehearse(scenario, "-o", f"APT::Rehearse::Upper-Dir={upper_base}", "install", "rh-clean")
    assert proc.returncode == 0, proc.stderr
    assert document["verdict"] == "pass"
    assert document["upper_bytes"]["/"] > 0
    assert list(upper_base.iterdir()) == []  # the disk upper is gone afterwards


def test_full_tmpfs_upper_is_a_rehearsal_limit(scenario: dict) -> None:
    before = host_snapshot()
    proc = run_cli("--root", str(scenario["tree"]), "-o", "APT::Rehearse::Tmpfs-Size=256k", "install", "rh-clean")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("E: the rehearsal ran out of room") and "APT::Rehearse::Tmpfs-Size" in line
    assert "rh-clean" not in line  # never a verdict on the package
    assert_host_clean(before)


def test_a_disk_upper_without_room_is_refused_before_anything_runs(scenario: dict, tmp_path: Path) -> None:
    """A disk upper must leave the host's file system room for its own
    services (1 GiB or 5%): on a 64 MiB file system it is refused."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "rh-small", str(small)], check=True)
    try:
        before = host_snapshot()
        proc = run_cli(
            "--root", str(scenario["tree"]), "-o", f"APT::Rehearse::Upper-Dir={small}/uppers", "install", "rh-clean"
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"E: no room for the rehearsal's upper layer in {small}/uppers")
        assert "APT::Rehearse::Upper-Dir" in line
        assert not (small / "uppers").exists()  # refused before anything was made
        assert_host_clean(before)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_disk_upper_that_outgrows_its_estimate_is_stopped(scenario: dict, tmp_path: Path) -> None:
    """The room checked before rests on an estimate (3x the .debs); a postinst
    that writes 300 MB must not eat the host's reserve (1 GiB) while it runs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    # 1.2 GB: room for the estimate plus the 1 GiB reserve, not for 300 MB more.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200m", "rh-disk", str(disk)], check=True)
    try:
        before = host_snapshot()
        started = time.monotonic()
        proc = run_cli(
            "--root",
            str(scenario["tree"]),
            "-o",
            f"APT::Rehearse::Upper-Dir={disk}/uppers",
            "-o",
            f"APT::Rehearse::Log-Dir={scenario['log']}",
            "install",
            "rh-grow",
        )
        took = time.monotonic() - started
        assert proc.returncode == 1, proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"E: the rehearsal was stopped: its disk upper in {disk}/uppers had left only")
        assert "APT::Rehearse::Upper-Dir" in line
        assert took < 50  # stopped, not left to finish the postinst's 60 s
        assert os.listdir(disk / "uppers") == []  # the upper is gone
        assert_host_clean(before)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("--root", "/nonexistent/tree", "upgrade"), 2, "does not exist"),
        (("-o", "NoEqualsSign", "upgrade"), 2, "is not of the form Key=Value"),
        (("upgrade", "extra"), 2, "Got unexpected extra argument"),
        (("install",), 2, "Missing argument"),
        (("frobnicate",), 2, "No such command"),
        (("dist-upgrade", "--release", "Trixie!"), 2, "is not a release codename"),
        (("install", "./rh-clean_2.0_all.deb"), 2, "is a file: rehearsals take package names"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(scenario: dict, args: tuple[str, ...], code: int, words: str) -> None:
    proc = run_cli("--root", str(scenario["tree"]), *args) if args[0] != "--root" else run_cli(*args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_unsupported_systems_exit_3(scenario: dict) -> None:
    tree = str(scenario["tree"])
    # Not root.
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            "PYTHONPATH=" + str(SRC),
            "/usr/bin/python3",
            "-m",
            "apt_rehearse",
            "--root",
            tree,
            "upgrade",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("E: apt-rehearse must run as root")
    # Root, but without CAP_SYS_ADMIN (as in an unprivileged container).
    proc = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            "env",
            "PYTHONPATH=" + str(SRC),
            "/usr/bin/python3",
            "-m",
            "apt_rehearse",
            "--root",
            tree,
            "install",
            "rh-clean",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "CAP_SYS_ADMIN" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _caches_around(tree: Path, work: Path, argv: list[str]) -> tuple[set[str], set[str]]:
    """In a throw-away overlay of the tree, with apt's binary caches built for
    the tree's own sources: "path inode mtime" of each cache before and after
    argv ran there with the tree's own apt."""
    for name in ("upper", "work", "merged"):
        (work / name).mkdir(parents=True)
    script = (
        'mount -t overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" rh-cache "$0" && '
        'mount -t proc proc "$0/proc" && shift 2 && exec chroot "$0" "$@"'
    )
    listing = 'stat -c "%n %i %Y" /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin'
    shell = f"apt-cache policy >/dev/null && {listing} && echo -- && {' '.join(argv)} >/dev/null 2>&1; {listing}"
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(work / "merged"),
            str(tree),
            str(work),
            "sh",
            "-c",
            shell,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    before, _, after = proc.stdout.partition("--\n")
    return set(before.splitlines()), set(after.splitlines())


def test_replay_apt_leaves_the_systems_apt_caches_alone(scenario: dict, tmp_path: Path) -> None:
    # The replay's apt-get sees no sources: a cache it saved would hold no
    # lists, and every apt tool after it (apt-extracttemplates under
    # dpkg-preconfigure, in every maintainer script) would rebuild it.
    import sys

    sys.path.insert(0, str(SRC))
    from apt_rehearse.inside.replay import APT_QUIET_OPTIONS, NO_CACHE_FILES

    pairs = list(zip(APT_QUIET_OPTIONS[::2], APT_QUIET_OPTIONS[1::2]))
    sourceless = [word for pair in pairs if pair[1] not in NO_CACHE_FILES for word in pair]
    assert len(sourceless) == len(APT_QUIET_OPTIONS) - 4
    # Without the replay's options, the same apt-get replaces them (the check can fail):
    before, after = _caches_around(scenario["tree"], tmp_path / "a", ["apt-get", "-s", "check", *sourceless])
    assert len(before) == 2 and after != before
    before, after = _caches_around(scenario["tree"], tmp_path / "b", ["apt-get", "-s", "check", *APT_QUIET_OPTIONS])
    assert len(before) == 2 and after == before


def test_a_rehearsal_keeps_only_the_newest_reports(scenario: dict, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    old = [log_dir / f"2020010{day}T000000-{day * 6:012d}.{suffix}" for day in (1, 2, 3) for suffix in ("json", "txt")]
    for path in old:
        path.write_text("{}")
    proc, document = run_json(
        "--root",
        str(scenario["tree"]),
        "-o",
        f"APT::Rehearse::Log-Dir={log_dir}",
        "-o",
        "APT::Rehearse::Keep-Reports=2",
        "install",
        "rh-clean",
    )
    assert proc.returncode == 0, proc.stderr
    left = sorted(path.name for path in log_dir.iterdir() if path.name != "latest.json")
    newest = Path(document["report_path"]).name.removesuffix(".json")
    assert left == sorted([old[4].name, old[5].name, f"{newest}.json", f"{newest}.log", f"{newest}.txt"])


def test_the_plans_own_apt_cache_follows_the_system(scenario: dict, tmp_path: Path) -> None:
    # The planner keeps apt's cache files in apt-rehearse's cache directory
    # (never the system's own): apt checks them against the status file at
    # every open, so a package installed since is seen at the next plan.
    copy = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(scenario["tree"]), str(copy)], check=True)
    cache_dir = tmp_path / "cache"
    systems_caches = sorted(os.listdir(copy / "var/cache/apt"))

    def plan() -> list[tuple[str, str, str]]:
        proc, document = run_json(
            "--root",
            str(copy),
            "-o",
            f"APT::Rehearse::Cache-Dir={cache_dir}",
            "-o",
            f"APT::Rehearse::Log-Dir={tmp_path / 'log'}",
            "--no-services",
            "install",
            "rh-clean",
        )
        assert proc.returncode == 0, proc.stderr
        return [(c["package"], c["action"], c["to"]) for c in document["transaction"]["changes"]]

    assert plan() == [("rh-clean", "upgrade", "2.0")]
    index = cache_dir / "apt-index/pkgcache.bin"
    assert index.is_file()
    built = index.stat().st_mtime_ns
    assert stat.S_IMODE(index.stat().st_mode) & 0o077 == 0  # root's only, as the rest of the cache
    assert plan() == [("rh-clean", "upgrade", "2.0")]
    assert index.stat().st_mtime_ns == built  # valid: opened, not rebuilt
    install_into(copy, [next((scenario["base"] / "debs").glob("rh-clean_2.0_*.deb"))])
    assert plan() == []  # the status changed: apt rebuilt its cache, nothing stale was used
    assert index.stat().st_mtime_ns != built
    assert sorted(os.listdir(copy / "var/cache/apt")) == systems_caches
