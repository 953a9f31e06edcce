#!/usr/bin/python3
"""What a rehearsal costs, measured side by side in one run on this machine.

    sudo /usr/bin/python3 bench/rehearsal.py [--runs N] [--json FILE] [--skip-real]

Cases (median of --runs, default 3):
  fixed        sandbox set-up + tear-down around a one-package transaction, without services
  boot         boot-to-settled of the rehearsed system (bookworm LAMP tree), from the report
  release      bookworm -> trixie dist-upgrade of the LAMP tree: the whole rehearsal, its replay,
               its upper layer; and (unless --skip-real) the real install phase of the same
               upgrade on a plain copy of the tree (apt-get in a chroot, dpkg with fsync)
The LAMP tree comes from the test cache (tests/lib/trees.py); the .debs from apt-rehearse's
archive cache, so only the first run downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from lib.localrepo import LocalRepo, build_deb  # noqa: E402
from lib.trees import bookworm_tree  # noqa: E402

CLI = ["/usr/bin/python3", "-m", "apt_rehearse"]


def rehearse(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, env=env, check=False)
    if proc.returncode not in (0, 10):
        raise SystemExit(f"apt-rehearse failed ({proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(proc.stdout)


def phase(document: dict, name: str) -> float:
    return sum(p["seconds"] for p in document["phases"] if p["name"] == name)


def real_install(tree: Path, work: Path) -> tuple[float, int]:
    """The real run's install phase on a plain copy: seconds, bytes written."""
    copy = work / "real"
    if copy.exists():
        shutil.rmtree(copy)
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    sources = copy / "etc/apt/sources.list"
    sources.write_text(sources.read_text().replace("bookworm", "trixie"))
    for extra in (copy / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    # A plain chroot with its own /dev (nodes made by mknod, never the host's), private network.
    setup = ('R=$0; mount -t proc proc "$R/proc" && mount -t tmpfs tmpfs "$R/run" && mount -t tmpfs tmpfs "$R/tmp" && '
             'mount -t tmpfs -o mode=755 tmpfs "$R/dev" && mknod -m 666 "$R/dev/null" c 1 3 && '
             'mknod -m 666 "$R/dev/zero" c 1 5 && mknod -m 666 "$R/dev/urandom" c 1 9 && '
             'mknod -m 666 "$R/dev/random" c 1 8 && mkdir "$R/dev/pts" && exec chroot "$R" "$@"')
    chroot = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", setup, str(copy)]
    subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", setup, str(copy),
                    "apt-get", "-q", "update"], check=True, capture_output=True)  # fmt: skip
    chroot = ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", setup, str(copy)]
    # The same .debs the rehearsal used, already downloaded.
    for deb in Path("/var/cache/apt-rehearse/archives").glob("*.deb"):
        shutil.copy(deb, copy / "var/cache/apt/archives")
    (copy / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (copy / "usr/sbin/policy-rc.d").chmod(0o755)
    before = int(subprocess.run(["du", "-sb", str(copy)], capture_output=True, text=True).stdout.split()[0])
    started = time.monotonic()
    proc = subprocess.run([*chroot, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "--no-download",
                           "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                           "dist-upgrade"], capture_output=True, text=True)  # fmt: skip
    seconds = time.monotonic() - started
    subprocess.run(["sync"], check=False)
    if proc.returncode != 0:
        print(f"real run exited {proc.returncode}: {proc.stdout[-500:]}", file=sys.stderr)
    after = int(subprocess.run(["du", "-sb", str(copy)], capture_output=True, text=True).stdout.split()[0])
    shutil.rmtree(copy)
    return seconds, max(0, after - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    work = Path(tempfile.mkdtemp(prefix="rh-bench-", dir="/var/tmp"))
    results: dict[str, dict] = {}
    try:
        tree = bookworm_tree(work / "tree", variant="lamp")
        log = f"APT::Rehearse::Log-Dir={work}/log"
        # fixed cost: one tiny package from a local repository, no services
        debs = work / "debs"
        repo = LocalRepo(work / "repo")
        repo.add(build_deb(debs, "rh-bench", "1.0"))
        repo.publish()
        small = work / "small"
        subprocess.run(["cp", "-a", str(tree), str(small)], check=True)  # device nodes stay nodes
        (small / "etc/apt/sources.list").write_text(repo.sources_line() + "\n")
        subprocess.run(["apt-get", "-q", "-o", f"Dir={small}/", "update"], check=True, capture_output=True)
        fixed, small_total, small_boot = [], [], []
        for _ in range(args.runs):
            document = rehearse("--root", str(small), "-o", log, "--no-services", "install", "rh-bench")
            fixed.append(phase(document, "sandbox") + phase(document, "inspect"))
            small_total.append(document["duration_s"])
            document = rehearse("--root", str(small), "-o", log, "install", "rh-bench")
            small_boot.append(document["services"]["boot"]["seconds"] + phase(document, "sandbox"))
        results["fixed cost (set-up+tear-down+inspect, 1 pkg)"] = {"seconds": statistics.median(fixed)}
        results["one-package rehearsal, no services"] = {"seconds": statistics.median(small_total)}
        results["boot-to-settled (LAMP tree)"] = {"seconds": statistics.median(small_boot)}
        shutil.rmtree(small)

        totals, replays, uppers = [], [], []
        for _ in range(args.runs):
            document = rehearse("--root", str(tree), "-o", log, "dist-upgrade", "--release", "trixie")
            totals.append(document["duration_s"])
            replays.append(phase(document, "replay"))
            uppers.append(sum(document["upper_bytes"].values()))
        results["bookworm->trixie: whole rehearsal (services)"] = {"seconds": statistics.median(totals)}
        results["bookworm->trixie: replay phase (services live)"] = {"seconds": statistics.median(replays)}
        results["bookworm->trixie: upper layer"] = {"bytes": statistics.median(uppers)}
        if not args.skip_real:
            seconds, written = real_install(tree, work)
            results["bookworm->trixie: real install phase (plain copy, fsync)"] = {"seconds": seconds}
            results["bookworm->trixie: bytes the real run adds"] = {"bytes": written}
            results["ratio replay/real"] = {"ratio": round(statistics.median(replays) / seconds, 2)}
            results["ratio upper/real bytes"] = {"ratio": round(statistics.median(uppers) / max(written, 1), 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, row in results.items():
        value = next(iter(row.values()))
        unit = next(iter(row))
        shown = f"{value:.2f} s" if unit == "seconds" else f"{value / 1e6:.0f} MB" if unit == "bytes" else f"{value:.2f}"
        print(f"{name:58} {shown:>10}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
