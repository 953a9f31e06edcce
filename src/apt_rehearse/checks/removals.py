"""Removals judged by what they did: a removed package whose replacement
the same transaction installs, where everything the rehearsal saw it
provide still works after the upgrade, is a warning, not a block.

What counts as "provided", and how it is seen:
- an Apache module it ships that Apache loaded before (``apache2ctl -M``);
- a PHP extension it ships that PHP loaded before (``php -m``);
- a service of its that ran before: the replacement's unit of the same
  name (php8.2-fpm.service -> php8.4-fpm.service) runs after the upgrade,
  and after the reboot when there was one;
- and for any of those, the pages: no page answers differently.

A removal stays as it was (a block by default) when something it provided
is lost, when nothing in the transaction replaces it, or when nothing the
rehearsal observes covers it: no services booted, an nginx module (no
module list to read), a package with neither modules nor services.
"""

from __future__ import annotations

import dataclasses
import os
import re

from apt_rehearse.model.observation import Observation
from apt_rehearse.model.policy import Finding
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, Transaction, replacement_pattern

JUDGED_KINDS = ("Remove-Module", "Remove-Service", "Remove-Manual")
# What breaks a site whatever the removal's own pieces do.
PAGE_KINDS = ("Http-Changed", "Http-Body-Changed", "Dangling-Socket")
LOAD_MODULE = re.compile(r"^\s*LoadModule\s+(\w+)\s+\S+", re.M)


@dataclasses.dataclass
class Judgement:
    clean: bool
    seen: list[str]  # what still works, in words
    why_not: str = ""  # what is lost, or what no observation covers


def apache_modules(root: str, files: list[str]) -> set[str]:
    """The module names (php_module) of a package's Apache files: the
    LoadModule lines of its .load files, else the names its .so files imply."""
    names: set[str] = set()
    for path in files:
        if path.endswith(".load"):
            try:
                with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="replace") as handle:
                    names.update(LOAD_MODULE.findall(handle.read()))
            except OSError:
                pass
    if not names:
        for path in files:
            if path.endswith(".so"):
                base = os.path.basename(path)[: -len(".so")]
                base = base[len("mod_") :] if base.startswith("mod_") else base
                base = base[len("lib") :] if base.startswith("lib") else base
                names.add(re.sub(r"[\d.]+$", "", base) + "_module")
    return names


def php_extensions(files: list[str]) -> set[str]:
    """Extension names (mysqli, pdo_mysql) of a package's PHP files."""
    names = set()
    for path in files:
        base = os.path.basename(path)
        if path.startswith("/usr/lib/php/") and base.endswith(".so"):
            names.add(base[: -len(".so")])
        elif "/mods-available/" in path and base.endswith(".ini"):
            names.add(base[: -len(".ini")])
    return names


def _loaded(extension: str, modules: list[str]) -> bool:
    lowered = {m.lower() for m in modules}
    return extension.lower() in lowered or f"zend {extension}".lower() in lowered


def _renamed_unit(unit: str, old: str, new: str) -> str | None:
    return unit.replace(old, new, 1) if old in unit else None


