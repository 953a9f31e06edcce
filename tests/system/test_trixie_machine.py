"""apt-rehearse on trixie (Python 3.13, apt 3.x): the real .deb installed on a
trixie tree run as a machine, its hook stopping a breaking apt run before
dpkg and letting a harmless one through, and the CLI rehearsing there.

Needs the Debian archive for the tree (cached as a tarball between runs).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from lib.localrepo import build_deb
from lib.machine import in_tree, install_machine
from lib.trees import bookworm_tree, build_package, dpkg_status_digest

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def trixie(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-trixie-", dir="/var/tmp"))
    try:
        deb = build_package()
        tree = bookworm_tree(base / "tree", variant="trixie-frontends")
        debs = base / "debs"
        v1 = [build_deb(debs, name, "1.0", files={f"/usr/share/{name}/v": "1\n"}) for name in ("rh-good", "rh-bad")]
        v2 = [
            build_deb(debs, "rh-good", "2.0", files={"/usr/share/rh-good/v": "2\n"}),
            build_deb(
                debs,
                "rh-bad",
                "2.0",
                files={"/usr/share/rh-bad/v": "2\n"},
                postinst='echo "rh-bad: cannot migrate" >&2\nexit 1\n',
            ),
        ]
        install_machine(tree, deb, v1 + v2, v1)
        yield tree
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_it_is_trixie_with_python_3_13_and_apt_3(trixie: Path) -> None:
    proc = in_tree(trixie, "python3 --version; apt-get --version | head -n1; cat /etc/debian_version")
    assert proc.returncode == 0, proc.stderr
    python, apt, debian = proc.stdout.splitlines()[:3]
    assert python.startswith("Python 3.13") and apt.startswith("apt 3.") and debian.startswith("13"), proc.stdout


def test_hook_stops_a_breaking_run_before_dpkg(trixie: Path) -> None:
    before = dpkg_status_digest(trixie)
    proc = in_tree(trixie, "apt-get -y install rh-bad")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "BLOCK" in output and "rh-bad: postinst failed (exit status 1)" in output, output[-3000:]
    assert "stopping apt before dpkg runs" in output
    assert dpkg_status_digest(trixie) == before


def test_cli_rehearses_with_the_hazard_checks(trixie: Path) -> None:
    proc = in_tree(trixie, "apt-rehearse --json --no-services install rh-bad")
    assert proc.returncode == 10, proc.stderr[-3000:]
    document = json.loads(proc.stdout)
    assert document["verdict"] == "block"
    assert {f["check"] for f in document["findings"] if f["severity"] == "block"} == {"script-failure", "package-state"}
    assert document["libraries"]["checked"] and document["libraries"]["objects"] > 0  # pyelftools on Python 3.13
    assert document["boot"]["recorded_commands"] == []


def test_hook_lets_a_harmless_run_through(trixie: Path) -> None:
    proc = in_tree(trixie, "apt-get -y install rh-good")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "apt-rehearse: verdict PASS" in output
    assert in_tree(trixie, "dpkg-query -W -f='${Version}' rh-good").stdout.strip() == "2.0"
