"""The verdicts as Prometheus metrics, in node_exporter's textfile collector
format, where Debian's prometheus-node-exporter reads them
(APT::Rehearse::Textfile-Dir, /var/lib/prometheus/node-exporter).

Named the way the community's apt_info.py names its own (apt_upgrades_pending,
apt_package_cache_timestamp_seconds): snake case, the unit last, with the
prefix apt_rehearse_. Two sets of the same shape:

- apt_rehearse_pending_*: what the prepare service found pending, one series
  per request apt would run (upgrade, dist-upgrade, gate = unattended-upgrades),
  with apt_rehearse_pending_rehearsed saying whether the pending transaction
  has a fresh verdict at all;
- apt_rehearse_last_*: the last rehearsal, by any front (the CLI, the apt
  hook, the prepare service), its request the label.

The text format is a few lines a scrape reads whole: written here rather than
with python3-prometheus-client, which every host would then need for this
alone; the tests have node_exporter itself parse what is written. The file is
replaced in one rename in its own directory, so a scrape sees the old file or
the new one; the collector reads only *.prom, never the temporary file.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any, Iterable

from apt_rehearse.store import status_file
from apt_rehearse.store.files import write_atomically

NAME = "apt_rehearse.prom"
VERDICTS = ("pass", "warn", "block")
SEVERITIES = ("info", "warn", "block")
PENDING_REQUESTS = ("upgrade", "dist-upgrade", "gate")

# name -> (type, help); the order of the file.
FAMILIES = {
    "verdict": ("gauge", "1 for the verdict of the rehearsed transaction, 0 for the other verdicts."),
    "problems": ("gauge", "Problems (findings grouped by cause) of the rehearsal, by severity."),
    "findings": ("gauge", "Findings of the rehearsal, by severity."),
    "changes": ("gauge", "Packages the rehearsed transaction changes, by action."),
    "timestamp_seconds": ("gauge", "When the rehearsal started, in seconds since the epoch."),
    "duration_seconds": ("gauge", "How long the rehearsal took."),
    "downtime_seconds": ("gauge", "Seconds a unit was out during the rehearsed upgrade."),
    "downtime_forecast_seconds": ("gauge", "The forecast upper bound of a unit's outage in the real run."),
}


def request_kind(request: str) -> str:
    """The label of a request: its command ("install foo" -> install; the
    hook's "-y dist-upgrade" -> dist-upgrade), full-upgrade as dist-upgrade."""
    words = [word for word in (request or "").split() if not word.startswith("-")]
    kind = words[0] if words else "apt"
    return "dist-upgrade" if kind == "full-upgrade" else kind


def rehearsal_samples(document: dict[str, Any], request: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """One rehearsal's samples, family by family (labels, value)."""
    labels = {"request": request}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in FAMILIES}
    verdict = document.get("verdict")
    samples["verdict"] = [({**labels, "verdict": v}, 1.0 if v == verdict else 0.0) for v in VERDICTS]
    for family, key in (("problems", "problems"), ("findings", "findings")):
        counts = {severity: 0 for severity in SEVERITIES}
        for entry in document.get(key) or []:
            if entry.get("severity") in counts:
                counts[entry["severity"]] += 1
        samples[family] = [({**labels, "severity": s}, float(n)) for s, n in counts.items()]
    actions: dict[str, int] = {}
    for change in (document.get("transaction") or {}).get("changes") or []:
        actions[change.get("action", "?")] = actions.get(change.get("action", "?"), 0) + 1
    samples["changes"] = [({**labels, "action": a}, float(n)) for a, n in sorted(actions.items())]
    started = _epoch(document.get("started"))
    if started is not None:
        samples["timestamp_seconds"] = [(labels, started)]
    if isinstance(document.get("duration_s"), (int, float)):
        samples["duration_seconds"] = [(labels, float(document["duration_s"]))]
    # The downtime forecast (issue 18) is read defensively: absent from older reports.
    for entry in document.get("downtime") or []:
        if not isinstance(entry, dict) or not entry.get("unit"):
            continue
        unit = {**labels, "unit": str(entry["unit"])}
        if isinstance(entry.get("seconds"), (int, float)):
            samples["downtime_seconds"].append((unit, float(entry["seconds"])))
        forecast = entry.get("forecast_s")
        if isinstance(forecast, list) and forecast and isinstance(forecast[-1], (int, float)):
            samples["downtime_forecast_seconds"].append((unit, float(forecast[-1])))
    return samples


def _epoch(started: Any) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(started)).timestamp()
    except ValueError:
        return None


