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


def test_every_policy_kind_is_documented_and_completed() -> None:
    from apt_rehearse.model.policy import DEFAULTS

    completion = (REPO / "data/apt-rehearse.bash-completion").read_text()
    readme = (REPO / "README.md").read_text()
    snippet = (REPO / "hooks/50apt-rehearse-policy").read_text()
    manual = (REPO / "doc/apt-rehearse.8").read_text()
    for kind, (severity, _meaning) in DEFAULTS.items():
        assert re.search(rf"\b{re.escape(kind)}\b(?!-)", completion), kind
        assert re.search(rf"`{re.escape(kind)}`\s+\(?{severity}\b", readme), kind
        assert f'//APT::Rehearse::Policy::{kind} "{severity}";' in snippet, kind
        assert f'.BR {kind.replace("-", chr(92) + "-")} " (default: " {severity} )' in manual, kind


def test_every_setting_is_completed() -> None:
    completion = (REPO / "data/apt-rehearse.bash-completion").read_text()
    source = "".join(path.read_text() for path in (REPO / "src/apt_rehearse").rglob("*.py"))
    keys = set(re.findall(r"APT::Rehearse::([A-Z][A-Za-z-]*)", source)) - {"Policy"}
    for key in keys:
        assert f"APT::Rehearse::{key}" in completion, key
