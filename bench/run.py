#!/usr/bin/python3
"""apt-rehearse benchmark: what a rehearsal costs against the real run.

    sudo /usr/bin/python3 bench/run.py [--runs N] [--host-runs N] [--json FILE] [--skip CASE]...

Everything is measured side by side in one run, the cases interleaved
(real, replay, real, replay...), median of --runs (default 3), because on a
shared machine absolute times drift and only ratios taken together mean
something. Cases (--skip any of them):

  fixed    sandbox set-up + tear-down around nothing (the fixed cost), in
           process: the packages-only sandbox, and the booted path's keeper
           (layers, masks, cgroup) without a boot; plus the replay machinery
           around an empty transaction (dpkg-query, apt-get, audit, check)
  one      a one-package install (a local .deb with a postinst) on the LAMP
           tree: the real apt-get on a plain copy against the replay
  release  the bookworm -> trixie dist-upgrade of the LAMP tree: the real
           install phase on a plain copy (apt-get dist-upgrade in a chroot,
           dpkg with fsync, services held down by a policy-rc.d as in the
           rehearsal without services) against the replay, without services
           (like for like) and with the services booted and live; the upper
           layer against the bytes the real run writes; boot-to-settled;
           peak memory
  host     this machine's own pending `apt-get upgrade`: the real run on a
           plain copy of / (system directories only) against the replay
  small    a two-package security update (libzstd1, zstd) rehearsed fresh
           with the services booted, whole, against its real run on a plain
           copy of / (skipped where it is not pending)
  hook     the apt hook on an apt run: nothing to rehearse, verdict-cache hit

The LAMP tree comes from the test cache (tests/lib/trees.py), the .debs from
apt-rehearse's archive cache: only the first run downloads. A 256 MiB file
nothing opens ("a large untouched database file") is added to the tree: it
must not end up in the upper layer. Nothing is left behind: the work
directory under /var/tmp, the copies, the memory cgroups are removed, also on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from lib.localrepo import LocalRepo, build_deb  # noqa: E402
from lib.trees import bookworm_tree  # noqa: E402

PYTHON = "/usr/bin/python3"
CLI = [PYTHON, "-m", "apt_rehearse"]
ARCHIVES = Path("/var/cache/apt-rehearse/archives")
BIG_FILE = "var/lib/rh-bench-db/untouched.ibd"
BIG_BYTES = 256 << 20
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEMCG_V1 = Path("/sys/fs/cgroup/memory")

# Goals of issue 7.
GOALS = {
    "release replay/real": 0.6,
    "fixed cost ms": 50.0,
    "hook cache hit ms": 100.0,
    "upper/written": 1.1,
    "small update s": 4.0,  # issue #17: the two-package security update, fresh, services booted
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# peak memory: a memory cgroup (v1 here; cgroup2 where it has the controller)


class MemoryWatch:
    """A memory cgroup the measured command runs in, sampled while it runs.

    peak_bytes: the kernel's own high-water mark (anon + tmpfs + page cache
    charged to it); peak_unreclaimable: the largest anon + shmem (the tmpfs
    upper is shmem) seen by sampling every 0.2 s, what the rehearsal really
    holds (page cache can be dropped under pressure)."""

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        self.v2 = False
        self.peak_bytes = 0
        self.peak_unreclaimable = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        candidates = []
        if MEMCG_V1.is_dir() and (MEMCG_V1 / "memory.max_usage_in_bytes").exists():
            candidates.append((MEMCG_V1 / name, False))
        unified = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified").is_dir() else Path("/sys/fs/cgroup")
        with contextlib.suppress(OSError):
            if "memory" in (unified / "cgroup.controllers").read_text().split():
                candidates.append((unified / name, True))
        for path, v2 in candidates:
            try:
                path.mkdir()
            except OSError:
                continue
            self.path, self.v2 = path, v2
            break

    def add_self(self) -> None:  # preexec_fn: runs in the child before exec
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def _sample(self) -> None:
        assert self.path is not None
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError, ValueError):
                stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
                if self.v2:
                    value = int(stat.get("anon", 0)) + int(stat.get("shmem", 0))
                else:
                    value = int(stat.get("total_rss", 0)) + int(stat.get("total_shmem", 0))
                self.peak_unreclaimable = max(self.peak_unreclaimable, value)

    def __enter__(self) -> "MemoryWatch":
        if self.path is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
            self.peak_bytes = int((self.path / name).read_text())
        for _ in range(50):
            try:
                self.path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


# ---------------------------------------------------------------------------
# the rehearsal, as a sysadmin runs it


def rehearse(*args: str, memory: bool = False) -> tuple[dict[str, Any], float, dict[str, int]]:
    env = {"PATH": PATH, "LANG": "C.UTF-8", "PYTHONPATH": str(REPO / "src"), "HOME": "/root"}
    watch = MemoryWatch(f"rh-bench-{os.getpid()}-{time.monotonic_ns()}") if memory else None
    started = time.monotonic()
    with watch or contextlib.nullcontext():
        proc = subprocess.run(
            [*CLI, *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
            preexec_fn=watch.add_self if watch else None,
        )
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 10):
        raise SystemExit(f"apt-rehearse {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    document = json.loads(proc.stdout)
    mem = {"peak_bytes": watch.peak_bytes, "peak_unreclaimable_bytes": watch.peak_unreclaimable} if watch else {}
    return document, seconds, mem


def phase(document: dict[str, Any], name: str) -> float:
    return sum(p["seconds"] for p in document["phases"] if p["name"] == name)


def replay_seconds(document: dict[str, Any]) -> float:
    """The apt run inside (what the real run's install phase compares with)."""
    return phase(document, "replay")


def upper_total(document: dict[str, Any]) -> int:
    """What the transaction wrote into the uppers, by the rehearsal's own
    accounting: apt's binary caches aside (the real run's copy got fresh
    ones from apt-get update before its timing starts; the replay's apt
    tools rebuild them after it installed the target's lists) and, booted,
    the journal of the services."""
    return sum(row["upper_bytes"] for row in document["disk"])


def upper_all(document: dict[str, Any]) -> int:
    """Every byte in the uppers."""
    return sum(document["upper_bytes"].values())


# ---------------------------------------------------------------------------
# the real run, on a plain copy


CHROOT_SETUP = (
    'R=$0; mount -t proc proc "$R/proc" && mount -t tmpfs tmpfs "$R/run" && mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" && '
    'mount -t tmpfs -o mode=755 tmpfs "$R/dev" && mknod -m 666 "$R/dev/null" c 1 3 && '
    'mknod -m 666 "$R/dev/zero" c 1 5 && mknod -m 666 "$R/dev/urandom" c 1 9 && mknod -m 666 "$R/dev/full" c 1 7 && '
    'mknod -m 666 "$R/dev/random" c 1 8 && mkdir "$R/dev/pts" "$R/dev/shm" && exec chroot "$R" "$@"'
)


def chroot(copy: Path, *, network: bool = False) -> list[str]:
    """A plain chroot: private mount and pid namespaces, its own /proc, /run,
    /tmp and a /dev of mknod-ed nodes (never the host's); no network unless
    asked (apt-get update)."""
    flags = ["--mount", "--pid", "--fork", "--propagation", "private", "--ipc", "--uts"] + (
        [] if network else ["--net"]
    )
    return ["unshare", *flags, "sh", "-c", CHROOT_SETUP, str(copy)]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, ctime_ns, allocated bytes) of every regular file and symlink."""
    files: dict[str, tuple[int, int, int]] = {}
    skip = {str(root / name) for name in ("proc", "sys", "dev", "run", "tmp")}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath in skip:
            dirnames[:] = []
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                files[path] = (info.st_ino, info.st_ctime_ns, info.st_blocks * 512)
    return files


def written_files_bytes(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> int:
    """Allocated bytes of every file the run created or changed (new inode or new ctime)."""
    return sum(entry[2] for path, entry in after.items() if before.get(path, (None, None, 0))[:2] != entry[:2])


def link_debs(copy: Path) -> None:
    """The same .debs the rehearsal used, already downloaded (hard links: no copy)."""
    target = copy / "var/cache/apt/archives"
    target.mkdir(parents=True, exist_ok=True)
    for deb in ARCHIVES.glob("*.deb"):
        dest = target / deb.name
        if dest.exists():
            continue
        try:
            os.link(deb, dest)
        except OSError:
            shutil.copy2(deb, dest)


EATMYDATA = "/usr/lib/x86_64-linux-gnu/libeatmydata.so.1.3.0"


def real_run(copy: Path, argv: list[str], no_fsync: bool = False) -> dict[str, Any]:
    """Time apt-get in the plain copy; what it wrote (I/O accounting and changed files).

    no_fsync: the same run under eatmydata (the host's library, copied into
    the throw-away copy): the real run less every fsync, the floor of any
    replay that does the same work."""
    policy = copy / "usr/sbin/policy-rc.d"
    had_policy = policy.exists()
    if not had_policy:
        # No init runs in a chroot: services stay down, as in the rehearsal
        # without services (its own policy-rc.d).
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    before = snapshot(copy)
    # The shell waits for apt-get, so its own I/O accounting holds apt's,
    # dpkg's and every maintainer script's (reaped children add up).
    script = '"$@"; rc=$?; grep -E "^(write_bytes|cancelled_write_bytes|wchar)" /proc/$$/io >&2; exit $rc'
    env = [
        "env",
        "-i",
        f"PATH={PATH}",
        "LANG=C.UTF-8",
        "DEBIAN_FRONTEND=noninteractive",
        "HOME=/root",
        "APT_REHEARSE=0",
    ]
    if no_fsync:
        shutil.copy2(EATMYDATA, copy / "usr/lib/x86_64-linux-gnu/rh-bench-eatmydata.so")
        env.append("LD_PRELOAD=/usr/lib/x86_64-linux-gnu/rh-bench-eatmydata.so")
    started = time.monotonic()
    proc = subprocess.run(
        [*chroot(copy), "sh", "-c", script, "sh", *env, *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.monotonic() - started
    # What fsync did not yet push is written now: the real run's cost is
    # counted up to the data being on disk.
    started_sync = time.monotonic()
    os.sync()
    sync_seconds = time.monotonic() - started_sync
    if not had_policy:
        policy.unlink()
    after = snapshot(copy)
    io = dict(
        line.split(":") for line in proc.stderr.splitlines() if line.startswith(("write_bytes", "cancelled", "wchar"))
    )
    if proc.returncode != 0:
        raise SystemExit(f"the real run failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-800:]}")
    summary = [line for line in proc.stdout.splitlines() if " upgraded, " in line]
    return {
        "seconds": seconds,
        "sync_after_s": sync_seconds,
        "write_bytes": int(io.get("write_bytes", 0)) - int(io.get("cancelled_write_bytes", 0)),
        "written_files_bytes": written_files_bytes(before, after),
        "summary": summary[0].strip() if summary else "",
    }


APT_REAL = [
    "apt-get",
    "-y",
    "-q",
    "--no-download",
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "APT::Rehearse::Enable=false",
]


def copy_tree(source: Path, dest: Path) -> None:
    subprocess.run(["cp", "-a", "--one-file-system", str(source), str(dest)], check=True)


def trixie_copy(tree: Path, dest: Path, tries: int = 3) -> None:
    """A plain copy of the bookworm tree pointed at trixie, its lists
    updated in a chroot with the network (a failed download tried again)."""
    copy_tree(tree, dest)
    sources = dest / "etc/apt/sources.list"
    sources.write_text(sources.read_text().replace("bookworm", "trixie"))
    for extra in (dest / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    for attempt in range(tries):
        update = subprocess.run(
            [*chroot(dest, network=True), "apt-get", "-q", "update"], capture_output=True, text=True, check=False
        )
        if update.returncode == 0:
            return
        if attempt + 1 < tries:
            time.sleep(10)
    raise SystemExit(f"apt-get update in the real copy failed: {update.stdout[-800:]}{update.stderr[-800:]}")


def apt_summary(document: dict[str, Any]) -> str:
    actions = [c["action"] for c in document["transaction"]["changes"]]
    return (
        f"{actions.count('upgrade')} upgraded, {actions.count('install')} newly installed, "
        f"{actions.count('remove') + actions.count('purge')} to remove"
    )


# ---------------------------------------------------------------------------
# cases


def case_fixed(tree: Path, runs: int) -> dict[str, Any]:
    """Sandbox set-up + tear-down with nothing inside, in process."""
    from apt_rehearse.sandbox.boot import BootedSandbox
    from apt_rehearse.sandbox.cgroups import SandboxCgroup, cgroup2_mount
    from apt_rehearse.fronts.progress import Progress
    from apt_rehearse.rehearse import PhaseClock, _run
    from apt_rehearse.inside.replay import ReplayPlan
    from apt_rehearse.sandbox.namespaces import SandboxRunner, SandboxSpec, plan_sandbox
    from apt_rehearse.model.transaction import Transaction

    def nothing(session: object, channel: object) -> dict[str, Any]:
        return {}

    bare, keeper, empty = [], [], []
    for _ in range(max(runs, 5)):
        started = time.perf_counter()
        spec = SandboxSpec(root=str(tree), hostname="rehearsal")
        plan = plan_sandbox(spec)
        for _event in SandboxRunner(spec, plan).run(nothing):
            pass
        bare.append((time.perf_counter() - started) * 1000)
        if cgroup2_mount() is not None:
            started = time.perf_counter()
            spec = SandboxSpec(root=str(tree), hostname="rehearsal", boot=True)
            booted = BootedSandbox(plan_sandbox(spec), "/sbin/init", SandboxCgroup("rh-bench"), 10)
            try:
                booted.start()
            finally:
                booted.stop()
            keeper.append((time.perf_counter() - started) * 1000)
    for _ in range(max(runs, 3)):
        # The whole replay machinery, an empty transaction: apt-get with
        # nothing to do, dpkg-query before and after, dpkg --audit, apt-get check.
        started = time.perf_counter()
        spec = SandboxSpec(root=str(tree), hostname="rehearsal")
        plan = plan_sandbox(spec)
        transaction = Transaction(changes=[], root=str(tree))
        replay_plan = ReplayPlan(transaction=transaction, deb_paths={}, apt_options=[], timeout=600)
        _run(SandboxRunner(spec, plan), replay_plan, Progress(), PhaseClock())
        empty.append((time.perf_counter() - started) * 1000)
    return {
        "sandbox_setup_teardown_ms": statistics.median(bare),
        "sandbox_setup_teardown_ms_all": [round(x, 1) for x in bare],
        "booted_keeper_setup_teardown_ms": statistics.median(keeper) if keeper else None,
        "empty_replay_ms": statistics.median(empty),
    }


def case_one(tree: Path, work: Path, runs: int) -> dict[str, Any]:
    """One package from a local repository, with a postinst (a real maintainer script)."""
    repo = LocalRepo(work / "repo")
    repo.add(
        build_deb(
            work / "debs",
            "rh-bench",
            "1.0",
            files={"/usr/share/rh-bench/data": "x" * 100000},
            postinst="echo configured > /var/lib/rh-bench.state",
        )
    )
    repo.publish()
    small = work / "small"
    copy_tree(tree, small)
    (small / "etc/apt/sources.list").write_text(repo.sources_line() + "\n")
    for extra in (small / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    subprocess.run(
        ["apt-get", "-q", "-o", f"Dir={small}/", "-o", "APT::Rehearse::Enable=false", "update"],
        check=True,
        capture_output=True,
    )
    log_dir = f"APT::Rehearse::Log-Dir={work}/log"
    real, replay, total = [], [], []
    for index in range(runs):
        log(f"one package: run {index + 1}/{runs}")
        copy = work / "small-real"
        copy_tree(small, copy)
        # The real run reads the repository by its file: URL, which the chroot cannot see: give it the .deb.
        shutil.copy(next((work / "debs").glob("*.deb")), copy / "var/cache/apt/archives")
        try:
            real.append(real_run(copy, [*APT_REAL, "install", "rh-bench"])["seconds"])
        finally:
            shutil.rmtree(copy)
        document, seconds, _ = rehearse("--root", str(small), "-o", log_dir, "--no-services", "install", "rh-bench")
        replay.append(replay_seconds(document))
        total.append(seconds)
    shutil.rmtree(small)
    return {
        "real_s": statistics.median(real),
        "replay_s": statistics.median(replay),
        "ratio": statistics.median(replay) / statistics.median(real),
        "whole_rehearsal_cli_s": statistics.median(total),
        "real_all": real,
        "replay_all": replay,
    }


def decompress_floor(document: dict[str, Any]) -> float:
    """Seconds to decompress every .deb of the transaction once, on one core:
    work no faithful replay can skip (dpkg-deb does it for every package)."""
    debs = [c["deb"] for c in document["transaction"]["changes"] if c.get("deb")]
    started = time.monotonic()
    for deb in debs:
        subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def case_release(tree: Path, work: Path, runs: int) -> dict[str, Any]:
    log_dir = f"APT::Rehearse::Log-Dir={work}/log"
    uppers = work / "uppers"
    keys = (
        "real_s",
        "real_sync_s",
        "real_write_bytes",
        "real_written_files_bytes",
        "nofsync_s",
        "tmpfs_real_s",
        "plain_replay_s",
        "plain_apt_s",
        "plain_upper",
        "plain_upper_all",
        "plain_total_s",
        "plain_peak",
        "plain_peak_unreclaimable",
        "disk_replay_s",
        "live_replay_s",
        "live_upper",
        "live_total_s",
        "live_peak",
        "live_peak_unreclaimable",
        "boot_s",
        "decompress_s",
        "summary_real",
        "summary_rehearsal",
    )
    rows: dict[str, list[Any]] = {k: [] for k in keys}
    # The real run's starting point, once: the tree pointed at trixie, apt-get update done.
    ready = work / "ready"
    trixie_copy(tree, ready)

    def real(no_fsync: bool, in_memory: bool = False) -> dict[str, Any]:
        place = work / "real"
        place.mkdir()
        if in_memory:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0755", "rh-bench", str(place)], check=True)
        copy = place / "root"
        try:
            copy_tree(ready, copy)
            link_debs(copy)
            return real_run(copy, [*APT_REAL, "dist-upgrade"], no_fsync=no_fsync)
        finally:
            if in_memory:
                subprocess.run(["umount", str(place)], check=True)
            shutil.rmtree(place)

    for index in range(runs):
        # Interleaved: real, real without fsync, replay (tmpfs upper), replay
        # (disk upper), replay with services.
        log(f"release upgrade: run {index + 1}/{runs}: real run on a plain copy")
        result = real(False)
        rows["real_s"].append(result["seconds"])
        rows["real_sync_s"].append(result["sync_after_s"])
        rows["real_write_bytes"].append(result["write_bytes"])
        rows["real_written_files_bytes"].append(result["written_files_bytes"])
        rows["summary_real"].append(result["summary"])
        log(f"release upgrade: run {index + 1}/{runs}: the same real run under eatmydata")
        rows["nofsync_s"].append(real(True)["seconds"])
        log(f"release upgrade: run {index + 1}/{runs}: the same real run on a copy in memory (tmpfs)")
        rows["tmpfs_real_s"].append(real(False, in_memory=True)["seconds"])
        log(f"release upgrade: run {index + 1}/{runs}: rehearsal without services")
        document, seconds, mem = rehearse(
            "--root", str(tree), "-o", log_dir, "--no-services", "dist-upgrade", "--release", "trixie", memory=True
        )
        rows["plain_replay_s"].append(replay_seconds(document))
        rows["plain_apt_s"].append(document.get("replay_parts", {}).get("apt", 0.0))
        rows["plain_upper"].append(upper_total(document))
        rows["plain_upper_all"].append(upper_all(document))
        rows["plain_total_s"].append(seconds)
        rows["plain_peak"].append(mem.get("peak_bytes", 0))
        rows["plain_peak_unreclaimable"].append(mem.get("peak_unreclaimable_bytes", 0))
        rows["summary_rehearsal"].append(apt_summary(document))
        if index == 0:
            rows["decompress_s"].append(decompress_floor(document))
        log(f"release upgrade: run {index + 1}/{runs}: rehearsal without services, disk upper")
        document, seconds, _ = rehearse(
            "--root",
            str(tree),
            "-o",
            log_dir,
            "-o",
            f"APT::Rehearse::Upper-Dir={uppers}",
            "--no-services",
            "dist-upgrade",
            "--release",
            "trixie",
        )
        rows["disk_replay_s"].append(replay_seconds(document))
        log(f"release upgrade: run {index + 1}/{runs}: rehearsal with services")
        document, seconds, mem = rehearse(
            "--root", str(tree), "-o", log_dir, "dist-upgrade", "--release", "trixie", memory=True
        )
        rows["live_replay_s"].append(replay_seconds(document))
        rows["live_upper"].append(upper_total(document))
        rows["live_total_s"].append(seconds)
        rows["live_peak"].append(mem.get("peak_bytes", 0))
        rows["live_peak_unreclaimable"].append(mem.get("peak_unreclaimable_bytes", 0))
        rows["boot_s"].append((document.get("services") or {}).get("boot", {}).get("seconds"))
        log(
            f"  real {rows['real_s'][-1]:.1f} s (no fsync {rows['nofsync_s'][-1]:.1f} s, tmpfs "
            f"{rows['tmpfs_real_s'][-1]:.1f} s), replay "
            f"{rows['plain_replay_s'][-1]:.1f} s (tmpfs), {rows['disk_replay_s'][-1]:.1f} s (disk), "
            f"{rows['live_replay_s'][-1]:.1f} s (services live); upper {rows['plain_upper'][-1] / 1e6:.0f} MB, "
            f"real wrote {rows['real_write_bytes'][-1] / 1e6:.0f} MB"
        )
    shutil.rmtree(ready)
    return {
        "runs": rows,
        "median": {
            k: statistics.median(v) for k, v in rows.items() if v and all(isinstance(x, (int, float)) for x in v)
        },
    }


HOST_SYSTEM_TOP = ("bin", "boot", "etc", "lib", "lib32", "lib64", "libx32", "sbin", "usr")
HOST_EMPTY_TOP = ("proc", "sys", "dev", "run", "tmp", "home", "root", "mnt", "media", "srv", "opt")
HOST_KEEP_CACHE = ("apt", "debconf", "ldconfig", "man", "fontconfig")


def copy_host(dest: Path) -> None:
    """A plain copy of this machine's system directories (/usr, /etc, /var
    less caches and temporary files...; not /opt, /root, /home or data)."""
    dest.mkdir()
    for name in HOST_SYSTEM_TOP:
        if os.path.lexists(f"/{name}"):
            subprocess.run(["cp", "-a", "--one-file-system", f"/{name}", str(dest)], check=True)
    for name in HOST_EMPTY_TOP:
        os.mkdir(dest / name, 0o1777 if name == "tmp" else 0o755)
    (dest / "var").mkdir()
    for entry in os.scandir("/var"):
        if entry.name in ("tmp", "cache"):
            os.mkdir(dest / "var" / entry.name, 0o1777 if entry.name == "tmp" else 0o755)
            continue
        subprocess.run(["cp", "-a", "--one-file-system", entry.path, str(dest / "var")], check=True)
    for name in HOST_KEEP_CACHE:
        if os.path.isdir(f"/var/cache/{name}"):
            subprocess.run(["cp", "-a", "--one-file-system", f"/var/cache/{name}", str(dest / "var/cache")], check=True)
    for deb in (dest / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def case_host(work: Path, runs: int) -> dict[str, Any]:
    log_dir = f"APT::Rehearse::Log-Dir={work}/log"
    real, replay, live, upper, written = [], [], [], [], []
    summary = ""
    for index in range(runs):
        log(f"host upgrade: run {index + 1}/{runs}: rehearsal without services (downloads the .debs once)")
        document, _, _ = rehearse("-o", log_dir, "--no-services", "upgrade")
        if not document["transaction"]["changes"]:
            return {"skipped": "this machine has no pending upgrade"}
        replay.append(replay_seconds(document))
        upper.append(upper_total(document))
        summary = apt_summary(document)
        log(f"host upgrade: run {index + 1}/{runs}: real run on a plain copy of /")
        copy = work / "host-real"
        try:
            copy_host(copy)
            link_debs(copy)
            result = real_run(copy, [*APT_REAL, "upgrade"])
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        real.append(result["seconds"])
        written.append(result["written_files_bytes"])
        log(f"host upgrade: run {index + 1}/{runs}: rehearsal with services")
        document, _, _ = rehearse("-o", log_dir, "upgrade")
        live.append(replay_seconds(document))
        log(f"  real {real[-1]:.1f} s, replay {replay[-1]:.1f} s (no services), {live[-1]:.1f} s (services live)")
    return {
        "summary": summary,
        "summary_real": result["summary"],
        "real_s": statistics.median(real),
        "plain_replay_s": statistics.median(replay),
        "live_replay_s": statistics.median(live),
        "plain_upper": statistics.median(upper),
        "real_written_files_bytes": statistics.median(written),
        "real_all": real,
        "plain_all": replay,
        "live_all": live,
    }


SMALL_UPDATE = ("zstd",)  # pending here as a two-package security update: libzstd1 and zstd


def case_small(work: Path, runs: int) -> dict[str, Any]:
    """A small security update rehearsed fresh, services booted, whole (the
    command as the sysadmin waits for it), against its real run on a plain
    copy of /; interleaved, median of the runs."""
    log_dir = f"APT::Rehearse::Log-Dir={work}/log"
    whole, real, phases = [], [], []
    summary = ""
    for index in range(runs):
        log(
            f"small update: run {index + 1}/{runs}: rehearsal with services (apt-rehearse install {' '.join(SMALL_UPDATE)})"
        )
        document, seconds, _ = rehearse("-o", log_dir, "install", *SMALL_UPDATE)
        if len(document["transaction"]["changes"]) != 2 or any(
            c["action"] != "upgrade" for c in document["transaction"]["changes"]
        ):
            return {"skipped": f"{' '.join(SMALL_UPDATE)} is not a pending two-package upgrade here"}
        whole.append(seconds)
        phases.append({p["name"]: p["seconds"] for p in reversed(document["phases"])} | document["replay_parts"])
        summary = apt_summary(document)
        copy = work / "small-real"
        try:
            copy_host(copy)
            link_debs(copy)
            real.append(real_run(copy, [*APT_REAL, "install", *SMALL_UPDATE])["seconds"])
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        log(f"  rehearsal {whole[-1]:.1f} s whole, real {real[-1]:.1f} s")
    return {
        "summary": summary,
        "whole_s": statistics.median(whole),
        "real_s": statistics.median(real),
        "ratio": round(statistics.median(whole) / statistics.median(real), 2),
        "whole_all": whole,
        "real_all": real,
        "phases_all": phases,
    }


def case_hook(runs: int) -> dict[str, Any]:
    import hook_overhead

    return hook_overhead.measure(max(runs, 20))


# ---------------------------------------------------------------------------


def paired(runs: dict[str, list[Any]], top: str, bottom: str) -> tuple[float, str]:
    """Median of the per-run ratios (each pair measured minutes apart), and each run's."""
    ratios = [a / b for a, b in zip(runs[top], runs[bottom]) if a is not None and b]
    return statistics.median(ratios), ", ".join(f"{r:.2f}" for r in ratios)


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def mb(value: float) -> str:
        return f"{value / 1e6:.0f} MB"

    def ok(value: float, goal: float) -> str:
        return f"{'OK' if value <= goal else 'MISSED'} (goal <= {goal:g})"

    release = results.get("release", {}).get("median")
    if release:
        runs = results["release"]["runs"]
        rows.append(("LAMP bookworm->trixie plan", runs["summary_rehearsal"][0], f"real: {runs['summary_real'][0]}"))
        rows.append(
            (
                "  real install phase, plain copy (fsync, services down)",
                f"{release['real_s']:.1f} s",
                f"+{release['real_sync_s']:.1f} s sync after",
            )
        )
        ratio, each = paired(runs, "nofsync_s", "real_s")
        rows.append(
            (
                "  the same real run under eatmydata (no fsync)",
                f"{release['nofsync_s']:.1f} s",
                f"no-fsync/real {ratio:.2f} (runs {each}): what fsync costs here",
            )
        )
        if release.get("tmpfs_real_s"):
            ratio, each = paired(runs, "tmpfs_real_s", "real_s")
            rows.append(
                (
                    "  the same real run on a copy in memory (tmpfs)",
                    f"{release['tmpfs_real_s']:.1f} s",
                    f"tmpfs/real {ratio:.2f} (runs {each}): the same work, nothing durable",
                )
            )
        if release.get("decompress_s"):
            rows.append(
                (
                    "  decompressing its .debs alone (dpkg-deb, one core)",
                    f"{release['decompress_s']:.1f} s",
                    f"{release['decompress_s'] / release['real_s']:.2f} of the real run",
                )
            )
        ratio, each = paired(runs, "plain_replay_s", "real_s")
        rows.append(
            (
                "  replay, no services (policy-rc.d, like for like)",
                f"{release['plain_replay_s']:.1f} s",
                f"replay/real {ratio:.2f} (runs {each}) " + ok(ratio, GOALS["release replay/real"]),
            )
        )
        if release.get("tmpfs_real_s"):
            ratio, each = paired(runs, "plain_replay_s", "tmpfs_real_s")
            rows.append(
                (
                    "    against the same real run in memory",
                    "",
                    f"replay/tmpfs-real {ratio:.2f} (runs {each}): " "what the rehearsal adds to the floor",
                )
            )
        if release.get("plain_apt_s"):
            ratio, each = paired(runs, "plain_apt_s", "real_s")
            rows.append(
                (
                    "    of which apt-get and dpkg",
                    f"{release['plain_apt_s']:.1f} s",
                    f"apt/real {ratio:.2f} (runs {each}); the rest: hazard scans, automatic marks",
                )
            )
        ratio, each = paired(runs, "disk_replay_s", "real_s")
        rows.append(
            (
                "  replay, no services, disk upper (volatile, metacopy)",
                f"{release['disk_replay_s']:.1f} s",
                f"replay/real {ratio:.2f} (runs {each})",
            )
        )
        ratio, each = paired(runs, "live_replay_s", "real_s")
        rows.append(
            (
                "  replay, services booted and live",
                f"{release['live_replay_s']:.1f} s",
                f"replay/real {ratio:.2f} (runs {each}); services restart for real",
            )
        )
        rows.append(
            (
                "  whole rehearsal CLI, no services / services",
                f"{release['plain_total_s']:.1f} s / " f"{release['live_total_s']:.1f} s",
                "plan, sandbox, replay, observe, reboot, checks",
            )
        )
        # The real run's bytes: every file it created or replaced, whole (what
        # an overlay upper must hold at the least: copy-up is per file), not
        # its net growth. The kernel's write_bytes of its processes is shown
        # beside it: it misses pages dirtied twice and what was written after
        # the accounting, and moved by 30% between runs here.
        written = release["real_written_files_bytes"]
        rows.append(
            (
                "  bytes the real run writes (files it created or changed)",
                mb(written),
                f"kernel I/O accounting of its processes: {mb(release['real_write_bytes'])}",
            )
        )
        up = release["plain_upper"] / written
        everything = (
            f"; everything in it, apt's binary caches too: {mb(release['plain_upper_all'])}"
            if release.get("plain_upper_all")
            else ""
        )
        rows.append(
            (
                "  upper layer, no services",
                mb(release["plain_upper"]),
                f"upper/written {up:.2f} " + ok(up, GOALS["upper/written"]) + everything,
            )
        )
        up_live = release["live_upper"] / written
        rows.append(
            (
                "  upper layer, services",
                mb(release["live_upper"]),
                f"upper/written {up_live:.2f} (also what the booted services write)",
            )
        )
        if release.get("boot_s") is not None:
            rows.append(("  boot-to-settled, services (LAMP)", f"{release['boot_s']:.2f} s", ""))
        rows.append(
            (
                "  peak memory, no services (anon+tmpfs / cgroup peak)",
                f"{mb(release['plain_peak_unreclaimable'])}",
                f"cgroup peak incl. page cache {mb(release['plain_peak'])}",
            )
        )
        rows.append(
            (
                "  peak memory, services (anon+tmpfs / cgroup peak)",
                f"{mb(release['live_peak_unreclaimable'])}",
                f"cgroup peak incl. page cache {mb(release['live_peak'])}",
            )
        )
    one = results.get("one")
    if one:
        rows.append(
            (
                "one package (local .deb, postinst): real / replay",
                f"{one['real_s']:.2f} s / {one['replay_s']:.2f} s",
                f"replay/real {one['ratio']:.2f}; whole CLI {one['whole_rehearsal_cli_s']:.2f} s",
            )
        )
    host = results.get("host")
    if host and "skipped" not in host:
        ratio = host["plain_replay_s"] / host["real_s"]
        rows.append(
            (
                f"this host's upgrade ({host['summary']})",
                f"real {host['real_s']:.1f} s",
                f"replay {host['plain_replay_s']:.1f} s (ratio {ratio:.2f}), services live {host['live_replay_s']:.1f} s",
            )
        )
        rows.append(
            (
                "  its upper (no services) / bytes the real run writes",
                f"{mb(host['plain_upper'])} / " f"{mb(host['real_written_files_bytes'])}",
                f"upper/written {host['plain_upper'] / max(host['real_written_files_bytes'], 1):.2f}",
            )
        )
    elif host:
        rows.append(("this host's upgrade", "-", host["skipped"]))
    small = results.get("small")
    if small and "skipped" not in small:
        rows.append(
            (
                f"small security update fresh, services booted ({small['summary']})",
                f"{small['whole_s']:.1f} s whole / real {small['real_s']:.1f} s",
                f"rehearsal/real {small['ratio']:.2f}; {ok(small['whole_s'], GOALS['small update s'])}",
            )
        )
    elif small:
        rows.append(("small security update", "-", small["skipped"]))
    fixed = results.get("fixed")
    if fixed:
        rows.append(
            (
                "fixed cost: sandbox set-up + tear-down",
                f"{fixed['sandbox_setup_teardown_ms']:.0f} ms",
                ok(fixed["sandbox_setup_teardown_ms"], GOALS["fixed cost ms"]),
            )
        )
        if fixed.get("booted_keeper_setup_teardown_ms") is not None:
            rows.append(
                (
                    "  booted path: layers + masks + cgroup, no boot",
                    f"{fixed['booted_keeper_setup_teardown_ms']:.0f} ms",
                    "",
                )
            )
        rows.append(
            (
                "  replay machinery, empty transaction",
                f"{fixed['empty_replay_ms']:.0f} ms",
                "dpkg-query x2, hazard scans (ELF table not kept here), apt-get, dpkg --audit, apt-get check",
            )
        )
    hook = results.get("hook")
    if hook:
        for name, row in hook.items():
            note = ok(row["median_ms"], GOALS["hook cache hit ms"]) if name.startswith("cache hit") else ""
            rows.append((f"hook: {name}", f"{row['median_ms']:.0f} ms", note))
    return rows


