#!/usr/bin/python3
"""What a background rehearsal costs the host's own services (issue 17).

Web requests served by the host (a small CPU-bound page in a process of its
own, as PHP-FPM serves one; one client per core) are timed while idle, then while this machine's pending dist-upgrade is
rehearsed, with services booted: once at the priority of
apt-rehearse-prepare.service (Nice=19, CPUSchedulingPolicy=batch,
IOSchedulingClass=idle, and the CPU-Weight=idle its ExecStart gives the
sandbox: nice, chrt -b and ionice -c 3 here, where PID 1 is not systemd; on
this hybrid host the weight becomes the least cpu.shares of a cgroup v1 cpu
group), once at the default priority. Goal: during the prepare, requests answered within 10% of idle.

    sudo /usr/bin/python3 bench/prepare_priority.py [--requests-idle N] [--json FILE]

It rehearses the host's pending upgrade twice: nothing on the host changes
(the rehearsal's own reports and verdicts aside).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import socketserver
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
WORK_ROUNDS = 60_000  # about 20 ms of sha256 on this VM: a small dynamic page
CLIENTS = os.cpu_count() or 2  # one request in flight per core: the site uses the whole machine


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        digest = b"x"
        for _ in range(WORK_ROUNDS):
            digest = hashlib.sha256(digest).digest()
        body = digest.hex().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


class ForkingServer(socketserver.ForkingMixIn, http.server.HTTPServer):
    """A process per request, as PHP-FPM's workers are: the page uses every core."""


def serve() -> tuple[ForkingServer, str]:
    server = ForkingServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def request_ms(url: str) -> float:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        answer.read()
    return (time.perf_counter() - began) * 1000


def during(url: str, argv: list[str]) -> dict[str, object]:
    """Requests, one after another, for as long as the rehearsal runs."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    times = clients(url, lambda done: proc.poll() is None)
    seconds = time.monotonic() - began
    stderr = proc.stderr.read() if proc.stderr else ""
    return {"argv": argv, "rc": proc.returncode, "seconds": round(seconds, 1), "ms": times, "stderr": stderr[-500:]}


def clients(url: str, going: Callable[[int], bool]) -> list[float]:
    """One client per core, each asking again while ``going(requests it made)``."""
    times: list[float] = []

    def client() -> None:
        made = 0
        while going(made):
            times.append(request_ms(url))
            made += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-idle", type=int, default=100)
    parser.add_argument("--json", dest="json_path", default=str(REPO / "bench/prepare_priority.json"))
    args = parser.parse_args()
    server, url = serve()
    try:
        for _ in range(5):
            request_ms(url)  # warm
        idle = summary(clients(url, lambda made: made < args.requests_idle // CLIENTS))
        rehearse = ["/usr/bin/python3", "-m", "apt_rehearse", "-o", "APT::Rehearse::Mail=", "dist-upgrade", "--json"]
        # As the unit starts it: its priority, and the weights its ExecStart passes on to the sandbox.
        weights = ["-o", "APT::Rehearse::CPU-Weight=idle", "-o", "APT::Rehearse::IO-Weight=20"]
        low = during(
            url, ["nice", "-n", "19", "chrt", "-b", "0", "ionice", "-c", "3", *rehearse[:3], *weights, *rehearse[3:]]
        )
        default = during(url, rehearse)
    finally:
        server.shutdown()
    results = {
        "idle": idle,
        "prepare_priority": {**summary(low["ms"]), "rehearsal_s": low["seconds"], "rc": low["rc"]},
        "default_priority": {**summary(default["ms"]), "rehearsal_s": default["seconds"], "rc": default["rc"]},
    }
    for name in ("prepare_priority", "default_priority"):
        row = results[name]
        row["median_vs_idle"] = round(row["median_ms"] / idle["median_ms"], 3)
    Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'case':<20} {'requests':>8} {'median':>9} {'p90':>9} {'vs idle':>8} {'rehearsal':>10}")
    print(f"{'idle':<20} {idle['n']:>8} {idle['median_ms']:>7.1f}ms {idle['p90_ms']:>7.1f}ms {'1.000':>8} {'-':>10}")
    for name in ("prepare_priority", "default_priority"):
        row = results[name]
        print(
            f"{name:<20} {row['n']:>8} {row['median_ms']:>7.1f}ms {row['p90_ms']:>7.1f}ms "
            f"{row['median_vs_idle']:>8.3f} {row['rehearsal_s']:>9.1f}s"
        )
    for run in (low, default):
        if run["rc"] not in (0, 10):
            print(f"rehearsal failed (rc {run['rc']}): {run['stderr']}")


if __name__ == "__main__":
    main()
