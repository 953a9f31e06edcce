#!/usr/bin/python3
"""The downtime forecast against reality (issue #18).

    sudo /usr/bin/python3 bench/downtime.py [--json FILE]

The LAMP tree of the tests (bookworm: apache2 with mod-php, mariadb, ssh,
exim) upgraded to trixie twice, side by side in one run:

  forecast  apt-rehearse --root COPY dist-upgrade --release trixie: the
            rehearsal's downtime per service and its range for the real run
  real      the same upgrade for real: the copy booted with systemd (private
            namespaces, tests/lib/booted.py), the same .debs, apt-get
            dist-upgrade run inside with the services live, and the very same
            watcher (inside/downtime) probing the same targets the rehearsal
            probed, every 0.1 s

Per service: the real outage, the rehearsal's measured one, the forecast
range, whether the real one falls in it, and real / measured. Writes
bench/downtime.json. Nothing is left behind: the work directory under
/var/tmp is removed, the booted machine powered off and its cgroup removed,
also on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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

from apt_rehearse.checks.downtime import forecast  # noqa: E402
from apt_rehearse.inside.downtime import journal_argv, parse_unit_events, probe_targets  # noqa: E402
from apt_rehearse.model.downtime import forecast_range  # noqa: E402
from apt_rehearse.sandbox.boot import HELD_BACK  # noqa: E402
from lib.booted import BootedMachine  # noqa: E402
from lib.trees import bookworm_tree  # noqa: E402
from run import PATH, link_debs, log, rehearse, trixie_copy  # noqa: E402

# The watcher of the product, run by this machine's python3 in the booted
# copy's network namespace only (the copy need not have python3): it probes
# the copy's loopback, and sees the copy's maintainer scripts in /proc (a
# parent pid namespace sees them all). It stops when told on stdin.
WATCH_SCRIPT = r"""
import json, sys
from apt_rehearse.inside.downtime import Watcher
watcher = Watcher(json.loads(sys.argv[1]), journal=False).start()
print(json.dumps({"started": watcher.started}), flush=True)
sys.stdin.readline()
json.dump(watcher.stop(), sys.stdout)
"""
APT_INSIDE = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef "
    "-o Dpkg::Options::=--force-confold -o APT::Status-Fd=3 dist-upgrade 3>/root/rh-status.fifo >/root/rh-apt.log 2>&1"
)


def _read_status(fifo: Path, lines: list[str], times: list[float]) -> None:
    with open(fifo, encoding="utf-8", errors="replace") as status:
        for line in status:
            lines.append(line.rstrip("\n"))
            times.append(time.monotonic())


def real_run(tree: Path, work: Path, targets: list[dict[str, Any]]) -> dict[str, Any]:
    real = work / "real"
    trixie_copy(tree, real)
    link_debs(real)
    # No logind in these namespaces: apt would wait for its inhibitor.
    (real / "etc/systemd/system/systemd-logind.service").symlink_to("/dev/null")
    fifo = real / "root/rh-status.fifo"
    os.mkfifo(fifo)
    with BootedMachine(real, "bench-down") as machine:
        env = {"PATH": PATH, "PYTHONPATH": str(REPO / "src"), "LANG": "C.UTF-8"}
        watcher = subprocess.Popen(
            ["nsenter", "-t", str(machine.leader), "-n", "/usr/bin/python3", "-c", WATCH_SCRIPT, json.dumps(targets)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            started = json.loads(watcher.stdout.readline())["started"]
            lines: list[str] = []
            times: list[float] = []
            reader = threading.Thread(target=_read_status, args=(fifo, lines, times), daemon=True)
            reader.start()
            apt_started = time.monotonic()
            proc = machine.run(APT_INSIDE, timeout=1800)
            apt_seconds = time.monotonic() - apt_started
            reader.join(timeout=10)
            watched = json.loads(watcher.communicate("stop\n", timeout=60)[0])
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        journal = machine.run(" ".join(journal_argv(watched["started_epoch"])), timeout=120).stdout
    if proc.returncode != 0:
        raise SystemExit(f"the real run failed ({proc.returncode}): {(real / 'root/rh-apt.log').read_text()[-1500:]}")
    watched["units"] = parse_unit_events(journal, started)
    watched["apt_started"] = round(apt_started - started, 3)
    return {
        "watched": watched,
        "status_lines": lines,
        "status_times": [round(at - apt_started, 3) for at in times],
        "apt_seconds": round(apt_seconds, 3),
        "apt_rc": proc.returncode,
    }


def compare(document: dict[str, Any], real: dict[str, Any]) -> list[dict[str, Any]]:
    watched = real["watched"]
    interval = watched["interval"]
    real_entries = {e.unit: e for e in forecast(watched, real["status_lines"], real["status_times"])}
    predicted = {e["unit"]: e for e in document["downtime"]}
    rows = []
    for unit in sorted(set(real_entries) | set(predicted)):
        # What the rehearsal holds back on purpose (cron, gettys, ...) runs
        # only in the real copy: not a forecast to compare.
        template = unit.split("@", 1)[0] + "@.service" if "@" in unit else unit
        if unit in HELD_BACK or template in HELD_BACK:
            continue
        truth = real_entries.get(unit)
        guess = predicted.get(unit)
        real_s = truth.seconds if truth else 0.0
        measured = guess["seconds"] if guess else 0.0
        low, high = guess["forecast_s"] if guess else (0.0, 0.0)
        if not guess or not guess["outages"]:
            low, high = forecast_range(0.0, 1.5, interval)
        rows.append(
            {
                "unit": unit,
                "real_s": real_s,
                "real_outages": len(truth.outages) if truth else 0,
                "real_causes": sorted({o.cause for o in truth.outages}) if truth else [],
                "rehearsal_s": measured,
                "rehearsal_outages": len(guess["outages"]) if guess else 0,
                "forecast_s": [low, high],
                "in_range": low <= real_s <= high,
                "ratio_real_to_rehearsal": round(real_s / measured, 2) if measured else None,
                "real_restarts": truth.restarts if truth else 0,
                "rehearsal_restarts": guess["restarts"] if guess else 0,
            }
        )
    return rows


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\nLAMP bookworm -> trixie, services live: rehearsal replay {results['rehearsal_replay_s']} s, "
        f"real apt-get {results['real_apt_s']} s (ratio {results['apt_ratio']})"
    )
    header = ("unit", "real s", "rehearsal s", "forecast s", "in range", "real/rehearsal", "restarts r/f")
    print("  ".join(f"{h:>14}" for h in header))
    for row in results["rows"]:
        cells = (
            row["unit"],
            f"{row['real_s']:.1f} ({row['real_outages']})",
            f"{row['rehearsal_s']:.1f} ({row['rehearsal_outages']})",
            f"{row['forecast_s'][0]:g}-{row['forecast_s'][1]:g}",
            "yes" if row["in_range"] else "NO",
            str(row["ratio_real_to_rehearsal"] or "-"),
            f"{row['real_restarts']}/{row['rehearsal_restarts']}",
        )
        print("  ".join(f"{c:>14}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", dest="json_path", default=str(REPO / "bench/downtime.json"))
    parser.add_argument("--table", metavar="JSON", help="print the table of an earlier run's JSON, measure nothing")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    work = Path(tempfile.mkdtemp(prefix="rh-bench-down-", dir="/var/tmp"))
    began = time.monotonic()
    try:
        log("laying out the LAMP tree")
        tree = bookworm_tree(work / "tree", variant="lamp")
        log("rehearsing the upgrade (services booted)")
        document, _, _ = rehearse(
            "--root", str(tree), "-o", f"APT::Rehearse::Log-Dir={work}/log", "dist-upgrade", "--release", "trixie"
        )
        baseline = document["observations"]["baseline"]
        targets = probe_targets(baseline, [])
        log(f"the real upgrade, booted, {len(targets)} target(s) probed")
        real = real_run(tree, work, targets)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    replay = next(p["seconds"] for p in document["phases"] if p["name"] == "replay")
    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rehearsal_replay_s": replay,
        "rehearsal_watch": document["downtime_watch"],
        "real_apt_s": real["apt_seconds"],
        "real_apt_rc": real["apt_rc"],
        "apt_ratio": round(real["apt_seconds"] / replay, 2),
        "rows": compare(document, real),
        "bench_seconds": round(time.monotonic() - began),
    }
    Path(args.json_path).write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    log(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
