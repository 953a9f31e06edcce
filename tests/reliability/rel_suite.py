"""The reliability suite's ledger: what it tried, what held, what broke.

Loaded as a pytest plugin (``-p rel_ledger``). Each test names its case with
``@pytest.mark.case("...")``; a test that tries many inputs (fuzzing) or
several kill points reports its own count through the ``ledger`` fixture.
A test that fails counts every try it made as broken, so a hole can never
hide behind a passing row. The table is printed at the end of the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest


@dataclasses.dataclass
class Row:
    tries: int = 0
    held: int = 0
    broken: int = 0
    skipped: int = 0


ROWS: dict[str, Row] = {}
_COUNTS: dict[str, int] = {}  # nodeid -> tries it reported


class Ledger:
    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid

    def tried(self, count: int = 1) -> None:
        _COUNTS[self.nodeid] = _COUNTS.get(self.nodeid, 0) + count


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Ledger:
    return Ledger(request.node.nodeid)


def pytest_configure(config: pytest.Config) -> None:
    # hypothesis keeps a directory of its own: not in the work tree, gone at the end.
    import tempfile as _tempfile

    config._rel_hypothesis = _tempfile.mkdtemp(prefix="rel-hypothesis-", dir="/var/tmp")  # type: ignore[attr-defined]
    __import__("os").environ["HYPOTHESIS_STORAGE_DIRECTORY"] = config._rel_hypothesis  # type: ignore[attr-defined]
    config.addinivalue_line("markers", "case(name): the row of the reliability table this test counts in")


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil as _shutil

    _shutil.rmtree(getattr(config, "_rel_hypothesis", ""), ignore_errors=True)


def _case(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("case")
    return marker.args[0] if marker else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    name = _case(item)
    if name is None:
        return
    row = ROWS.setdefault(name, Row())
    if report.when == "teardown" and report.failed:
        row.broken += 1
        row.held = max(0, row.held - 1)
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        tries = max(1, _COUNTS.pop(item.nodeid, 1))
        if report.skipped:
            row.skipped += 1
        elif report.passed:
            row.tries += tries
            row.held += tries
        else:
            row.tries += tries
            row.broken += tries


def table() -> str:
    width = max([len("case"), *(len(name) for name in ROWS)])
    lines = [f"{'case':<{width}}  {'tries':>6}  {'held':>6}  {'broken':>6}", "-" * (width + 26)]
    for name, row in ROWS.items():
        extra = f"  (skipped {row.skipped})" if row.skipped else ""
        lines.append(f"{name:<{width}}  {row.tries:>6}  {row.held:>6}  {row.broken:>6}{extra}")
    total = Row(
        sum(r.tries for r in ROWS.values()), sum(r.held for r in ROWS.values()), sum(r.broken for r in ROWS.values())
    )
    lines.append("-" * (width + 26))
    lines.append(f"{'total':<{width}}  {total.tries:>6}  {total.held:>6}  {total.broken:>6}")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("apt-rehearse reliability: the promise, tried")
    terminalreporter.write_line(table())


# -- what every reliability test shares: the canary, the scenario tree -------------

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import rel_host  # noqa: E402

CANARY_ROW = "canary: same pid, no connection"


@pytest.fixture(scope="session")
def base() -> Path:
    """Our scratch directory (trees, repos, logs, caches): removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="rel-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def canary(base: Path) -> rel_host.Canary:
    process = rel_host.Canary.start(base)
    try:
        process.probe_self()
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def _canary_watch(request: pytest.FixtureRequest):  # noqa: ANN202
    """After every test that ran a rehearsal: the canary kept its pid and saw nobody."""
    yield
    if "canary" not in request.fixturenames:
        return
    watched: rel_host.Canary = request.getfixturevalue("canary")
    row = ROWS.setdefault(CANARY_ROW, Row())
    row.tries += 1
    if watched.alive() and not watched.connections():
        row.held += 1
    else:
        row.broken += 1
        pytest.fail(f"the host canary was disturbed: alive={watched.alive()} connections={watched.connections()}")


@pytest.fixture(scope="session")
def scenario(base: Path, canary: rel_host.Canary, sandbox_capable: None):  # noqa: ANN201
    import rel_scenario

    return rel_scenario.make(base / "scenario", canary.port, canary.abstract_name)