def judge(
    finding: Finding,
    replacement: str,
    root: str,
    findings: list[Finding],
    baseline: Observation | None,
    upgraded: Observation | None,
    rebooted: Observation | None,
) -> Judgement:
    if baseline is None or upgraded is None:
        return Judgement(False, [], "no services were booted, so nothing shows what it did")
    package = finding.subject
    modules = [m.split(": ", 1) for m in finding.details.get("web_modules") or []]
    services = finding.details.get("enabled_services") or []
    if not modules and not services:
        return Judgement(False, [], "it ships neither a module nor a service the rehearsal can watch")
    seen: list[str] = []
    after_states = [upgraded] + ([rebooted] if rebooted else [])
    kinds = {kind for kind, _ in modules}
    if "nginx" in kinds:
        return Judgement(False, [], "it ships an nginx module, and nginx lists no loaded modules to compare")
    if "apache" in kinds:
        test = baseline.config_tests.get("apache2ctl -M")
        if test is None or "modules" not in test:
            return Judgement(False, [], "Apache's modules were not listed before the upgrade")
        for name in sorted(apache_modules(root, [path for kind, path in modules if kind == "apache"])):
            if name not in test["modules"]:
                continue  # not enabled: nothing used it
            for state in after_states:
                if name not in (state.config_tests.get("apache2ctl -M") or {}).get("modules", []):
                    return Judgement(False, seen, f"Apache no longer loads {name}")
            seen.append(f"{name} still loads")
    if "php" in kinds:
        test = baseline.config_tests.get("php -m")
        if test is None or "modules" not in test:
            return Judgement(False, [], "PHP's extensions were not listed before the upgrade")
        for name in sorted(php_extensions([path for kind, path in modules if kind == "php"])):
            if not _loaded(name, test["modules"]):
                continue
            for state in after_states:
                if not _loaded(name, (state.config_tests.get("php -m") or {}).get("modules", [])):
                    return Judgement(False, seen, f"PHP no longer loads {name}")
            seen.append(f"PHP's {name} still loads")
    for unit in services:
        if unit.startswith("/etc/init.d/") or baseline.units.get(unit, {}).get("active") != "active":
            if unit.startswith("/etc/init.d/"):
                return Judgement(False, seen, f"{unit} is an init script the rehearsal does not watch")
            continue  # not running before: nothing depended on it running
        # The replacement's unit: one of the same name (it ships the unit now), else one renamed with the package.
        same = all(
            (state.units.get(unit, {}).get("load"), state.units.get(unit, {}).get("active")) == ("loaded", "active")
            for state in after_states
        )
        new_unit = unit if same else _renamed_unit(unit, package, replacement)
        if new_unit is None:
            return Judgement(False, seen, f"{replacement} has no unit in place of {unit}")
        for state in after_states:
            if state.units.get(new_unit, {}).get("active") != "active":
                return Judgement(False, seen, f"{new_unit} does not run in place of {unit}")
        seen.append(f"{new_unit} runs in place of {unit}")
    # The pages it served: any, for a web server's module; those on the ports its services held, else.
    own_ports = {s["port"] for s in baseline.sockets if s.get("unit") in services}
    served = [key for key in baseline.http if modules or int(key.split("/", 1)[0]) in own_ports]
    pages = [f for f in findings if _breaks_what_it_served(f, bool(modules), own_ports)]
    if pages:
        return Judgement(False, seen, pages[0].message)
    if served:
        seen.append("the site answers the same" if len(served) == 1 else "the sites answer the same")
    if not seen:
        seen.append("nothing it ships was in use")
    return Judgement(True, seen)


def replacement_in(removal: Finding, installing: set[str]) -> str | None:
    """What the transaction installs in the removed package's place: the
    archive's likely replacement when the transaction has it, else a package
    of the same name with another version in it (rh-app1 -> rh-app2)."""
    suggested = removal.details.get("replacement")
    if suggested in installing:
        return suggested
    pattern = replacement_pattern(removal.subject)
    found = sorted(name for name in installing if pattern and pattern.match(name) and name != removal.subject)
    return found[-1] if found else None


def _breaks_what_it_served(finding: Finding, web_modules: bool, own_ports: set[int]) -> bool:
    kinds = set(finding.kinds)
    if "Dangling-Socket" in kinds:
        return True  # a web server's configuration names a socket that is gone
    if kinds & set(PAGE_KINDS):
        return web_modules or finding.details.get("port") in own_ports
    return False


def judge_removals(
    transaction: Transaction,
    findings: list[Finding],
    baseline: Observation | None,
    upgraded: Observation | None,
    rebooted: Observation | None,
) -> None:
    """Turn each removal whose replacement works into a Remove-Replaced
    warning; say in the others' details why they stay."""
    installing = {c.package for c in transaction.by_action(*INSTALLING_ACTIONS)}
    for finding in findings:
        if finding.check != "removal" or not set(finding.kinds) & set(JUDGED_KINDS):
            continue
        replacement = replacement_in(finding, installing)
        if replacement is None:
            continue
        judgement = judge(finding, replacement, transaction.root, findings, baseline, upgraded, rebooted)
        finding.details["judged"] = {
            "replacement": replacement,
            "clean": judgement.clean,
            "seen": judgement.seen,
            "why_not": judgement.why_not,
        }
        if judgement.clean:
            finding.kinds = ["Remove", "Remove-Replaced"]
            head = finding.message.split(" (", 1)[0]
            finding.message = f"{head} (replaced by {replacement}: {', '.join(judgement.seen)})"
            _replaced_units(finding, replacement, findings)
        else:
            finding.message += f"; {replacement} is in the transaction, but {judgement.why_not}"


def _replaced_units(removal: Finding, replacement: str, findings: list[Finding]) -> None:
    """The removed package's own services are gone with it: where the
    replacement's unit runs in their place, that is the same judgement."""
    for finding in findings:
        if "Service-Failed" not in finding.kinds or finding.subject not in (
            removal.details.get("enabled_services") or []
        ):
            continue
        after = finding.details.get("after")
        if after is not None and after.get("load") != "not-found":
            continue  # still there and failed: not a rename
        new_unit = _renamed_unit(finding.subject, removal.subject, replacement) or finding.subject
        finding.kinds = ["Remove-Replaced"]
        finding.message = f"{finding.subject} is gone with {removal.subject} {finding.details.get('when', '')}; {new_unit} runs in its place"
