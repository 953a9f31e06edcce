"""The suite-wide check (tests/conftest.py) that every report the tests'
rehearsals save follows the shipped schema: it finds what apt-rehearse saved,
and a saved report missing a required key fails it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import _report_validator, report_errors, saved_reports

from apt_rehearse.model.config import Settings
from apt_rehearse.plan import system_class
from apt_rehearse.store import report

from test_report_and_parsers import _rehearsal


@pytest.fixture()
def validator():
    found = _report_validator()
    if found is None:
        pytest.skip("python3-jsonschema is not installed")
    if os.geteuid() != 0:
        pytest.skip("reports are saved root:adm: run as root")
    return found


def _saved(tmp_path: Path) -> Path:
    system = system_class.fingerprint(str(tmp_path), [])
    settings = Settings(log_dir=str(tmp_path / "log"))
    document = report.finish(_rehearsal([], "pass"), settings, duration_s=1.0, extra={"system_class": system})
    return Path(document["report_path"])


def test_a_saved_report_is_found_and_follows_the_schema(tmp_path: Path, validator) -> None:
    began = time.time() - 1
    path = _saved(tmp_path)
    (tmp_path / "log/20200101T000000-000000000006.json").write_text("{}")  # planted by a test, no .log
    assert saved_reports(began, (str(tmp_path / "log*"),)) == [path]
    assert report_errors(path, validator) == []


def test_a_saved_report_missing_a_required_key_fails(tmp_path: Path, validator) -> None:
    document = json.loads(_saved(tmp_path).read_text())
    del document["verdict"]
    # Beside the saved one, not over it: the suite's own check would fail this test too (it does).
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    [error] = report_errors(broken, validator)
    assert "'verdict' is a required property" in error and str(broken) in error
