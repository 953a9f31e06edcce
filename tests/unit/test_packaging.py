"""The version lives in three files; they must agree."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO

from apt_rehearse import __version__


def test_versions_agree() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = re.match(r"apt-rehearse \(([^)]+)\)", (REPO / "debian/changelog").read_text()).group(1)
    assert __version__ == pyproject == changelog


def test_hook_snippet_registers_version_3_on_fd_20() -> None:
    text = (REPO / "hooks/20apt-rehearse").read_text()
    assert '"/usr/lib/apt-rehearse/apt-hook ||' in text
    assert 'DPkg::Tools::Options::/usr/lib/apt-rehearse/apt-hook::Version "3";' in text
    assert 'DPkg::Tools::Options::/usr/lib/apt-rehearse/apt-hook::InfoFD "20";' in text