def print_table(results: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    print(f"{'what':{width}}  {'figure':>{vwidth}}  note")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>{vwidth}}  {note}")
    print(
        f"(median of {results['runs']} runs, ratios: median of each run's pair; bench took {results['bench_seconds']} s; "
        f"load {results['load_before'][0]:.1f} -> {results['load_after'][0]:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--host-runs", type=int, default=1)
    parser.add_argument("--json", dest="json_path", default=str(REPO / "bench/results.json"))
    parser.add_argument(
        "--skip", action="append", default=[], choices=("fixed", "one", "release", "host", "small", "hook")
    )
    parser.add_argument("--table", metavar="JSON", help="print the table of an earlier run's JSON, measure nothing")
    args = parser.parse_args()
    if args.table:
        results = json.loads(Path(args.table).read_text())
        print_table(results, table(results))
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    if os.environ.get("PYTHONPATH") is None and sys.executable != PYTHON:
        log(f"note: running under {sys.executable}; apt bindings are in {PYTHON}")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rh-bench-", dir="/var/tmp"))
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": args.runs,
        "load_before": os.getloadavg(),
    }
    try:
        tree = None
        if {"fixed", "one", "release"} - set(args.skip):
            log("laying out the LAMP tree")
            tree = bookworm_tree(work / "tree", variant="lamp")
            big = tree / BIG_FILE
            big.parent.mkdir(parents=True)
            with open(big, "wb") as handle:
                for _ in range(BIG_BYTES >> 20):
                    handle.write(os.urandom(1 << 20))
        if "hook" not in args.skip:
            log("hook overhead")
            results["hook"] = case_hook(args.runs)
        if "fixed" not in args.skip:
            log("fixed cost")
            results["fixed"] = case_fixed(tree, args.runs)
        if "one" not in args.skip:
            results["one"] = case_one(tree, work, args.runs)
        if "release" not in args.skip:
            results["release"] = case_release(tree, work, args.runs)
        if "host" not in args.skip:
            results["host"] = case_host(work, args.host_runs)
        if "small" not in args.skip:
            results["small"] = case_small(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    results["bench_seconds"] = round(time.monotonic() - began)
    rows = table(results)
    results["table"] = rows
    print_table(results, rows)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
