"""Run one rehearsal: sandbox, replay, checks, verdict.

The CLI and the apt hook both hand a Transaction to ``rehearse()`` and get a
Rehearsal back; neither knows how the sandbox works.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import sys
import time
from typing import Any, Callable

from apt_rehearse.checks import state as checks
from apt_rehearse.checks import hazards as hazard_checks
from apt_rehearse.checks.problems import problems_of
from apt_rehearse.checks.removals import judge_removals
from apt_rehearse.checks.downtime import findings as downtime_findings
from apt_rehearse.checks.downtime import forecast as forecast_downtime
from apt_rehearse.checks.downtime import host_seconds as downtime_host_seconds
from apt_rehearse.inside.downtime import probe_targets
from apt_rehearse.checks.services import service_findings
from apt_rehearse.fronts.progress import Progress
from apt_rehearse.inside import bootchain
from apt_rehearse.inside import facts
from apt_rehearse.inside import kernel_settings
from apt_rehearse.inside.libraries import lost_libraries, summary as library_summary
from apt_rehearse.inside.observe import observe, settle, wait_ready
from apt_rehearse.inside.replay import ReplayPlan, replay_inside, scan_before
from apt_rehearse.model.clock import PhaseClock
from apt_rehearse.model.config import Settings
from apt_rehearse.model.downtime import forecast_range as downtime_range
from apt_rehearse.model.errors import RehearsalError, RehearsalLimit, UnsupportedSystem, from_kind
from apt_rehearse.model.hazard_facts import HazardFacts
from apt_rehearse.model.observation import Observation
from apt_rehearse.model.policy import Finding, apply_policy, verdict
from apt_rehearse.model.rehearsal import Rehearsal
from apt_rehearse.model.replay_result import ReplayResult
from apt_rehearse.plan import system_class
from apt_rehearse.plan.fixes import add_archive_fixes
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, REMOVING_ACTIONS, Transaction
from apt_rehearse.sandbox import janitor
from apt_rehearse.sandbox import snapshots
from apt_rehearse.sandbox.boot import HELD_BACK, BootedSandbox, find_init
from apt_rehearse.sandbox.cgroups import SandboxCgroup, cgroup2_mount
from apt_rehearse.sandbox.forked import ForkedCall
from apt_rehearse.sandbox.mountinfo import read_mountinfo, state_submounts
from apt_rehearse.sandbox.namespaces import (
    INSIDE_SHARE,
    SandboxRunner,
    SandboxSpec,
    check_supported,
    cleanup_upper_dir,
    plan_sandbox,
)
from apt_rehearse.sandbox.upper_place import (
    disk_room_problem,
    free_and_size,
    host_reserve,
    read_meminfo,
    upper_fits_in_memory,
)
from apt_rehearse.store import housekeeping, report, textfile, verdict_cache
from apt_rehearse.store.elf_table import load_elf_table, save_elf_table

CONF_FORCE_OPTIONS = ("--force-confold", "--force-confnew", "--force-confdef", "--force-confmiss", "--force-confask")


def _replay_options(transaction: Transaction, extra: list[str]) -> list[str]:
    options = list(extra)
    dpkg_options = transaction.apt_config.get("DPkg::Options", [])
    if not any(option.startswith(CONF_FORCE_OPTIONS) for option in dpkg_options):
        # Without a --force-conf* option the real run would stop at a conffile
        # prompt; the replay keeps the sysadmin's file and reports the prompt.
        options += ["Dpkg::Options::=--force-confdef", "Dpkg::Options::=--force-confold"]
    return options


def _remove_stale_uppers(base: str) -> None:
    """Disk uppers of rehearsals that were killed: their pid is gone."""
    if not os.path.isdir(base):
        return
    for name in os.listdir(base):
        pid_text = name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and not os.path.exists(f"/proc/{pid_text}"):
            cleanup_upper_dir(os.path.join(base, name))


def _choose_upper(transaction: Transaction, settings: Settings) -> str | None:
    packed = sum(os.path.getsize(c.deb) for c in transaction.changes if c.deb and os.path.exists(c.deb))
    unpacked = packed * 3  # unpacked trees are roughly three times their .debs
    if settings.upper_dir:
        base = settings.upper_dir
    elif upper_fits_in_memory(unpacked, settings, read_meminfo()):
        return None
    else:
        base = settings.disk_upper_base
    problem = disk_room_problem(unpacked, *free_and_size(base))
    if problem:
        raise RehearsalLimit(
            f"no room for the rehearsal's upper layer in {base}: {problem}; point "
            "APT::Rehearse::Upper-Dir at a file system with room, or raise APT::Rehearse::Tmpfs-Size"
        )
    os.makedirs(base, mode=0o700, exist_ok=True)
    _remove_stale_uppers(base)
    path = os.path.join(base, f"{transaction.identity[:12]}-{os.getpid()}")
    janitor.after_death(functools.partial(cleanup_upper_dir, path))  # also when this process is killed
    os.makedirs(path, mode=0o700)
    return path


def _gather_facts(transaction: Transaction) -> tuple[dict[str, facts.RemovalFacts], list[facts.ConffilePrompt]]:
    root = transaction.root
    removal = {c.name: facts.removal_facts(root, c.package, c.arch) for c in transaction.by_action(*REMOVING_ACTIONS)}
    prompts: list[facts.ConffilePrompt] = []
    installed = facts.installed_conffiles(root)
    for change in transaction.by_action("upgrade", "downgrade", "reinstall"):
        if change.deb:
            prompts += facts.predict_prompts(root, change.package, change.arch, change.deb, installed)
    return removal, prompts


def rehearse(
    transaction: Transaction,
    settings: Settings,
    progress: Progress,
    lookup: Callable[[str, str], str],
    extra_apt_options: list[str] | None = None,
    private_lists: str | None = None,
    sources_rewrite: dict[str, str] | None = None,
    debug: Callable[[str], None] | None = None,
    clock: PhaseClock | None = None,
    unattended: bool = False,
    shell: bool = False,
    unavailable_sources: dict[str, str] | None = None,
    source_cache: str | None = None,
    config_fixes: list[dict[str, Any]] | None = None,
) -> Rehearsal:
    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.monotonic()
    clock = clock or PhaseClock()
    source_findings = _source_findings(transaction, unavailable_sources or {})
    if transaction.is_empty:
        apply_policy(source_findings, lookup)
        return Rehearsal(
            transaction,
            source_findings,
            verdict(source_findings),
            started,
            round(time.monotonic() - began, 3),
            clock.phases,
            notes=["nothing to rehearse: the transaction changes no package"],
            problems=problems_of(source_findings, transaction),
        )
    check_supported()
    if not os.path.isdir(transaction.root):
        raise RehearsalError(f"the target root {transaction.root} is not a directory")

    binds, deb_paths, lists_inside, cache_inside = _binds(transaction, private_lists, source_cache)

    notes: list[str] = []
    init = _services_init(transaction, settings, shell, notes)
    upper_dir = _choose_upper(transaction, settings)
    observations: dict[str, Any] = {}
    # The host's facts are read beside the sandbox, on the core dpkg leaves
    # idle: niced, so that they never hold up dpkg and the scans before it.
    facts_call = ForkedCall(_gather_facts, transaction, niceness=10)
    taken: list[snapshots.Snapshot] = []
    try:
        taken, lower_note = _still_lowers(transaction.root, settings, debug)
        if lower_note:
            notes.append(lower_note)
        spec = SandboxSpec(
            root=transaction.root,
            tmpfs_size=settings.tmpfs_size,
            upper_dir=upper_dir,
            read_only_binds=binds,
            hostname=_hostname(transaction.root),
            boot=init is not None,
            lowers={snap.source: snap.path for snap in taken},
            live_layers=[os.path.join(snap.source, nested) for snap in taken for nested in snap.nested],
        )
        plan = plan_sandbox(spec)
        _debug_plan(plan, init, debug)
        replay_plan = ReplayPlan(
            transaction=transaction,
            deb_paths=deb_paths,
            apt_options=_replay_options(transaction, extra_apt_options or []),
            timeout=settings.timeout,
            private_lists=lists_inside,
            source_cache=cache_inside,
            sources_rewrite=sources_rewrite or {},
            services_live=init is not None,
            library_dirs=settings.library_paths,
            release_upgrade=bool(sources_rewrite or private_lists),
            grub_probe_answers=_grub_probe_answers(transaction, clock),
            elf_known=load_elf_table(settings.cache_dir),
            room_floor=host_reserve(free_and_size(upper_dir)[1]) if upper_dir else None,
            config_fixes=config_fixes or [],
        )
        if init:
            raw, observations = _run_booted(
                plan, init, replay_plan, progress, clock, settings, transaction.identity, shell
            )
            if observations.get("not_rebooted"):
                notes.append(observations["not_rebooted"])
        else:
            raw = _run(SandboxRunner(spec, plan), replay_plan, progress, clock)
        # What crossed the sandbox's boundary as JSON, typed once.
        result = ReplayResult.from_json(raw)
        if debug and result.source_cache:
            debug(f"replay: apt inside {result.source_cache} the release's prepared srcpkgcache.bin")
        with clock.timed("facts"):  # what is left of it: the wait
            removal_facts, predicted_prompts = facts_call.result()
    finally:
        facts_call.cancel()
        progress.done()
        if upper_dir:
            cleanup_upper_dir(upper_dir)
        for snap in taken:
            snapshots.delete(snap.path)

    _stop_if_out_of_room(result, upper_dir, settings, replay_plan.room_floor)
    for fix in result.config_fixes:
        if fix["applied"]:
            notes.append(
                f"--fix: {fix['path']} line {fix['line']} was changed in the rehearsed copy only, as its diff says"
            )
        else:
            notes.append(f"--fix: {fix['path']} line {fix['line']} was not changed: {fix.get('why', '')}")
    with clock.timed("checks"):
        # The booted services' observations, typed once (the report keeps their JSON).
        typed = {
            phase: Observation.from_json(observations[phase]) if observations.get(phase) else None
            for phase in ("baseline", "upgraded", "rebooted")
        }
        downtime = forecast_downtime(result.watched, result.apt.status_lines, result.apt.status_times)
        findings, disk = _analyse(
            transaction,
            settings,
            result,
            (removal_facts, predicted_prompts),
            typed,
            source_findings,
            unattended,
            notes,
        )
        interval = float((result.watched or {}).get("interval") or 0.1)
        findings += downtime_findings(
            downtime, settings.downtime_slowdown, interval, settings.downtime_max, settings.downtime_max_units
        )
        apply_policy(findings, lookup)
        problems = problems_of(findings, transaction, typed["baseline"])
        add_archive_fixes(problems, transaction, settings.cache_dir, notes)
    return Rehearsal(
        transaction=transaction,
        findings=findings,
        problems=problems,
        verdict=verdict(findings),
        started=started,
        duration_s=round(time.monotonic() - began, 3),
        phases=clock.phases,
        upper_bytes=result.upper_bytes,
        notes=notes,
        sandbox_plan=plan.describe(),
        replay_log=result.apt.log(),
        observations=observations,
        disk=disk,
        hazards=_hazard_figures(result.hazards),
        replay_parts=result.timings,
        config_fixes=result.config_fixes,
        downtime=[entry.to_json(settings.downtime_slowdown, interval) for entry in downtime],
        downtime_watch=_watch_summary(result.watched, downtime, settings.downtime_slowdown),
    )


def _watch_summary(watched: dict[str, Any] | None, entries: list[Any], slowdown: float) -> dict[str, Any] | None:
    """How the downtime was watched, and the host's own: at least one service out."""
    if not watched:
        return None
    interval = float(watched.get("interval") or 0.1)
    total = downtime_host_seconds(entries)
    return {
        "interval_s": interval,
        "seconds": watched.get("seconds"),
        "targets": len(watched.get("targets") or []),
        "samples": sum(int(t.get("samples") or 0) for t in watched.get("targets") or []),
        "slowdown": slowdown,
        "host_seconds": total,
        "host_forecast_s": list(downtime_range(total, slowdown, interval)) if total else [0.0, 0.0],
    }


