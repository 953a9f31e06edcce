"""Trust: the verdict cache and the saved reports are root's; a verdict that
anyone else could have written or changed is not believed; a sysadmin's
conffile content never reaches a file another user can read."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import rel_run
import rel_scenario

from apt_rehearse.store import verdict_cache
from apt_rehearse.model.transaction import Change, Transaction

NOBODY = 65534


def _transaction(root: str = "/srv/tree") -> Transaction:
    change = Change("rel-x", "all", "1.0", "2.0", "upgrade", deb="/x/rel-x_2.0_all.deb", sha256="ab" * 32)
    return Transaction(changes=[change], root=root, request="install rel-x", dpkg_status_sha256="cd" * 32)


FORGERIES = {
    "owned by another user": lambda path: os.chown(path, NOBODY, NOBODY),
    "group-writable": lambda path: os.chmod(path, 0o620),
    "world-writable": lambda path: os.chmod(path, 0o602),
    "a symlink to another file": lambda path: (
        os.rename(path, str(path) + ".real"),
        os.symlink(str(path) + ".real", path),
    ),
    "another transaction's id inside": lambda path: path.write_text(
        json.dumps(dict(json.loads(path.read_text()), id="ef" * 32))
    ),
    "not JSON": lambda path: path.write_text("{verdict: pass"),
    "the directory owned by another user": lambda path: os.chown(path.parent, NOBODY, NOBODY),
    "the directory open to others": lambda path: os.chmod(path.parent, 0o755),
    "a FIFO instead of a file": lambda path: (path.unlink(), os.mkfifo(path, 0o600)),
}


@pytest.mark.case("verdict cache: forged or altered entries ignored")
def test_forged_cache_entries_are_not_trusted(ledger, base: Path) -> None:  # noqa: ANN001
    for name, forge in FORGERIES.items():
        ledger.tried()
        cache = base / f"trust-{abs(hash(name))}"
        transaction = _transaction()
        path = Path(verdict_cache.record(str(cache), transaction, "pass", None))
        assert verdict_cache.lookup(str(cache), transaction, 3600, {}) is not None  # the genuine entry is used
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0 and path.stat().st_uid == 0
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        forge(path)
        # Whatever was planted, lookup answers at once (a FIFO once hung it, and apt with it).
        signal.signal(signal.SIGALRM, _too_slow)
        signal.alarm(10)
        try:
            assert verdict_cache.lookup(str(cache), transaction, 3600, {}) is None, name
        finally:
            signal.alarm(0)


def _too_slow(*_: object) -> None:
    raise TimeoutError("the verdict cache lookup hangs")


@pytest.mark.case("verdict cache: forged PASS does not let a blocked run through (apt + hook)")
def test_forged_pass_does_not_open_the_gate(scenario, canary) -> None:  # noqa: ANN001
    """rel-fail is rehearsed (BLOCK, cached); someone else rewrites the
    entry to PASS: the hook does not believe it, rehearses again, apt stops."""
    cache = scenario.base / "cache-forged"
    log = scenario.base / "log-forged"
    first = rel_run.run_and_kill(rel_run.cli_argv(scenario.tree, log, cache, "install", "rel-fail"), None)
    assert first.returncode == 10, first.output[-2000:]
    [entry] = [p for p in (cache / "verdicts").glob("*.json") if p.name != "approval.json"]
    data = json.loads(entry.read_text())
    assert data["verdict"] == "block"
    entry.write_text(json.dumps(dict(data, verdict="pass")))
    os.chown(entry, NOBODY, NOBODY)
    marker = scenario.base / "dpkg-ran"
    marker.unlink(missing_ok=True)
    outcome = rel_run.run_and_kill(
        rel_run.apt_argv(scenario.tree, scenario.base, log, cache, "install", "rel-fail"), None
    )
    assert outcome.returncode != 0, outcome.output[-3000:]
    assert "already rehearsed" not in outcome.output
    assert "BLOCK" in outcome.output and "stopping apt before dpkg runs" in outcome.output, outcome.output[-3000:]
    assert not marker.exists()


def _readable_by_nobody(path: Path) -> bool:
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", str(path)],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


@pytest.mark.case("reports and cache root-only; no conffile content leaked")
def test_reports_are_root_only_and_keep_secrets(ledger, scenario, canary) -> None:  # noqa: ANN001
    """rel-conf's conffile holds the sysadmin's password; 2.0 ships a new
    one (a prompt). Whatever the report says about it, no file another
    user can read holds the password."""
    log, cache = scenario.base / "log-secret", scenario.base / "cache-secret"
    outcome = rel_run.run_and_kill(rel_run.cli_argv(scenario.tree, log, cache, "install", "rel-conf"), None)
    assert outcome.returncode in (0, 10), outcome.output[-2000:]
    assert "/etc/rel-conf.conf" in outcome.stdout  # the prompt is reported
    assert stat.S_IMODE(log.stat().st_mode) & 0o007 == 0
    files = [p for p in [*log.rglob("*"), *cache.rglob("*")] if p.is_file() and not p.is_symlink()]
    assert any(p.suffix == ".json" for p in files) and any(p.parent.name == "verdicts" for p in files)
    for path in files:
        ledger.tried()
        content = path.read_bytes()
        if path.parent.name == "archives" or path.parent.parent.name == "archives":
            continue  # the downloaded .debs: public packages
        assert not _readable_by_nobody(path), f"{path} is readable by another user"
        mode = path.stat().st_mode
        assert stat.S_IMODE(mode) & 0o007 == 0, (path, oct(mode))
        if rel_scenario.SECRET.encode() in content:
            assert path.stat().st_gid in (0, 4), path  # root or adm only
    assert rel_scenario.SECRET not in outcome.stderr
