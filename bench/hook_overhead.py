#!/usr/bin/python3
"""What the apt hook adds to every apt run when it has nothing to do.

Two cases, each timed as apt runs it (a fresh python3 process reading the
version-3 stream): "nothing to rehearse" (only **CONFIGURE** lines), and a
verdict-cache hit (a transaction already rehearsed). Goal: under 100 ms.

    sudo /usr/bin/python3 bench/hook_overhead.py [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
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
sys.path.insert(0, str(REPO / "src"))

from apt_rehearse.store import verdict_cache  # noqa: E402
from apt_rehearse.plan.hookstream import parse, to_transaction  # noqa: E402
from apt_rehearse.model.transaction import sha256_file  # noqa: E402

HOOK = [
    sys.executable,
    "-I",
    "-c",
    f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); " "from apt_rehearse.fronts.hook import run; run()",
]


def stream(cache_dir: str, lines: list[str]) -> str:
    config = [
        f"APT::Rehearse::Cache-Dir={cache_dir}",
        "APT::Architecture=amd64",
        "CommandLine::AsString=apt-get%20upgrade",
    ]
    return "VERSION 3\n" + "\n".join(config) + "\n\n" + "".join(line + "\n" for line in lines)


def time_hook(text: str, runs: int) -> list[float]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(HOOK, input=text.encode(), capture_output=True, env=env, check=False)
        times.append((time.perf_counter() - started) * 1000)
        if proc.returncode != 0:
            raise SystemExit(f"hook failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return times


def measure(runs: int) -> dict[str, dict[str, float]]:
    """Median, min and max milliseconds of the hook for each case."""
    work = Path(tempfile.mkdtemp(prefix="rh-bench-hook-", dir="/var/tmp"))
    try:
        cache_dir = str(work / "cache")
        # A realistic cache hit: a dozen .debs of a few MB each to hash.
        debs = []
        for index in range(12):
            path = work / f"pkg{index}_2.0_amd64.deb"
            path.write_bytes(os.urandom(2 << 20))
            debs.append(path)
        lines = [f"pkg{i} 1.0 amd64 same < 2.0 amd64 same {deb}" for i, deb in enumerate(debs)]
        lines += [f"pkg{i} 1.0 amd64 same < 2.0 amd64 same **CONFIGURE**" for i in range(len(debs))]
        hit_stream = stream(cache_dir, lines)
        with open("/var/lib/dpkg/status", "rb") as handle:
            status_sha = hashlib.sha256(handle.read()).hexdigest()
        transaction = to_transaction(parse(hit_stream), "/", status_sha, sha256_file, lambda p, a: False)
        verdict_cache.record(cache_dir, transaction, "pass", None)
        nothing = stream(cache_dir, ["foo 1.0 amd64 none = 1.0 amd64 none **CONFIGURE**"])
        cases = [("nothing to rehearse", nothing), ("cache hit (12 debs, 24 MB)", hit_stream)]
        # A release upgrade's worth: the real .debs of apt-rehearse's archive
        # cache (after the bench's release case: the LAMP upgrade's 299).
        archives = sorted(Path("/var/cache/apt-rehearse/archives").glob("*.deb"))
        real_debs = [deb for deb in archives if deb.is_file()][:300]  # not a test repository's link gone since
        if len(real_debs) >= 100:
            lines = [f"big{i} 1.0 amd64 same < 2.0 amd64 same {deb}" for i, deb in enumerate(real_debs)]
            big_stream = stream(cache_dir, lines)
            transaction = to_transaction(parse(big_stream), "/", status_sha, sha256_file, lambda p, a: False)
            verdict_cache.record(cache_dir, transaction, "pass", None)
            megabytes = sum(deb.stat().st_size for deb in real_debs) / 1e6
            cases.append((f"cache hit ({len(real_debs)} debs, {megabytes:.0f} MB)", big_stream))
        results = {}
        for name, text in cases:
            times = time_hook(text, runs)
            results[name] = {
                "median_ms": round(statistics.median(times), 1),
                "min_ms": round(min(times), 1),
                "max_ms": round(max(times), 1),
                "runs": runs,
            }
        baseline = time_hook_baseline(runs)
        results["python3 -I -c pass (floor)"] = {
            "median_ms": round(statistics.median(baseline), 1),
            "min_ms": round(min(baseline), 1),
            "max_ms": round(max(baseline), 1),
            "runs": runs,
        }
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the verdict cache is root's)")
    results = measure(args.runs)
    print(f"{'case':32} {'median':>8} {'min':>8} {'max':>8}")
    for name, row in results.items():
        print(f"{name:32} {row['median_ms']:7.1f}ms {row['min_ms']:7.1f}ms {row['max_ms']:7.1f}ms")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")


def time_hook_baseline(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


if __name__ == "__main__":
    main()
