"""Findings about the system under the packages: libraries, the boot chain,
conffiles in detail, and what a release upgrade leaves behind.

Pure functions of the replay's observations (taken inside the sandbox before
and after apt ran) and facts read from the target beforehand.
"""

from __future__ import annotations

from typing import Any

from apt_rehearse.model.hazard_facts import BootState, HazardFacts
from apt_rehearse.model.policy import Finding
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, REMOVING_ACTIONS, Transaction

LIST_LIMIT = 12


def lost_library_findings(
    transaction: Transaction, losses: list[dict[str, Any]], owners: dict[str, str]
) -> list[Finding]:
    """A program or module that finds a library before the run and not after it
    (``losses`` from libraries.lost_libraries; ``owners``: library file -> package)."""
    findings = []
    removed = {c.package for c in transaction.by_action(*REMOVING_ACTIONS)}
    upgraded = {c.package for c in transaction.by_action(*INSTALLING_ACTIONS)}
    for loss in losses:
        owner = owners.get(loss["was"])
        if owner in removed:
            came = f"; it came from {owner}, which is removed"
        elif owner in upgraded:
            came = f"; it came from {owner}, whose new version no longer provides it"
        elif owner:
            came = f"; it came from {owner}"
        else:
            came = f"; it was {loss['was']}"
        via = "" if loss["needed_by"] == loss["object"] else f" (needed by {loss['needed_by']})"
        findings.append(
            Finding(
                "library",
                ["Lost-Library"],
                loss["object"],
                f"{loss['object']}: {loss['soname']} not found after the upgrade{via}{came}",
                {**loss, "package": owner, "package_removed": owner in removed},
            )
        )
    return findings


def boot_findings(transaction: Transaction, hazards: HazardFacts) -> list[Finding]:
    before, after = hazards.before.boot, hazards.after.boot
    findings = []
    for call in hazards.recorded_commands:
        origin = " ".join(w for w in (call["package"], call["script"]) if w)
        findings.append(
            Finding(
                "boot",
                ["Boot-Command"],
                call["command"].split()[0],
                f"would run {call['command']}"
                + (f" (from {origin})" if origin else "")
                + "; recorded in the rehearsal, not run against this machine's disks or firmware",
                dict(call),
            )
        )
    if after.generator:
        for version, kernel in sorted(after.kernels.items()):
            then = before.kernels.get(version)
            if kernel["initrd"] and kernel["initrd_bytes"]:
                continue
            if then is not None and not (then["initrd"] and then["initrd_bytes"]):
                continue  # already without an initramfs: not this run's doing
            what = "was removed" if then is not None else "was not built"
            if kernel["initrd"] and not kernel["initrd_bytes"]:
                what = "is empty"
            findings.append(
                Finding(
                    "boot",
                    ["Boot-Chain"],
                    f"/boot/initrd.img-{version}",
                    f"kernel {version}: its initramfs /boot/initrd.img-{version} {what} "
                    f"({after.generator}); the machine may not boot it",
                    {"version": version, "kernel": kernel, "generator": after.generator},
                )
            )
    broken_before = {(r["config"], r["path"]) for r in before.references if not r["exists"]}
    for reference in after.references:
        if reference["exists"] or (reference["config"], reference["path"]) in broken_before:
            continue
        findings.append(
            Finding(
                "boot",
                ["Boot-Chain"],
                reference["config"],
                f"{reference['config']} names the {reference['kind']} {reference['path']}, "
                "which would not exist after the upgrade",
                dict(reference),
            )
        )
    for link, state in sorted(after.links.items()):
        if not state["exists"] and before.links.get(link, {}).get("exists", True):
            findings.append(
                Finding(
                    "boot",
                    ["Boot-Chain"],
                    link,
                    f"{link} would point to {state['target']}, which does not exist",
                    {"link": link, **state},
                )
            )
    findings += _init_findings(transaction, before, after)
    return findings


def _init_findings(transaction: Transaction, before: BootState, after: BootState) -> list[Finding]:
    """A system that boots a kernel of its own and is left with no init to
    start. One without kernels in /boot (a container, a VM started with a
    kernel from outside) is not judged: what it runs as PID 1 is not ours to know."""
    if not before.kernels or not before.init.get("exists") or after.init.get("exists", True):
        return []
    removed = sorted(c.package for c in transaction.by_action(*REMOVING_ACTIONS))
    target = after.init.get("target")
    what = "is gone" if target in (None, after.init["path"]) else f"points to {target}, which does not exist"
    return [
        Finding(
            "boot",
            ["Boot-Chain"],
            after.init["path"],
            f"{after.init['path']} {what} after the upgrade: the next boot finds no init to start, "
            "at best the kernel's fallback shell on the console"
            + (f" (removed: {', '.join(removed[:LIST_LIMIT])})" if removed else ""),
            {"before": before.init, "after": after.init, "removed": removed},
        )
    ]


def boot_summary(hazards: HazardFacts) -> dict[str, Any]:
    after = hazards.after.boot
    return {
        "generator": after.generator,
        "kernels": {
            v: {"initrd_bytes": k["initrd_bytes"], "kernel_bytes": k["kernel_bytes"]} for v, k in after.kernels.items()
        },
        "references": after.references,
        "recorded_commands": hazards.recorded_commands,
        "recorder_refused": hazards.recorder_refused,
    }


