"""The node exporter's textfile: what a rehearsal and the prepare's status
become as Prometheus metrics, parsed back with python3-prometheus-client."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apt_rehearse.store import status_file, textfile

REPORT = {
    "schema": "apt-rehearse/1",
    "started": "2026-11-26T10:00:00+00:00",
    "duration_s": 12.5,
    "verdict": "block",
    "transaction": {
        "request": "-y dist-upgrade",
        "changes": [{"action": "upgrade"}, {"action": "upgrade"}, {"action": "remove"}],
    },
    "findings": [{"severity": "block"}, {"severity": "block"}, {"severity": "info"}],
    "problems": [{"severity": "block"}],
    "downtime": [{"unit": "mariadb.service", "seconds": 2.5, "forecast_s": [2.0, 4.25]}, {"unit": "x"}],
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate series {key}"  # node_exporter refuses a file with one
            found[key] = sample.value
    return found


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text("Package: a\nStatus: install ok installed\n")
    return tmp_path


def test_the_last_rehearsal_becomes_gauges_by_verdict_severity_and_unit(tmp_path: Path) -> None:
    samples = _samples(textfile.render(REPORT, None, str(_tree(tmp_path)), now=100.0))
    request = ("request", "dist-upgrade")
    assert samples[("apt_rehearse_last_verdict", (request, ("verdict", "block")))] == 1
    assert samples[("apt_rehearse_last_verdict", (request, ("verdict", "pass")))] == 0
    assert samples[("apt_rehearse_last_problems", (request, ("severity", "block")))] == 1
    assert samples[("apt_rehearse_last_findings", (request, ("severity", "info")))] == 1
    assert samples[("apt_rehearse_last_changes", (("action", "upgrade"), request))] == 2
    assert samples[("apt_rehearse_last_duration_seconds", (request,))] == 12.5
    assert samples[("apt_rehearse_last_timestamp_seconds", (request,))] == 1795687200.0
    assert samples[("apt_rehearse_last_downtime_seconds", (request, ("unit", "mariadb.service")))] == 2.5
    assert samples[("apt_rehearse_last_downtime_forecast_seconds", (request, ("unit", "mariadb.service")))] == 4.25
    # Nothing prepared: no pending transaction has a verdict.
    assert samples[("apt_rehearse_pending_stale", ())] == 1
    assert samples[("apt_rehearse_prepare_timestamp_seconds", ())] == 0


def test_a_release_upgrade_is_told_from_the_pending_one(tmp_path: Path) -> None:
    document = dict(REPORT, transaction=dict(REPORT["transaction"], request="dist-upgrade", release="trixie"))
    samples = _samples(textfile.render(document, None, str(_tree(tmp_path))))
    assert samples[("apt_rehearse_last_verdict", (("request", "dist-upgrade --release trixie"), ("verdict", "block")))]


def test_a_report_without_downtime_or_with_odd_entries_still_renders(tmp_path: Path) -> None:
    document = {k: v for k, v in REPORT.items() if k != "downtime"}
    text = textfile.render(dict(document, started="garbage", downtime=None), None, str(_tree(tmp_path)))
    names = {name for name, _ in _samples(text)}
    assert "apt_rehearse_last_verdict" in names and "apt_rehearse_last_downtime_seconds" not in names
    assert "apt_rehearse_last_timestamp_seconds" not in names


def test_the_pending_requests_come_from_the_prepare_s_status_and_their_reports(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    report = tmp_path / "report.json"
    report.write_text(json.dumps(dict(REPORT, verdict="warn")))
    rows = [
        {"request": "upgrade", "nothing_pending": True, "id": None, "verdict": None},
        {"request": "dist-upgrade", "id": "a" * 64, "changes": 3, "verdict": "warn", "report": str(report)},
        {"request": "gate", "error": "E: no network"},
    ]
    status = status_file.build(str(root), rows)
    samples = _samples(textfile.render(None, status, str(root)))
    assert samples[("apt_rehearse_pending_rehearsed", (("request", "upgrade"),))] == 1
    assert samples[("apt_rehearse_pending_rehearsed", (("request", "dist-upgrade"),))] == 1
    assert samples[("apt_rehearse_pending_rehearsed", (("request", "gate"),))] == 0
    assert samples[("apt_rehearse_pending_verdict", (("request", "dist-upgrade"), ("verdict", "warn")))] == 1
    unit = ("unit", "mariadb.service")
    assert samples[("apt_rehearse_pending_downtime_seconds", (("request", "dist-upgrade"), unit))] == 2.5
    assert samples[("apt_rehearse_pending_stale", ())] == 0
    assert not any(name.startswith("apt_rehearse_last_") for name, _ in samples)
    # A dpkg run since: the verdicts no longer describe what is pending.
    (root / "var/lib/dpkg/status").write_text("Package: b\nStatus: install ok installed\n")
    samples = _samples(textfile.render(None, status, str(root)))
    assert samples[("apt_rehearse_pending_rehearsed", (("request", "dist-upgrade"),))] == 0
    assert samples[("apt_rehearse_pending_stale", ())] == 1


def test_label_values_are_escaped(tmp_path: Path) -> None:
    document = dict(REPORT, downtime=[{"unit": 'we"ird\\unit\n', "seconds": 1}])
    samples = _samples(textfile.render(document, None, str(_tree(tmp_path))))
    assert ("apt_rehearse_last_downtime_seconds", (("request", "dist-upgrade"), ("unit", 'we"ird\\unit\n'))) in samples


def test_the_file_is_written_only_where_the_node_exporter_reads_and_only_for_this_machine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    missing = tmp_path / "no-node-exporter"
    assert textfile.publish(str(missing), str(cache), "/", REPORT) is None and not missing.exists()
    directory = tmp_path / "textfiles"
    directory.mkdir()
    assert textfile.publish(str(directory), str(cache), "/srv/tree", REPORT) is None
    assert textfile.publish("", str(cache), "/", REPORT) is None
    path = textfile.publish(str(directory), str(cache), "/", REPORT)
    assert path == str(directory / "apt_rehearse.prom")
    assert os.stat(path).st_mode & 0o777 == 0o644  # the node exporter runs as its own user
    assert sorted(os.listdir(directory)) == ["apt_rehearse.prom"]  # no temporary file left
    assert "apt_rehearse_last_verdict" in Path(path).read_text()


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("dist-upgrade", "dist-upgrade"),
        ("full-upgrade", "dist-upgrade"),
        ("install rh-x=2.0", "install"),
        ("-y -q upgrade", "upgrade"),
        ("", "apt"),
        ("gate", "gate"),
    ],
)
def test_the_request_label_is_the_command(command: str, kind: str) -> None:
    assert textfile.request_kind(command) == kind


def test_the_textfile_timestamp_is_now(tmp_path: Path) -> None:
    before = time.time()
    samples = _samples(textfile.render(None, None, str(_tree(tmp_path))))
    assert samples[("apt_rehearse_textfile_timestamp_seconds", ())] >= before


def test_the_shipped_alert_rules_name_metrics_the_textfile_writes(tmp_path: Path) -> None:
    """No promtool here: the rules file is YAML with Prometheus' rule groups, and
    every apt_rehearse_ metric it names is one apt-rehearse writes."""
    import re

    import yaml
    from conftest import REPO

    rules = yaml.safe_load((REPO / "doc/examples/apt-rehearse.rules.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    root = _tree(tmp_path)
    status = status_file.build(str(root), [{"request": "dist-upgrade", "id": "a" * 64, "verdict": "pass"}])
    written = {name for name, _ in _samples(textfile.render(REPORT, status, str(root)))}
    named = {name for expr in expressions for name in re.findall(r"\bapt_rehearse_[a-z_]+", expr)}
    assert named and named <= written | {name.replace("_last_", "_pending_") for name in written}, named - written
