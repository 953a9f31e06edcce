"""Real Debian: a bookworm LAMP tree rehearsed to trixie, and this very host.

Needs the Debian archive (the tree tarball is cached between runs under
/var/cache/apt-rehearse-tests, the .debs under /var/cache/apt-rehearse).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from apt_rehearse.model.downtime import describe
from conftest import IN_CI, assert_host_clean, host_snapshot, run_json
from lib.trees import bookworm_tree, dpkg_status_digest, tree_hash

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def lamp_tree(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-sys-", dir="/var/tmp"))
    try:
        yield bookworm_tree(base / "tree", variant="lamp"), base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_release_upgrade_reports_php_removals_and_leaves_tree_unchanged(lamp_tree) -> None:
    tree, base = lamp_tree
    before_hash, before_status = tree_hash(tree), dpkg_status_digest(tree)
    before_host = host_snapshot()
    # One command: the rehearsal, then the same upgrade with the problems' fixes (--fix).
    proc, fixed = run_json(
        "--root", str(tree), "-o", f"APT::Rehearse::Log-Dir={base}/log", "dist-upgrade", "--release", "trixie", "--fix"
    )
    with open(fixed["fix_of"]["report_path"], encoding="utf-8") as handle:
        document = json.load(handle)  # the rehearsal without the fixes, as saved
    assert document["verdict"] == "block", proc.stderr
    removed = {c["package"] for c in document["transaction"]["changes"] if c["action"] in ("remove", "purge")}
    assert "libapache2-mod-php8.2" in removed
    assert {"php8.2-mysql", "php8.2-common", "php8.2-cli"} <= removed
    assert len(removed) >= 20
    upgraded = {c["package"] for c in document["transaction"]["changes"] if c["action"] == "upgrade"}
    assert {"apache2", "mariadb-server", "openssh-server", "base-files"} <= upgraded
    findings = {f["subject"]: f for f in document["findings"] if f["check"] == "removal"}
    module = findings["libapache2-mod-php8.2"]
    assert module["severity"] == "block"
    assert any(m.startswith("apache: ") for m in module["details"]["web_modules"])
    assert not [f for f in document["findings"] if f["check"] in ("script-failure", "package-state", "apt")]
    print(
        f"release upgrade rehearsal: {document['duration_s']} s, upper {document['upper_bytes']} bytes, "
        f"phases {document['phases']}, services {document['services']}"
    )
    # The services: Apache still answers, but PHP is gone from it.
    services = document["services"]
    assert services["boot"]["state"] in ("running", "degraded")
    assert {"tcp/80", "tcp/22", "tcp/3306"} <= set(services["baseline"]["listening"])
    # The downtime forecast: the database is restarted by its packages, and so is (or reloaded) Apache.
    downtime = {entry["unit"]: entry for entry in document["downtime"]}
    print("release upgrade downtime:", document["downtime_watch"], [describe(e) for e in document["downtime"]])
    assert {"mariadb.service", "apache2.service"} <= set(downtime), document["downtime"]
    mariadb = downtime["mariadb.service"]
    assert mariadb["outages"] and "tcp/3306" in mariadb["probed"], mariadb
    assert all("mariadb" in outage["cause"] for outage in mariadb["outages"]), mariadb["outages"]
    assert mariadb["forecast_s"][0] <= mariadb["seconds"] <= mariadb["forecast_s"][1]
    apache = downtime["apache2.service"]
    assert apache["restarts"] + apache["reloads"] >= 1, apache
    assert document["downtime_watch"]["host_seconds"] >= mariadb["seconds"]
    [lost] = [f for f in document["findings"] if f["check"] == "module"]
    assert "php_module" in lost["details"]["lost"] and lost["severity"] == "block"
    [source] = [f for f in document["findings"] if f["check"] == "http" and f["subject"].endswith("/index.php")]
    assert "now serves PHP source" in source["message"] and source["severity"] == "block"
    assert "<?php" in source["details"]["after"]["snippet"] and "<?php" not in source["details"]["before"]["snippet"]
    assert module["details"]["replacement"] == "libapache2-mod-php8.4"
    assert findings["php8.2-mysql"]["details"]["replacement"] == "php8.4-mysql"
    suggestion = document["suggestion"]
    assert {"libapache2-mod-php8.4", "php8.4-mysql"} <= set(suggestion["also"])
    assert suggestion["command"].startswith(f"apt-rehearse --root {tree} dist-upgrade --release trixie --also ")
    # The system under the packages: no false alarm about libraries or the boot
    # chain (the PHP and Apache modules were checked), and what trixie leaves behind.
    assert not [f for f in document["findings"] if f["check"] in ("library", "boot")], document["findings"]
    assert document["libraries"]["checked"] and document["libraries"]["objects"] > 10
    assert any(row["object"].startswith("/usr/lib/apache2/modules/") for row in document["libraries"]["per_object"])
    assert isinstance(document["obsolete"], list) and isinstance(document["auto_removable"], list)
    release = [f for f in document["findings"] if f["check"] == "release"]
    assert all(f["severity"] == "info" for f in release)
    print(f"release upgrade: obsolete {document['obsolete']}, auto-removable {document['auto_removable']}")

    # Its problems: PHP's removal with Apache's module and the page serving source is one, with its fix.
    php = next(p for p in document["problems"] if p["key"] == "removal:libapache2-mod-php8.2")
    kinds = {kind for place in php["findings"] for kind in document["findings"][place]["kinds"]}
    assert {"Remove-Module", "Module-Lost", "Http-Changed"} <= kinds and php["area"] == "site"
    assert php["fix"]["packages"] == ["libapache2-mod-php8.4"]
    print("release upgrade problems:", [(p["severity"], p["title"]) for p in document["problems"]])

    # The fixes, rehearsed by --fix: the site works again, and PHP's removal no longer blocks.
    fix_of = fixed["fix_of"]
    assert {"libapache2-mod-php8.4", "php8.4-mysql"} <= set(fix_of["added"])
    assert fix_of["real_run"].startswith("with the sources switched to trixie: apt-get dist-upgrade ")
    verified = {p["key"]: p for p in fix_of["problems"]}
    assert verified["removal:libapache2-mod-php8.2"]["verified"] is True, verified["removal:libapache2-mod-php8.2"]
    replaced = next(f for f in fixed["findings"] if f["check"] == "removal" and f["subject"] == "libapache2-mod-php8.2")
    assert replaced["kinds"] == ["Remove", "Remove-Replaced"] and replaced["severity"] == "warn", replaced
    assert "php_module still loads" in replaced["message"]
    print("release upgrade with the fixes:", fixed["verdict"], [(p["severity"], p["title"]) for p in fixed["problems"]])
    # With the replacements in, nothing of PHP blocks: the upgrade may go ahead.
    assert fixed["verdict"] in ("pass", "warn"), [p["title"] for p in fixed["problems"] if p["severity"] == "block"]
    assert proc.returncode in (0, 10), proc.stderr
    installed = {c["package"] for c in fixed["transaction"]["changes"] if c["action"] == "install"}
    assert "libapache2-mod-php8.4" in installed
    assert not [f for f in fixed["findings"] if f["check"] in ("module", "http", "service", "socket")], fixed[
        "findings"
    ]
    assert fixed["services"]["rebooted"]["http"]["80/index.php"] == 200
    assert fixed["suggestion"] is None
    assert tree_hash(tree) == before_hash
    assert dpkg_status_digest(tree) == before_status
    assert_host_clean(before_host)


def _digest_dir(path: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            stat = os.stat(full)
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _host_state() -> dict[str, str]:
    """What a rehearsal of / must leave exactly as it was."""
    return {
        "status": dpkg_status_digest(Path("/")),
        "lists": _digest_dir("/var/lib/apt/lists"),
        "archives": _digest_dir("/var/cache/apt/archives"),
        "etc": tree_hash(Path("/etc")),
        "var_lib": tree_hash(Path("/var/lib")),
        "usr": tree_hash(Path("/usr"), content=False),
    }


def test_host_upgrade_completes_and_changes_nothing(sandbox_capable: None) -> None:
    """apt-rehearse upgrade on the running machine itself."""
    before = _host_state()
    before_host = host_snapshot()
    log_dir = tempfile.mkdtemp(prefix="rh-host-log-", dir="/var/tmp")
    try:
        proc, document = run_json("-o", f"APT::Rehearse::Log-Dir={log_dir}", "upgrade")
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    assert proc.returncode in (0, 10), proc.stderr
    assert document["root"] == "/"
    assert not [f for f in document["findings"] if f["check"] in ("apt", "timeout")], document["findings"]
    # No false alarm: a point-release upgrade breaks none of the host's services.
    assert not [f for f in document["findings"] if f["check"] in ("service", "socket", "http", "module", "config-test")]
    assert not [
        f for f in document["findings"] if f["check"] in ("library", "boot") and f["severity"] == "block"
    ], document["findings"]
    assert document["libraries"]["checked"]
    print(
        f"host upgrade rehearsal: {len(document['transaction']['changes'])} changes, {document['duration_s']} s, "
        f"verdict {document['verdict']}"
    )
    after = _host_state()
    assert after == before
    assert_host_clean(before_host)
    # The services booted: when they could not be, the report says why, and
    # the test says so too instead of passing on the packages alone.
    services = document["services"]
    if services is None:
        why = [note for note in document["notes"] if note.startswith("services are not rehearsed")]
        assert why, f"no services and no note why: {document['notes']}"
        if IN_CI:
            pytest.fail(f"CI must rehearse the host's services: {why[0]}")
        pytest.skip(f"the host's services were not rehearsed: {why[0]}")
    assert services["boot"]["state"] in ("running", "degraded"), services
    assert services["baseline"]["active_services"] > 0, services
