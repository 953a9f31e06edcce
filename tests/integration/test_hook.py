"""The apt hook, installed from the real .deb, on a bookworm tree run as a machine.

The tree is the "host" of these tests: commands run chrooted into it in
private namespaces with a fresh /proc, /dev, /run and /tmp, so apt, aptitude,
python-apt and unattended-upgrades really run there, really call the hook,
and the hook really builds its (nested) sandbox on that tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import run_on_terminal
from lib.localrepo import LocalRepo, build_deb
from lib.machine import TREE_SETUP, in_tree, install_machine
from lib.trees import bookworm_tree, build_package, dpkg_status_digest

pytestmark = pytest.mark.integration

GOOD = ("rh-good-aptget", "rh-good-apt", "rh-good-aptitude", "rh-good-pyapt", "rh-good-cached", "rh-uu-good")
BAD = ("rh-bad", "rh-bad-escape")


@pytest.fixture(scope="module")
def machine(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-hook-", dir="/var/tmp"))
    try:
        deb = build_package()
        tree = bookworm_tree(base / "tree", variant="frontends")
        debs = base / "debs"
        v1 = [build_deb(debs, name, "1.0", files={f"/usr/share/{name}/v": "1\n"}) for name in GOOD + BAD]
        v1.append(build_deb(debs, "rh-keep", "1.0", files={"/usr/share/rh-keep/v": "1\n"}))
        v1.append(build_deb(debs, "rh-app", "1.0", files={"/usr/share/rh-app/v": "1\n"}))
        v1.append(build_deb(debs, "rh-purge-me", "1.0", conffiles={"/etc/rh-purge-me.conf": "a=1\n"}))
        v2 = [build_deb(debs, name, "2.0", files={f"/usr/share/{name}/v": "2\n"}) for name in GOOD]
        v2 += [
            build_deb(
                debs,
                name,
                "2.0",
                files={f"/usr/share/{name}/v": "2\n"},
                postinst=f'echo "{name}: cannot start" >&2\nexit 1\n',
            )
            for name in BAD
        ]
        v2.append(build_deb(debs, "rh-app", "2.0", files={"/usr/share/rh-app/v": "2\n"}, conflicts="rh-keep"))
        (tree / "etc/apt/apt.conf.d/51rh-unattended").write_text(
            'Unattended-Upgrade::Origins-Pattern { "origin=apt-rehearse-tests"; };\n'
            'Unattended-Upgrade::Package-Blacklist { "rh-good-"; "rh-bad-escape"; "rh-app"; "rh-keep"; };\n'
        )
        install_machine(tree, deb, v1 + v2, v1)
        yield {"tree": tree, "deb": deb}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def status(machine: dict) -> str:
    return dpkg_status_digest(machine["tree"])


def installed_version(machine: dict, package: str) -> str:
    proc = in_tree(machine["tree"], f"dpkg-query -W -f='${{Version}}' {package}")
    return proc.stdout.strip()


@pytest.mark.parametrize(
    "frontend",
    [
        "apt-get -y install rh-bad",
        "apt -y install rh-bad",
        "aptitude -y install rh-bad",
        "python3 -c \"import apt; c = apt.Cache(); c['rh-bad'].mark_install(); c.commit()\"",
        "apt-get -y install rh-app",  # removes the manually installed rh-keep through Conflicts
    ],
)
def test_breaking_transaction_is_stopped_before_dpkg(machine: dict, frontend: str) -> None:
    before = status(machine)
    proc = in_tree(machine["tree"], frontend)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "apt-rehearse:" in output
    assert "BLOCK" in output, output[-3000:]
    assert "stopping apt before dpkg runs" in output
    assert "/var/log/apt-rehearse/" in output  # the report is named
    assert status(machine) == before  # dpkg never ran
    assert installed_version(machine, "rh-bad") == "1.0"


@pytest.mark.parametrize(
    ("frontend", "package"),
    [
        ("apt-get -y install rh-good-aptget", "rh-good-aptget"),
        ("apt -y install rh-good-apt", "rh-good-apt"),
        ("aptitude -y install rh-good-aptitude", "rh-good-aptitude"),
        ("python3 -c \"import apt; c = apt.Cache(); c['rh-good-pyapt'].mark_install(); c.commit()\"", "rh-good-pyapt"),
    ],
)
def test_harmless_upgrade_goes_through(machine: dict, frontend: str, package: str) -> None:
    proc = in_tree(machine["tree"], frontend)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "apt-rehearse: verdict PASS" in output
    assert installed_version(machine, package) == "2.0"


def test_a_purge_goes_through(machine: dict) -> None:
    # The replay once named it "rh-purge-me_", which apt-get does not know: every purge was blocked.
    assert (machine["tree"] / "etc/rh-purge-me.conf").exists()
    proc = in_tree(machine["tree"], "apt-get -y purge rh-purge-me")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "apt-rehearse: verdict PASS" in output
    assert installed_version(machine, "rh-purge-me") == ""
    assert not (machine["tree"] / "etc/rh-purge-me.conf").exists()


def test_a_local_deb_installed_by_path_is_rehearsed(machine: dict, tmp_path: Path) -> None:
    # apt install ./x.deb: in no source; apt hands the hook the file's own path.
    deb = build_deb(tmp_path, "rh-local", "1.0", files={"/usr/share/rh-local/v": "1\n"})
    shutil.copy(deb, machine["tree"] / "root" / deb.name)
    proc = in_tree(machine["tree"], f"cd /root && apt-get -y install ./{deb.name}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "apt-rehearse: verdict PASS" in output
    assert installed_version(machine, "rh-local") == "1.0"


def test_unattended_upgrades_is_gated(machine: dict) -> None:
    """The real unattended-upgrade: the gate rehearses its whole set once; its
    blocked step is stopped by the hook, and its log names the report."""
    tree = machine["tree"]
    gate = in_tree(tree, "apt-rehearse gate")
    assert gate.returncode == 10, gate.stdout[-2000:] + gate.stderr[-2000:]
    assert "rh-bad: postinst failed" in gate.stdout
    before = status(machine)
    proc = in_tree(tree, "unattended-upgrade -v")
    output = proc.stdout + proc.stderr
    logs = tree / "var/log/unattended-upgrades"
    log = (logs / "unattended-upgrades.log").read_text()
    everything = output + log + (logs / "unattended-upgrades-dpkg.log").read_text()
    assert "already rehearsed" in everything and ": BLOCK" in everything
    assert "rehearsing this transaction" not in everything  # the gate's verdict served every step
    assert "Installing the upgrades failed!" in log
    assert "/var/log/apt-rehearse/" in everything
    assert status(machine) == before
    assert installed_version(machine, "rh-bad") == "1.0"


def test_unattended_upgrades_harmless_set_goes_through(machine: dict) -> None:
    tree = machine["tree"]
    extra = tree / "etc/apt/apt.conf.d/52rh-unattended-only-good"
    extra.write_text('Unattended-Upgrade::Package-Blacklist { "rh-bad"; };\n')
    try:
        gate = in_tree(tree, "apt-rehearse gate")
        assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr[-2000:]
        assert "Verdict: PASS" in gate.stdout
        proc = in_tree(tree, "unattended-upgrade -v")
        logs = tree / "var/log/unattended-upgrades"
        everything = proc.stdout + proc.stderr + (logs / "unattended-upgrades-dpkg.log").read_text()
        assert "already rehearsed" in everything and ": PASS" in everything
        assert installed_version(machine, "rh-uu-good") == "2.0"
        assert installed_version(machine, "rh-bad") == "1.0"
    finally:
        extra.unlink()


def test_cli_rehearsal_primes_the_cache(machine: dict) -> None:
    tree = machine["tree"]
    first = in_tree(tree, "apt-rehearse install rh-good-cached")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = in_tree(tree, "apt-get -y install rh-good-cached")
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-2000:]
    assert "already rehearsed (an earlier rehearsal): PASS" in output
    assert "rehearsing this transaction" not in output
    assert installed_version(machine, "rh-good-cached") == "2.0"


def test_on_error_policy(machine: dict) -> None:
    tree = machine["tree"]
    before = status(machine)
    # A rehearsal that cannot complete (its upper runs out of room): unattended default is block.
    proc = in_tree(tree, "apt-get -y -o APT::Rehearse::Tmpfs-Size=256k install rh-bad-escape")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "could not rehearse this transaction" in output and "'block'" in output
    assert status(machine) == before
    # The same failure with On-Error=allow: apt goes on (and dpkg reports the broken postinst itself).
    proc = in_tree(
        tree,
        "apt-get -y -o APT::Rehearse::Tmpfs-Size=256k -o APT::Rehearse::On-Error::Unattended=allow "
        "install rh-bad-escape",
    )
    output = proc.stdout + proc.stderr
    assert "apt goes on UNREHEARSED" in output
    assert "rh-bad-escape: cannot start" in output  # dpkg ran
    restore_bad_escape(tree)


def test_escape_hatches(machine: dict) -> None:
    tree = machine["tree"]
    proc = in_tree(tree, "apt-get -y -o APT::Rehearse::Enable=false install rh-bad-escape")
    output = proc.stdout + proc.stderr
    assert "apt-rehearse:" not in output
    assert "rh-bad-escape: cannot start" in output  # dpkg ran: nothing stopped it
    restore_bad_escape(tree)
    proc = in_tree(
        tree, "apt-get -y install rh-bad-escape", env={"DEBIAN_FRONTEND": "noninteractive", "APT_REHEARSE": "0"}
    )
    output = proc.stdout + proc.stderr
    assert "apt-rehearse:" not in output
    assert "rh-bad-escape: cannot start" in output
    restore_bad_escape(tree)


def restore_bad_escape(tree: Path) -> None:
    """Put back rh-bad-escape 1.0 after a test let its broken 2.0 through."""
    proc = in_tree(tree, "dpkg --force-all -P rh-bad-escape && dpkg -i /root/debs/rh-bad-escape_1.0_all.deb")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        ("VERSION 3\nAPT::Architecture=amd64\n", "truncated"),
        ("VERSION 7\nA=1\n\n", "version 7 is not supported"),
        (
            "VERSION 3\nA=1\n\nrh-x - - none < 2.0 all none /var/cache/apt/archives/missing_2.0_all.deb\n",
            "cannot be read",
        ),
    ],
)
def test_malformed_hook_input(machine: dict, stream: str, words: str) -> None:
    tree = machine["tree"]
    (tree / "root/stream").write_text(stream)
    proc = in_tree(tree, "/usr/lib/apt-rehearse/apt-hook < /root/stream")
    assert proc.returncode == 10  # unattended: On-Error block
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr


def test_lintian_finds_no_error(machine: dict) -> None:
    with tempfile.TemporaryDirectory() as scratch:  # lintian leaves files in TMPDIR
        proc = subprocess.run(
            ["lintian", "--fail-on", "error", str(machine["deb"])],
            capture_output=True,
            text=True,
            check=False,
            env=dict(os.environ, TMPDIR=scratch),
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _drive_on_a_terminal(tree: Path, command: str, answers: list[tuple[str, str]]) -> tuple[int, str]:
    argv = [
        "unshare",
        "--mount",
        "--pid",
        "--ipc",
        "--uts",
        "--fork",
        "--propagation",
        "private",
        "sh",
        "-c",
        TREE_SETUP,
        "sh",
        str(tree),
        "TERM=dumb",
        "sh",
        "-c",
        command,
    ]
    return run_on_terminal(argv, answers)


def test_interactive_run_asks_on_the_terminal(machine: dict) -> None:
    tree = machine["tree"]
    # rh-conf: a conffile changed locally and by the new version: a warning, so the hook asks.
    debs = tree / "root/debs"
    repo = LocalRepo(tree / "srv/rh-repo")  # the pool already holds the other packages
    for deb in (
        build_deb(debs, "rh-conf", "1.0", conffiles={"/etc/rh-conf.conf": "a=1\n"}),
        build_deb(debs, "rh-conf", "2.0", conffiles={"/etc/rh-conf.conf": "a=2\n"}),
    ):
        repo.add(deb)
    repo.publish()
    proc = in_tree(
        tree,
        "APT_REHEARSE=0 apt-get update -q && dpkg -i /root/debs/rh-conf_1.0_all.deb && echo 'a=local' > /etc/rh-conf.conf",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    before = status(machine)
    code, screen = _drive_on_a_terminal(tree, "apt-get install rh-conf", [("[Y/n]", "y\n"), ("[y/N]", "n\n")])
    assert "Continue with the real run? [y/N]" in screen, screen[-3000:]
    assert "/etc/rh-conf.conf" in screen
    assert code != 0
    assert status(machine) == before
    code, screen = _drive_on_a_terminal(
        tree, "apt-get install rh-conf", [("[Y/n]", "y\n"), ("[y/N]", "y\n"), ("[default=N] ?", "N\n")]
    )
    assert code == 0, screen[-3000:]
    assert installed_version(machine, "rh-conf") == "2.0"


def test_package_upgrades_and_purges_cleanly(machine: dict) -> None:
    """Runs last: reinstall (the upgrade path of the maintainer scripts), then purge."""
    tree = machine["tree"]
    deb = machine["deb"].name
    proc = in_tree(
        tree, f"APT_REHEARSE=0 dpkg -i /root/debs/{deb} && apt-rehearse install rh-bad >/dev/null; dpkg -L apt-rehearse"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    owned = [line for line in proc.stdout.splitlines() if line.startswith("/")]
    files = [path for path in owned if not (tree / path.lstrip("/")).is_dir()]
    assert "/usr/lib/apt-rehearse/apt-hook" in owned and "/etc/apt/apt.conf.d/20apt-rehearse" in owned
    assert (tree / "var/log/apt-rehearse").exists() and (tree / "var/cache/apt-rehearse").exists()
    proc = in_tree(tree, "APT_REHEARSE=0 dpkg -P apt-rehearse")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = [path for path in files if os.path.lexists(tree / path.lstrip("/"))]
    assert left == []
    for runtime in ("var/log/apt-rehearse", "var/cache/apt-rehearse", "var/tmp/apt-rehearse", "usr/lib/apt-rehearse"):
        assert not (tree / runtime).exists(), runtime
    # apt still works without the package.
    proc = in_tree(tree, "apt-get -y install rh-good-cached && apt-get -y --reinstall install rh-good-cached")
    assert proc.returncode == 0, proc.stdout + proc.stderr