def conffile_detail_findings(leftovers: list[dict[str, Any]], findings: list[Finding]) -> list[Finding]:
    """Enrich dpkg's prompts with the diff; add ucf's, which no checksum predicts.

    ``findings`` are the conffile findings already made from dpkg's checksums
    and output; they get the diff and the file the real run leaves behind.
    """
    by_path = {f.details.get("path"): f for f in findings if f.check == "conffile"}
    new = []
    for row in leftovers:
        summary = {
            k: row.get(k) for k in ("leftover", "tool", "added", "removed", "diff", "diff_truncated", "replaced_lines")
        }
        finding = by_path.get(row["path"])
        if finding is not None:
            finding.details.update(summary)
            finding.message += _leaves(row)
            continue
        if row["tool"] == "ucf":
            package = row.get("ucf_package") or "?"
            # ucf asks through debconf: an unattended run takes its default and
            # does not hang, so this stays a warning even then.
            new.append(
                Finding(
                    "conffile",
                    ["Conffile-Prompt"],
                    package,
                    f"{row['path']}: changed locally and by the new {package}; ucf will ask which to keep"
                    + _leaves(row),
                    {"path": row["path"], "package": package, **summary},
                )
            )
        else:
            new.append(
                Finding(
                    "conffile",
                    ["Conffile-Left"],
                    row["path"],
                    f"{row['path']}: the run leaves {row['leftover']}" + _counts(row),
                    {"path": row["path"], **summary},
                )
            )
    return new


def _counts(row: dict[str, Any]) -> str:
    if row.get("added") is None:
        return ""
    return f" (+{row['added']} -{row['removed']} lines; the diff is in the saved report)"


def _leaves(row: dict[str, Any]) -> str:
    if row["suffix"].endswith("-dist"):
        return f"; keeping yours, the run leaves the new version as {row['leftover']}{_counts(row)}"
    return f"; the run installs the new version and keeps yours as {row['leftover']}{_counts(row)}"


def release_findings(hazards: HazardFacts) -> list[Finding]:
    findings = []
    obsolete = hazards.obsolete
    if obsolete:
        findings.append(
            Finding(
                "release",
                ["Obsolete"],
                "obsolete",
                f"{len(obsolete)} package(s) stay installed that no source offers any more: " + _short(obsolete),
                {"packages": obsolete},
            )
        )
    before = set(hazards.before.autoremovable or [])
    became = sorted(set(hazards.after.autoremovable or []) - before)
    if became:
        findings.append(
            Finding(
                "release",
                ["Auto-Removable"],
                "autoremove",
                f"{len(became)} package(s) become auto-removable ('apt autoremove' would remove them): "
                + _short(became),
                {"packages": became},
            )
        )
    return findings


def _short(names: list[str]) -> str:
    return ", ".join(names[:LIST_LIMIT]) + (f" and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else "")


KERNEL_APPLIERS = {"sysctl": "systemd-sysctl", "modules": "systemd-modules-load", "binfmt": "systemd-binfmt"}


def kernel_findings(rows: list[dict[str, Any]], owners: dict[str, str]) -> list[Finding]:
    """What the upgrade would change in the kernel at the next boot: never applied
    in the sandbox, reported (``rows``: kernel_settings.changes with "running";
    ``owners``: file -> the package that ships it)."""
    findings = []
    for row in rows:
        kind, key, value, now = row["kind"], row["key"], row["value"], row["running"]
        package = owners.get(row["file"])
        source = f"{row['file']}, from {package}," if package else f"{row['file']} (which no package ships)"
        when = f"at the next boot or restart of {KERNEL_APPLIERS[kind]}"
        if kind == "sysctl":
            if value is None:
                message = (
                    f"the upgrade no longer sets {key} ({_now(now)}), which {source} set to {row['was']}: "
                    "from the next boot on, the kernel's default applies"
                )
            else:
                state = "as now" if now is not None and now == value else _now(now)
                if row["was"] is not None:
                    state += f"; configured {row['was']} until now"
                message = f"the upgrade sets {key} = {value} ({state}) through {source} {when}"
        elif kind == "modules":
            if value is None:
                message = (
                    f"the upgrade no longer loads the kernel module {key} at boot ({now} now), "
                    f"which {source} listed"
                )
            else:
                message = f"the upgrade loads the kernel module {key} ({now} now) through {source} {when}"
        else:
            state = f"{now} now" if now else "binfmt_misc is not mounted now"
            if value is None:
                message = (
                    f"the upgrade no longer registers the binary format {key} at boot ({state}), " f"which {source} did"
                )
            else:
                if row["was"] is not None:
                    state += "; another rule until now"
                interpreter = f" for {row['interpreter']}" if row.get("interpreter") else ""
                message = (
                    f"the upgrade registers the binary format {key}{interpreter} ({state}) " f"through {source} {when}"
                )
        findings.append(Finding("kernel", ["Kernel-Settings"], key, message, {**row, "package": package}))
    return findings


def _now(running: str | None) -> str:
    return "the running value cannot be read" if running is None else f"now {running}"