def _source_findings(transaction: Transaction, unavailable: dict[str, str]) -> list[Finding]:
    return [
        Finding(
            "release",
            ["Source-Missing"],
            source,
            f"{source} offers nothing for {transaction.release or 'the target release'}: what this system has "
            f"from it stays as it is, neither upgraded nor rehearsed (apt: {why})",
            {"apt": why},
        )
        for source, why in sorted(unavailable.items())
    ]


def _grub_probe_answers(transaction: Transaction, clock: PhaseClock) -> dict[str, Any]:
    """This machine's own grub-probe answers, for a rehearsal of / that
    installs a bootloader: the sandbox has no disks to probe."""
    with clock.timed("facts"):
        installing = [c.package for c in transaction.by_action(*INSTALLING_ACTIONS)]
        if os.path.realpath(transaction.root) == "/" and bootchain.needs_grub_probe(installing):
            return bootchain.capture_grub_probe()
    return {}


def _debug_plan(plan: Any, init: str | None, debug: Callable[[str], None] | None) -> None:
    if not debug:
        return
    for line in plan.describe():
        debug(f"sandbox: {line}")
    if init:
        debug(f"sandbox: boot {init} as PID 1 of the sandbox, services held back: {', '.join(HELD_BACK)}, all timers")


def _binds(
    transaction: Transaction, private_lists: str | None, source_cache: str | None
) -> tuple[dict[str, str], dict[str, str], str | None, str | None]:
    """What the sandbox binds read-only (host directory -> inside path), the
    .debs' inside paths, and where the --release lists and apt cache appear."""
    # Every directory holding .debs is bound read-only inside the sandbox.
    deb_dirs: dict[str, str] = {}
    deb_paths: dict[str, str] = {}
    for change in transaction.changes:
        if change.action in INSTALLING_ACTIONS:
            if not change.deb or not os.path.isfile(change.deb):
                raise RehearsalError(f"the .deb for {change.name} {change.to_version} is missing: {change.deb}")
            directory = os.path.dirname(os.path.realpath(change.deb))
            inside = deb_dirs.setdefault(directory, f"{INSIDE_SHARE}/debs/{len(deb_dirs)}")
            deb_paths[change.name] = f"{inside}/{os.path.basename(change.deb)}"
    binds = dict(deb_dirs)
    lists_inside = None
    if private_lists:
        lists_inside = f"{INSIDE_SHARE}/lists"
        binds[private_lists] = lists_inside
    cache_inside = None
    if private_lists and source_cache:
        binds[os.path.dirname(source_cache)] = f"{INSIDE_SHARE}/aptcache"
        cache_inside = f"{INSIDE_SHARE}/aptcache/{os.path.basename(source_cache)}"
    return binds, deb_paths, lists_inside, cache_inside


