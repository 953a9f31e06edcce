"""The fleet's own engines read apt-rehearse's results (issue #19): on a
server booted with systemd, Debian's node_exporter serves the verdicts'
metrics from its default textfile directory, Debian's ansible-core sees
them as a local fact and runs the example playbooks; two hosts built the
same are of one system class, and one package or one conffile more is
another.

rh-f-good and rh-f-bad are installed at 1.0; rh-f-good 2.0 is pending (it
passes); rh-f-bad 2.0 (its postinst fails) is published later.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import run_json
from lib.booted import BootedMachine
from lib.localrepo import LocalRepo, build_deb
from lib.machine import install_machine
from lib.trees import bookworm_tree, build_package, install_into
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

TEXTFILE = "var/lib/prometheus/node-exporter/apt_rehearse.prom"
EXAMPLES = "/usr/share/doc/apt-rehearse/examples"
SCRAPE = (
    "python3 -c 'import urllib.request, sys; "
    'sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=20).read().decode())\''
)
LINK_FACT = "mkdir -p /etc/ansible/facts.d && ln -sf /usr/lib/apt-rehearse/apt_rehearse.fact /etc/ansible/facts.d/"
PLAYBOOK = "ansible-playbook -i localhost, -c local --check " + EXAMPLES + "/{name}"
VERSIONS = "dpkg-query -W -f='${Package} ${Version}\\n' rh-f-good rh-f-bad"


@pytest.fixture(scope="module")
def fleet(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-fleet-", dir="/var/tmp"))
    try:
        deb = build_package()
        tree = bookworm_tree(base / "tree", variant="fleet")
        debs = base / "debs"
        v1 = [build_deb(debs, name, "1.0", files={f"/usr/share/{name}/v": "1\n"}) for name in ("rh-f-good", "rh-f-bad")]
        good2 = build_deb(debs, "rh-f-good", "2.0", files={"/usr/share/rh-f-good/v": "2\n"})
        install_machine(tree, deb, [*v1, good2], v1)
        # As in test_prepare_booted: apt's timers stay still, logind (which apt would wait 25 s for) is masked.
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-logind.service"):
            (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")
        with BootedMachine(tree, "fleet") as machine:
            yield {"machine": machine, "tree": tree, "debs": debs}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _prepared(fleet: dict) -> dict:
    """The prepare service run once (by systemd), and the status it left."""
    machine = fleet["machine"]
    if "status" not in fleet:
        proc = machine.run(
            "systemctl start apt-rehearse-prepare.service; systemctl show -p Result apt-rehearse-prepare"
        )
        why = machine.run("journalctl -u apt-rehearse-prepare --no-pager | tail -30").stdout
        assert "Result=success" in proc.stdout, proc.stdout + why
        status = machine.run("apt-rehearse status --json")
        assert status.returncode == 0, status.stderr
        fleet["status"] = json.loads(status.stdout)
    return fleet["status"]


def _scrape(machine: BootedMachine) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + 60
    while True:
        proc = machine.run(SCRAPE, timeout=60)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the exporter may still be starting
    assert proc.returncode == 0, proc.stderr + machine.run("systemctl status prometheus-node-exporter").stdout
    samples = {}
    for family in text_string_to_metric_families(proc.stdout):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_node_exporter_serves_the_verdicts_from_its_textfile_directory(fleet: dict) -> None:
    machine, tree = fleet["machine"], fleet["tree"]
    status = _prepared(fleet)
    assert status["verdict"] == "pass" and status["request"] == "dist-upgrade", status
    written = tree / TEXTFILE
    assert written.stat().st_mode & 0o777 == 0o644
    assert not [p.name for p in written.parent.iterdir() if ".tmp" in p.name]  # replaced in one rename
    samples = _scrape(machine)
    dist = ("request", "dist-upgrade")
    assert samples[("apt_rehearse_pending_verdict", (dist, ("verdict", "pass")))] == 1
    assert samples[("apt_rehearse_pending_verdict", (dist, ("verdict", "block")))] == 0
    assert samples[("apt_rehearse_pending_rehearsed", (dist,))] == 1
    assert samples[("apt_rehearse_pending_changes", (("action", "upgrade"), dist))] == 1
    assert samples[("apt_rehearse_pending_problems", (dist, ("severity", "block")))] == 0
    assert samples[("apt_rehearse_pending_stale", ())] == 0
    assert abs(samples[("apt_rehearse_prepare_timestamp_seconds", ())] - status["written"]) < 1
    last = [key for key in samples if key[0] == "apt_rehearse_last_duration_seconds"]
    assert last and samples[last[0]] > 0, sorted(k for k in samples if k[0].startswith("apt_rehearse_"))
    # node_exporter read every file of the directory (apt_info.py's apt.prom too, where its timer ran) and failed none.
    assert samples[("node_textfile_scrape_error", ())] == 0
    files = [dict(labels)["file"] for name, labels in samples if name == "node_textfile_mtime_seconds"]
    assert any(f.endswith("apt_rehearse.prom") for f in files), files


def test_ansible_setup_shows_the_local_fact(fleet: dict) -> None:
    machine = fleet["machine"]
    status = _prepared(fleet)
    proc = machine.run(
        f"{LINK_FACT} && ansible localhost -i localhost, -c local -m ansible.builtin.setup -a filter=ansible_local"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = json.loads(proc.stdout.split("=>", 1)[1])["ansible_facts"]["ansible_local"]["apt_rehearse"]
    assert (facts["verdict"], facts["id"], facts["changes"], facts["problems"]) == ("pass", status["id"], 1, [])
    assert facts["age_s"] >= 0 and not facts["stale"]
    assert facts["system_class"]["fingerprint"] == status["system_class"]["fingerprint"]
    assert facts["system_class"]["parts"]["transaction"], facts["system_class"]


def test_the_report_and_the_status_give_the_same_system_class(fleet: dict) -> None:
    status = _prepared(fleet)
    report = json.loads((fleet["tree"] / status["report"].lstrip("/")).read_text())
    assert report["system_class"] == status["system_class"]


def test_the_example_playbooks_rehearse_then_stop_at_a_block(fleet: dict) -> None:
    machine, tree = fleet["machine"], fleet["tree"]
    _prepared(fleet)
    machine.run(LINK_FACT)
    canary = machine.run(PLAYBOOK.format(name="canary-upgrade.yml"))
    out = canary.stdout + canary.stderr
    assert canary.returncode == 0, out[-4000:]
    assert "apt-rehearse: PASS" in out and "TASK [The real upgrade]" in out, out[-4000:]
    per_class = machine.run(PLAYBOOK.format(name="rehearse-per-class.yml"))
    out = per_class.stdout + per_class.stderr
    assert per_class.returncode == 0 and "rehearsed it for apt_rehearse_class_" in out, out[-4000:]
    # Now a pending upgrade whose postinst fails: the canary stops the rollout before the real run.
    repo = LocalRepo(tree / "srv/rh-repo")
    repo.add(build_deb(fleet["debs"], "rh-f-bad", "2.0", files={"/usr/share/rh-f-bad/v": "2\n"}, postinst="exit 1\n"))
    repo.publish()
    assert machine.run("apt-get update -q").returncode == 0
    blocked = machine.run(PLAYBOOK.format(name="canary-upgrade.yml"))
    out = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0 and "apt-rehearse: BLOCK on localhost" in out, out[-4000:]
    assert "TASK [The real upgrade]" not in out, out[-4000:]
    # Check mode and the block: nothing was installed.
    assert sorted(machine.run(VERSIONS).stdout.split("\n")) == ["", "rh-f-bad 1.0", "rh-f-good 1.0"]


def _system_class(tree: Path) -> dict:
    proc, document = run_json("--root", str(tree), "status")
    assert proc.returncode == 0, proc.stderr
    return document["system_class"]


def test_two_trees_built_the_same_are_one_class_and_a_package_or_a_conffile_more_is_another(
    sandbox_capable: None,
) -> None:
    base = Path(tempfile.mkdtemp(prefix="rh-class-", dir="/var/tmp"))
    try:
        one, two = (bookworm_tree(base / name, variant="minimal") for name in ("one", "two"))
        # What differs between two hosts of one kind does not count.
        for tree, name in ((one, "host-one"), (two, "host-two")):
            (tree / "etc/hostname").write_text(name + "\n")
            (tree / "etc/machine-id").write_text(name.encode().hex().ljust(32, "0")[:32] + "\n")
        first = _system_class(one)
        assert first == _system_class(two)
        assert first["counts"]["packages"] > 50 and first["counts"]["conffiles_changed"] == 0, first
        conffile = two / "etc/issue"  # base-files' conffile
        original = conffile.read_bytes()
        conffile.write_bytes(original + b"a local change\n")
        changed = _system_class(two)
        assert changed["fingerprint"] != first["fingerprint"]
        assert (
            changed["conffiles_changed"] == ["/etc/issue"]
            and changed["parts"]["packages"] == first["parts"]["packages"]
        )
        conffile.write_bytes(original)  # the content counts, not the file's times
        assert _system_class(two)["fingerprint"] == first["fingerprint"]
        install_into(
            two, [build_deb(base / "debs", "rh-class-extra", "1.0", files={"/usr/share/rh-class-extra/x": "x\n"})]
        )
        extra = _system_class(two)
        assert extra["fingerprint"] != first["fingerprint"]
        assert extra["counts"]["packages"] == first["counts"]["packages"] + 1
        (two / "var/lib/dpkg/status").write_bytes((one / "var/lib/dpkg/status").read_bytes())
        # An enabled unit more is another class too.
        (two / "etc/systemd/system/multi-user.target.wants/rh-extra.service").symlink_to(
            "/lib/systemd/system/rh-extra.service"
        )
        assert _system_class(two)["parts"]["units"] != first["parts"]["units"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
