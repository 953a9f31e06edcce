"""What an upgrade would change in the kernel, reported and never applied:
a package whose new version ships a sysctl.d and a modules-load.d file, and
one whose new version drops its sysctl.d file, rehearsed with the CLI on a
real bookworm tree (packages built with dpkg-deb, served from a local
repository)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import assert_host_clean, host_snapshot, run_json
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, dpkg_status_digest, install_into, tree_hash

pytestmark = pytest.mark.integration

SYSCTL_FILE = "/usr/lib/sysctl.d/30-rh-test.conf"
MODULES_FILE = "/usr/lib/modules-load.d/rh-test.conf"
DROPPED_FILE = "/usr/lib/sysctl.d/31-rh-drop.conf"
MODULE = "rh_test_module"  # no such module: never loaded here


def _running(key: str) -> str:
    return " ".join(Path("/proc/sys", key.replace(".", "/")).read_text().split())


@pytest.fixture(scope="module")
def scenario(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-kernel-", dir="/var/tmp"))
    try:
        tree = bookworm_tree(base / "tree", variant="minimal")
        # A value the kernel does not run with, whatever this machine runs with.
        value = "2" if _running("vm.overcommit_memory") == "1" else "1"
        debs = base / "debs"
        v1 = [
            build_deb(debs, "rh-sysctl", "1.0", files={"/usr/share/rh-sysctl/README": "1.0\n"}),
            build_deb(debs, "rh-sysctl-drop", "1.0", files={DROPPED_FILE: "vm.max_map_count = 262144\n"}),
            build_deb(debs, "rh-plain", "1.0"),
        ]
        v2 = [
            build_deb(
                debs,
                "rh-sysctl",
                "2.0",
                files={
                    "/usr/share/rh-sysctl/README": "2.0\n",
                    SYSCTL_FILE: f"# rh-sysctl wants this\nvm.overcommit_memory = {value}\n",
                    MODULES_FILE: f"{MODULE}\n",
                },
            ),
            build_deb(debs, "rh-sysctl-drop", "2.0"),
            build_deb(debs, "rh-plain", "2.0", files={"/usr/share/rh-plain/README": "2.0\n"}),
        ]
        install_into(tree, v1)
        repo = LocalRepo(base / "repo")
        for deb in v1 + v2:
            repo.add(deb)
        repo.publish()
        serve_to_tree(tree, repo)
        yield {"tree": tree, "base": base, "value": value}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def rehearse(info: dict, *args: str):
    before_tree, before_status, host = tree_hash(info["tree"]), dpkg_status_digest(info["tree"]), host_snapshot()
    kernel_before = (_running("vm.overcommit_memory"), _running("vm.max_map_count"))
    proc, document = run_json(
        "--root", str(info["tree"]), "--no-services", "-o", f"APT::Rehearse::Log-Dir={info['base']}/log", *args
    )
    assert tree_hash(info["tree"]) == before_tree
    assert dpkg_status_digest(info["tree"]) == before_status
    assert_host_clean(host)
    assert (_running("vm.overcommit_memory"), _running("vm.max_map_count")) == kernel_before  # reported, not applied
    return proc, document


def _kernel(document: dict) -> list[dict]:
    return [f for f in document["findings"] if f["check"] == "kernel"]


def test_new_sysctl_and_modules_load_files_are_reported_with_file_package_and_running_value(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-sysctl")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert document["verdict"] != "block"
    findings = {f["subject"]: f for f in _kernel(document)}
    # systemd's own 50-pid-max.conf sets kernel.pid_max, which this machine may
    # not run with: the configuration had it before the run, so it is not reported.
    assert set(findings) == {"vm.overcommit_memory", MODULE}, document["findings"]
    value, now = scenario["value"], _running("vm.overcommit_memory")
    sysctl = findings["vm.overcommit_memory"]
    assert sysctl["kinds"] == ["Kernel-Settings"] and sysctl["severity"] == "info"
    assert sysctl["message"] == (
        f"the upgrade sets vm.overcommit_memory = {value} (now {now}) through {SYSCTL_FILE}, "
        "from rh-sysctl, at the next boot or restart of systemd-sysctl"
    )
    details = sysctl["details"]
    assert {k: details[k] for k in ("key", "value", "running", "file", "package")} == {
        "key": "vm.overcommit_memory",
        "value": value,
        "running": now,
        "file": SYSCTL_FILE,
        "package": "rh-sysctl",
    }
    module = findings[MODULE]
    assert module["severity"] == "info"
    assert module["message"] == (
        f"the upgrade loads the kernel module {MODULE} (not loaded now) through {MODULES_FILE}, "
        "from rh-sysctl, at the next boot or restart of systemd-modules-load"
    )
    assert module["details"]["package"] == "rh-sysctl" and module["details"]["running"] == "not loaded"
    assert document["kernel"]["sysctl"] >= 2 and document["kernel"]["modules"] >= 1


def test_a_dropped_sysctl_file_is_reported_with_the_package_that_shipped_it(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-sysctl-drop")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    [finding] = _kernel(document)
    assert finding["severity"] == "info" and finding["subject"] == "vm.max_map_count"
    assert finding["details"]["value"] is None and finding["details"]["was"] == "262144"
    assert finding["details"]["file"] == DROPPED_FILE and finding["details"]["package"] == "rh-sysctl-drop"
    assert finding["message"].startswith(
        f"the upgrade no longer sets vm.max_map_count (now {_running('vm.max_map_count')}), "
        f"which {DROPPED_FILE}, from rh-sysctl-drop, set to 262144"
    )


def test_an_upgrade_that_changes_no_kernel_setting_reports_none(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-plain")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert _kernel(document) == [] and document["verdict"] == "pass"