def _services_init(transaction: Transaction, settings: Settings, shell: bool, notes: list[str]) -> str | None:
    """The init to boot, or None when services are not rehearsed (said in notes)."""
    init = None
    if settings.services:
        init = find_init(transaction.root)
        if init is None:
            notes.append(
                f"services are not rehearsed: {transaction.root} does not boot with systemd "
                "(a container, or another init); only the packages were rehearsed"
            )
        elif cgroup2_mount() is None:
            init = None
            notes.append(
                "services are not rehearsed: no cgroup2 hierarchy is mounted here for the booted "
                "system; only the packages were rehearsed"
            )
    else:
        notes.append('services are not rehearsed (--no-services / APT::Rehearse::Services "false")')
    if shell and init is None:
        raise UnsupportedSystem(
            "'apt-rehearse shell' needs a system that boots with systemd, and services on "
            "(" + (notes[-1] if notes else "no init") + ")"
        )
    return init


def _stop_if_out_of_room(
    result: ReplayResult, upper_dir: str | None, settings: Settings, room_floor: int | None
) -> None:
    """Running out of room is the rehearsal's limit, never a finding against a package."""
    stopped_at = result.apt.stopped_for_room
    if stopped_at is not None:
        raise RehearsalLimit(
            f"the rehearsal was stopped: its disk upper in {os.path.dirname(upper_dir or '')} had left only "
            f"{stopped_at / 1e6:.0f} MB free there, less than the {(room_floor or 0) / 1e6:.0f} MB the "
            "host keeps for its own services; this says nothing about the packages. Point "
            "APT::Rehearse::Upper-Dir at a file system with more room"
        )
    if checks.out_of_room(result):
        where = (
            f"the disk upper in {os.path.dirname(upper_dir)}"
            if upper_dir
            else f"its tmpfs upper (size {settings.tmpfs_size})"
        )
        raise RehearsalLimit(
            f"the rehearsal ran out of room in {where}; this says nothing about the packages. "
            "Give it more with -o APT::Rehearse::Tmpfs-Size=... or -o APT::Rehearse::Upper-Dir=/var/tmp/DIR"
        )