def render(last: dict[str, Any] | None, status: dict[str, Any] | None, root: str, now: float | None = None) -> str:
    """The whole file: the pending requests of the prepare's status (their
    reports read for the problems and the downtime), then the last rehearsal."""
    now = time.time() if now is None else now
    lines: list[str] = []
    pending: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in FAMILIES}
    rehearsed: list[tuple[dict[str, str], float]] = []
    stale = status_file.stale_because(status, root) if status else "not prepared yet"
    for row in (status or {}).get("requests") or []:
        request = row.get("request")
        if request not in PENDING_REQUESTS or row.get("skipped"):
            continue
        labels = {"request": request}
        if row.get("nothing_pending"):
            rehearsed.append((labels, 0.0 if stale else 1.0))
            pending["changes"].append(({**labels, "action": "any"}, 0.0))
            continue
        has_verdict = row.get("verdict") in VERDICTS and not row.get("error") and not stale
        rehearsed.append((labels, 1.0 if has_verdict else 0.0))
        if row.get("verdict") not in VERDICTS:
            continue
        document = status_file.read_report(row.get("report")) or {"verdict": row["verdict"]}
        document.setdefault("started", None)
        for name, rows in rehearsal_samples(document, request).items():
            pending[name] += rows
        if not document.get("started") and row.get("rehearsed_at"):
            pending["timestamp_seconds"].append((labels, float(row["rehearsed_at"])))
    if status is None:
        # Never prepared: what apt would run has no verdict (unattended-upgrades' set may not exist here).
        rehearsed = [({"request": request}, 0.0) for request in ("upgrade", "dist-upgrade")]
    lines += _family(
        "apt_rehearse_pending_rehearsed",
        "gauge",
        "1 when the transaction apt would run now for the request has a verdict (the prepare service's, and "
        "nothing changed since), else 0.",
        rehearsed,
    )
    written = float((status or {}).get("written") or 0)
    lines += _family(
        "apt_rehearse_prepare_timestamp_seconds",
        "gauge",
        "When the prepare service last rehearsed what is pending (0: never).",
        [({}, written)],
    )
    lines += _family(
        "apt_rehearse_pending_stale",
        "gauge",
        "1 when packages were installed or apt updated its lists since the prepare service's verdicts.",
        [({}, 1.0 if stale else 0.0)],
    )
    for name, (kind, help_text) in FAMILIES.items():
        lines += _family(f"apt_rehearse_pending_{name}", kind, "Pending: " + help_text, pending[name])
    if last:
        transaction = last.get("transaction") or {}
        request = request_kind(transaction.get("request") or "")
        if transaction.get("release"):
            # A release upgrade (--release) is not what apt would run now: its own label value.
            request = f"{request} --release {transaction['release']}"
        for name, rows in rehearsal_samples(last, request).items():
            lines += _family(
                f"apt_rehearse_last_{name}", FAMILIES[name][0], "Last rehearsal: " + FAMILIES[name][1], rows
            )
    lines += _family(
        "apt_rehearse_textfile_timestamp_seconds", "gauge", "When apt-rehearse wrote this file.", [({}, now)]
    )
    return "\n".join(lines) + "\n"


def last_saved(log_dir: str) -> dict[str, Any] | None:
    """The last saved report (latest.json), for a writer that rehearsed nothing itself."""
    return status_file.read_report(os.path.join(log_dir, "latest.json"))


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    samples = list(samples)
    if not samples:
        return []  # a family with no sample is left out, as client libraries do
    lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
        lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return lines


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def publish(directory: str, cache_dir: str, root: str, last: dict[str, Any] | None) -> str | None:
    """Write <directory>/apt_rehearse.prom when the directory exists (the
    node exporter is installed); the path written, or None. Only for the
    rehearsal of this machine's own / : a tree in a directory is not what
    this machine's monitoring watches."""
    if not directory or root != "/" or not os.path.isdir(directory):
        return None
    status = status_file.read(cache_dir)
    if status is not None and status.get("root") != root:
        status = None
    path = os.path.join(directory, NAME)
    write_atomically(path, render(last, status, root), mode=0o644)
    return path