def _analyse(
    transaction: Transaction,
    settings: Settings,
    result: ReplayResult,
    host_facts: tuple[Any, Any],
    typed: dict[str, Observation | None],
    source_findings: list[Finding],
    unattended: bool,
    notes: list[str],
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Observations in, findings out (the verdict is the policy's), and the disk figures."""
    removal_facts, predicted_prompts = host_facts
    findings = source_findings + checks.removal_findings(transaction, removal_facts)
    findings += checks.state_findings(transaction, result, settings.timeout)
    dpkg_options = transaction.apt_config.get("DPkg::Options", [])
    nobody_answers = unattended and not any(o.startswith(CONF_FORCE_OPTIONS) for o in dpkg_options)
    findings += checks.conffile_findings(predicted_prompts, result.apt.output, nobody_answers)
    hazards = result.hazards
    if hazards:
        libraries_before, libraries_after = hazards.before.libraries, hazards.after.libraries
        save_elf_table(settings.cache_dir, libraries_before, libraries_after)
        findings += hazard_checks.conffile_detail_findings(hazards.conffile_leftovers, findings)
        losses = lost_libraries(libraries_before, libraries_after)
        owners = facts.owners_of(transaction.root, sorted({loss["was"] for loss in losses}))
        findings += hazard_checks.lost_library_findings(transaction, losses, owners)
        findings += hazard_checks.boot_findings(transaction, hazards)
        findings += hazard_checks.release_findings(hazards)
        findings += _kernel_findings(transaction, hazards)
        if not libraries_after.get("available", True):
            notes.append(f"shared libraries were not checked: {libraries_after.get('reason', 'unavailable')}")
        if libraries_before.get("capped"):
            notes.append(
                f"shared libraries: only the first {len(libraries_after.get('objects', {}))} programs "
                "and modules were checked (a bound on the work)"
            )
        if result.auto_marks.exit_status:
            notes.append(
                "apt-mark could not give back the automatic marks, so what becomes auto-removable may "
                "be off: " + (result.auto_marks.output.strip().splitlines() or ["no output"])[-1]
            )
        if hazards.grub_probe_unanswered:
            notes.append(
                "grub-probe was asked what this machine's grub-probe had not been asked beforehand: "
                + "; ".join(hazards.grub_probe_unanswered[:3])
            )
    disk = disk_usage(transaction.root, result.growth)
    findings += checks.disk_findings(disk)
    if typed["baseline"]:
        findings += service_findings(typed["baseline"], typed["upgraded"], typed["rebooted"])
        judge_removals(transaction, findings, typed["baseline"], typed["upgraded"], typed["rebooted"])
    return findings, disk


def _kernel_findings(transaction: Transaction, hazards: HazardFacts) -> list[Finding]:
    """The kernel settings the run changes, against what this machine's kernel runs with."""
    rows = kernel_settings.changes(hazards.before.kernel, hazards.after.kernel)
    if not rows:
        return []
    # A dropped setting's file is gone from the rehearsed tree: the target's own lists name its package.
    dropped = sorted({r["file"] for r in rows if r["value"] is None})
    owners = facts.owners_of(transaction.root, dropped) if dropped else {}
    owners.update(hazards.kernel_owners)
    return hazard_checks.kernel_findings(kernel_settings.running_now(rows), owners)


def _hazard_figures(hazards: HazardFacts | None) -> dict[str, Any]:
    if not hazards:
        return {}
    return {
        "libraries": library_summary(hazards.before.libraries, hazards.after.libraries),
        "boot": hazard_checks.boot_summary(hazards),
        "kernel": kernel_settings.summary(hazards.after.kernel),
        "conffile_leftovers": hazards.conffile_leftovers,
        "obsolete": hazards.obsolete,
        "auto_removable": hazards.after.autoremovable,
    }


def disk_usage(root: str, growth: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per real mount: what the run needs there against what it has free."""
    rows = []
    for mountpoint, measured in sorted(growth.items()):
        host_path = root if mountpoint == "/" else os.path.join(root, mountpoint.lstrip("/"))
        try:
            info = os.statvfs(host_path)
        except OSError:
            continue
        rows.append(
            {
                "mount": mountpoint,
                "host_path": host_path,
                **measured,
                # apt runs as root, which may use the blocks reserved for root: f_bfree.
                "free_bytes": info.f_bfree * info.f_frsize,
                "size_bytes": info.f_blocks * info.f_frsize,
            }
        )
    return rows


def _inside_path(root: str, host_path: str) -> str:
    return "/" if host_path == root else "/" + os.path.relpath(host_path, root)


def _still_lowers(
    root: str, settings: Settings, debug: Callable[[str], None] | None
) -> tuple[list[snapshots.Snapshot], str]:
    """Read-only snapshots of the target's btrfs subvolumes, for lowers that do
    not change under the rehearsal; and the report's note on what stays live."""
    entries = read_mountinfo()
    sources = [root] + [entry.target for entry in state_submounts(root, entries)]
    taken: list[snapshots.Snapshot] = []
    failed = ""
    if settings.snapshots and snapshots.btrfsutil():
        for source in sources:
            if snapshots.can_snapshot(source, entries):
                try:
                    taken.append(snapshots.take(source))
                except OSError as error:
                    failed = f" (a btrfs snapshot failed: {error})"
    if debug:
        for snap in taken:
            debug(
                f"sandbox: lower of {snap.source} is the read-only snapshot {snap.path}; live inside it: "
                + (", ".join(snap.nested) or "nothing")
            )
    snapped = {snap.source for snap in taken}
    live = [_inside_path(root, source) for source in sources if source not in snapped]
    live += [_inside_path(root, os.path.join(snap.source, nested)) for snap in taken for nested in snap.nested]
    if not taken:
        if root != "/":
            return [], ""
        return [], "the lower layer is the live system; files that changed during the rehearsal may differ" + failed
    note = "the lower layer of " + ", ".join(_inside_path(root, snap.source) for snap in taken)
    note += " is a read-only btrfs snapshot taken as the rehearsal began"
    if live:
        note += f"; {', '.join(sorted(live))} stayed live: files that changed there during the rehearsal may differ"
    return taken, note + failed


def _hostname(root: str) -> str | None:
    try:
        with open(os.path.join(root, "etc/hostname"), encoding="utf-8") as handle:
            name = handle.read().strip()
            return name or None
    except OSError:
        return None


def _run(runner: SandboxRunner, replay_plan: ReplayPlan, progress: Progress, clock: PhaseClock) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    setup_started = time.monotonic()
    phase_started = setup_started
    current = "sandbox"
    for event in runner.run(functools.partial(replay_inside, replay_plan)):
        kind = event.get("kind")
        if kind == "phase":
            clock.add(current, time.monotonic() - phase_started)
            current, phase_started = event["name"], time.monotonic()
            progress.phase(event["name"])
        elif kind == "progress":
            progress.update(event["percent"], event["message"])
        elif kind == "result":
            result = event["result"]
        elif kind == "error":
            error = event
    clock.add(current, time.monotonic() - phase_started)
    if error is not None:
        raise from_kind(error.get("error"), error.get("message", "").strip(), "the sandbox failed: ")
    if result is None:
        raise RehearsalError("the sandbox ended without a result (killed? out of memory?)")
    return result


def _inside(booted: BootedSandbox, function: Callable[..., dict[str, Any]], progress: Progress) -> dict[str, Any]:
    """Run one function beside the booted services; its result or one clear error."""
    result = None
    for event in booted.run_inside(function):
        kind = event.get("kind")
        if kind == "progress":
            progress.update(event["percent"], event["message"])
        elif kind == "phase":
            progress.phase(event["name"])
        elif kind == "result":
            result = event["result"]
        elif kind == "error":
            raise from_kind(None, event.get("message", ""), "inside the booted sandbox: ")
    if result is None:
        raise RehearsalError("a process inside the booted sandbox ended without a result (killed? out of memory?)")
    return result


def _run_booted(
    plan,
    init: str,
    replay_plan: ReplayPlan,
    progress: Progress,
    clock: PhaseClock,  # noqa: ANN001
    settings: Settings,
    identity: str,
    shell: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Boot, observe, upgrade with the services live, observe, reboot, observe."""
    booted = BootedSandbox(
        plan,
        init,
        SandboxCgroup(identity[:12], settings.memory_max, settings.cpu_weight, settings.io_weight),
        settings.boot_timeout,
    )
    observations: dict[str, Any] = {}

    def observe_now(channel: object, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
        ready = wait_ready(settings.ready_timeout, baseline)
        return {**observe(settings.http_urls), "ready": ready}

    def settle_now(channel: object) -> dict[str, Any]:
        return settle(settings.boot_timeout)

    def scan_and_settle(channel: object) -> dict[str, Any]:
        # The hazard scans read files no boot changes: taken while the boot
        # settles (a PostgreSQL alone takes 2 s), not after it.
        started = time.monotonic()
        hazards = scan_before(replay_plan)
        settled = settle(settings.boot_timeout)
        # The boot's own time to settle, from when it began, the scan or not.
        return {**settled, "seconds": round(time.monotonic() - started, 3), "hazards_before": hazards}

    try:
        with clock.timed("sandbox"):
            booted.start()
        observations["cgroup"] = {"path": booted.cgroup.path, "systemd_scope": booted.cgroup.scope}
        progress.phase("booting the rehearsed system")
        with clock.timed("boot"):
            booted.boot()
            early = not replay_plan.release_upgrade
            observations["boot"] = _inside(booted, scan_and_settle if early else settle_now, progress)
            hazards_before = observations["boot"].pop("hazards_before", None)
        with clock.timed("observe"):
            observations["baseline"] = _inside(booted, observe_now, progress)
        baseline = observations["baseline"]
        probes = [entry["probe"] for entry in (baseline.get("probes") or {}).values() if entry.get("ok")]
        replay_plan = dataclasses.replace(
            replay_plan, watch=probe_targets(baseline, probes), hazards_before=hazards_before
        )
        started = time.monotonic()
        result = _inside(booted, functools.partial(replay_inside, replay_plan, None), progress)
        clock.add("replay", time.monotonic() - started)
        with clock.timed("observe"):
            observations["settle_after_upgrade"] = _inside(booted, settle_now, progress)
            observations["upgraded"] = _inside(booted, functools.partial(observe_now, baseline=baseline), progress)
        # The copy reboots only into systemd: without an init to start (a
        # finding of the boot chain) or with another one, nothing is booted.
        next_init = _inside(booted, functools.partial(_next_init, init), progress)
        if next_init["init"] is None:
            leads = f"leads to {next_init['target']}, not systemd" if next_init["target"] else "is gone"
            observations["not_rebooted"] = (
                f"the rehearsed system was not rebooted: after the run, {init} {leads}; "
                "the services were observed after the upgrade only"
            )
        else:
            progress.phase("rebooting into the upgraded system")
            with clock.timed("reboot"):
                booted.poweroff()
                booted.boot()
                observations["reboot"] = _inside(booted, settle_now, progress)
                observations["rebooted"] = _inside(booted, functools.partial(observe_now, baseline=baseline), progress)
        measured = booted.measure()
        if shell:
            progress.done()
            _interactive_shell(booted, result, rebooted="rebooted" in observations)
        booted.poweroff(timeout=0)  # nothing to keep: no need to wait for a clean shutdown
        result["upper_bytes"] = measured["upper_bytes"]
        result["growth"] = measured["growth"]
        result["upper_free_bytes"] = measured["free"]
    finally:
        booted.stop()
    return result, observations


def _next_init(booted_init: str, channel: object) -> dict[str, Any]:
    """Inside, after the upgrade: the init the copy booted, if it still leads
    to systemd (a kernel starts the same path again; it has no fallback to
    systemd's own binary when /sbin/init is gone)."""
    target = os.path.realpath(booted_init)
    return {"init": find_init("/", (booted_init,)), "target": target if os.path.isfile(target) else None}


def _interactive_shell(booted: BootedSandbox, result: dict[str, Any], rebooted: bool) -> None:
    """The sysadmin looks around the upgraded, running system by hand."""
    import sys

    exit_status = result["apt"]["exit_status"]
    sys.stderr.write(
        "apt-rehearse: a shell in the rehearsed system, after the upgrade (apt exited "
        f"{exit_status}), {'rebooted, ' if rebooted else ''}services running, on its own loopback network.\n"
        "apt-rehearse: nothing you do here reaches this machine; leave the shell to end the rehearsal.\n"
    )
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": os.environ.get("TERM", "xterm"),
        "PS1": "(rehearsal) \\u@\\h:\\w\\$ ",
        "APT_REHEARSE": "0",
    }
    shell = "/bin/bash" if os.path.exists(os.path.join("/proc", str(booted.pid1), "root/bin/bash")) else "/bin/sh"
    booted.shell([shell, "--norc", "-i"] if shell.endswith("bash") else [shell, "-i"], env)


def conclude(
    rehearsal: Rehearsal,
    settings: Settings,
    began: float,
    *,
    record_in: str | None,
    approval: bool = False,
    known_debs: Any = None,
    used_debs: list[str] | None = None,
    release_state: str | None = None,
) -> dict[str, Any]:
    """What every front does once a rehearsal is over, in one place: the
    report built and saved; the verdict recorded in ``record_in`` so that the
    real run of this very transaction (apt-get, or each step of
    unattended-upgrades; ``approval``: the gate's whole set) is not rehearsed
    again; the .debs' hashes kept for the hook's cache hit and the next
    planning; what earlier rehearsals left pruned."""
    transaction = rehearsal.transaction
    # What makes another host rehearse the same (a fleet rehearses one per class): the system as the run found it.
    system = system_class.fingerprint(transaction.root, transaction.to_json()["changes"])
    document = report.finish(rehearsal, settings, duration_s=time.monotonic() - began, extra={"system_class": system})
    if record_in:
        verdict_cache.record(record_in, rehearsal.transaction, rehearsal.verdict, document.get("report_path"))
        if approval:
            verdict_cache.record_approval(
                record_in, rehearsal.transaction, rehearsal.verdict, document.get("report_path")
            )
    if known_debs is not None:
        known_debs.save()
    housekeeping.tidy(settings, used_debs, release_state)
    publish_metrics(settings, rehearsal.transaction.root, document)
    return document


def publish_metrics(settings: Settings, root: str, last: dict[str, Any] | None) -> None:
    """The node exporter's textfile (store/textfile). Monitoring is a reader
    of the verdict, never a reason for the rehearsal to fail: a write that
    fails is one warning line."""
    try:
        textfile.publish(settings.textfile_dir, settings.cache_dir, root, last)
    except OSError as error:
        sys.stderr.write(f"apt-rehearse: W: could not write the metrics to {settings.textfile_dir}: {error}\n")
