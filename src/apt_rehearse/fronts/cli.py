"""The apt-rehearse command: a thin click front over the library.

Errors end as one line ("E: ...") and a documented exit code; a traceback
only with --debug. With --json, stdout carries the JSON report and nothing
else.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import click

from apt_rehearse import __version__
from apt_rehearse.model.errors import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_GO,
    EXIT_UNSUPPORTED,
    EXIT_USAGE,
    RehearsalError,
    UsageError,
    one_line,
)


@dataclasses.dataclass
class Options:
    root: str = "/"
    release: str | None = None
    json_output: bool = False
    apt_options: list[str] = dataclasses.field(default_factory=list)
    debug: bool = False
    no_services: bool = False
    shell: bool = False
    also: list[str] = dataclasses.field(default_factory=list)
    fix: bool = False


def _merge(ctx: click.Context, name: str, value: Any) -> None:
    options: Options = ctx.ensure_object(Options)
    if name in ("apt_options", "also"):
        getattr(options, name).extend(value or ())
    elif name in ("json_output", "debug", "no_services", "fix"):
        setattr(options, name, getattr(options, name) or bool(value))
    elif value is not None:
        setattr(options, name, value)


def _callback(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        _merge(ctx.find_root(), name, value)

    return callback


def common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes, before or after the command name."""
    decorators = [
        click.option(
            "--root",
            metavar="DIR",
            expose_value=False,
            callback=_callback("root"),
            help="Rehearse the system tree in DIR instead of /.",
        ),
        click.option(
            "--release",
            metavar="CODENAME",
            expose_value=False,
            callback=_callback("release"),
            help="Rehearse against that release's sources (e.g. trixie).",
        ),
        click.option(
            "--json",
            "json_output",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_callback("json_output"),
            help="Write only the JSON report to stdout.",
        ),
        click.option(
            "-o",
            "--option",
            "apt_options",
            multiple=True,
            metavar="KEY=VALUE",
            expose_value=False,
            callback=_callback("apt_options"),
            help="Set an apt configuration option, as apt-get -o.",
        ),
        click.option(
            "--no-services",
            "no_services",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_callback("no_services"),
            help="Do not boot the system's services: a quick, dpkg-only rehearsal.",
        ),
        click.option(
            "--debug",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_callback("debug"),
            help="Print the sandbox plan, and tracebacks on errors.",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def also_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--also",
        "also",
        multiple=True,
        metavar="PKG",
        expose_value=False,
        callback=_callback("also"),
        help="Install PKG on top of the upgrade (e.g. a replacement the rehearsal suggested).",
    )(function)


def fix_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--fix",
        is_flag=True,
        default=None,
        expose_value=False,
        callback=_callback("fix"),
        help="Rehearse again with the problems' fixes added; say which problems they fix.",
    )(function)


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="apt-rehearse")
@common_options
def main() -> None:
    """Rehearse an apt transaction on a throw-away copy of this system.

    Exit status: 0 go (pass or warnings), 10 blocked by policy, 1 apt-rehearse
    failed, 2 usage error, 3 this system cannot be rehearsed.
    """


def _error(message: str) -> None:
    click.echo(f"E: {one_line(message)}", err=True)


def _run_request(command: str, packages: tuple[str, ...], body: Callable[..., int] | None = None) -> None:
    """Run ``body`` (the rehearsal of the request by default) with errors as one line and the documented exit codes."""
    options: Options = click.get_current_context().find_root().ensure_object(Options)
    try:
        code = (body or _rehearse_request)(command, list(packages), options)
    except RehearsalError as error:
        if options.debug:
            traceback.print_exc()
        _error(str(error))
        code = error.exit_code
    except KeyboardInterrupt:
        _error("interrupted; nothing was changed")
        code = EXIT_FAILED
    except OSError as error:
        # apt-rehearse's own files (downloads, reports, verdicts) could not be
        # written: say where and why; a read-only root cannot be rehearsed here.
        if options.debug:
            traceback.print_exc()
        where = f" {error.filename}" if error.filename else ""
        if error.errno == errno.EROFS:
            _error(
                f"cannot write{where}: the filesystem is read-only; point APT::Rehearse::Cache-Dir and "
                "APT::Rehearse::Log-Dir at a writable place (e.g. under /run)"
            )
            code = EXIT_UNSUPPORTED
        else:
            _error(f"cannot use{where}: {error.strerror or error}")
            code = EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - one line unless --debug
        if options.debug:
            traceback.print_exc()
        _error(f"internal error: {error.__class__.__name__}: {error} (run with --debug for details)")
        code = EXIT_FAILED
    sys.exit(code)


def _settings_for(options: Options, sandbox: bool = True) -> tuple[str, Any]:
    """The target root, checked, and the settings of its apt configuration."""
    from apt_rehearse.model import config
    from apt_rehearse.sandbox.namespaces import check_supported

    if sandbox:
        check_supported()
    root = os.path.realpath(options.root)
    if not os.path.isdir(root):
        raise UsageError(f"target root {options.root} does not exist or is not a directory")
    if not os.path.isfile(os.path.join(root, "var/lib/dpkg/status")):
        raise UsageError(f"{options.root} is not a Debian system (no var/lib/dpkg/status)")
    config.init_apt_config(
        root, options.apt_options + (["APT::Rehearse::Services=false"] if options.no_services else [])
    )
    settings = config.read_settings()
    for line in config.setting_warnings():
        click.echo(f"W: {one_line(line)}", err=True)
    return root, settings


def _rehearse_request(command: str, packages: list[str], options: Options) -> int:
    # Imported here so that --help and usage errors stay fast and work even
    # where python3-apt is broken.
    import apt_pkg

    from apt_rehearse.checks import verified_fixes as fixes

    began = time.monotonic()
    root, settings = _settings_for(options)
    interactive = not options.json_output and sys.stdout.isatty()
    color = interactive and not os.environ.get("NO_COLOR") and apt_pkg.config.find_b("APT::Color", True)
    # Readable by apt's _apt download user down to the archives; verdicts/
    # inside is root's alone.
    os.makedirs(settings.cache_dir, mode=0o755, exist_ok=True)
    os.chmod(settings.cache_dir, 0o755)
    state = _release_state(root, options, settings, interactive)
    # The gate's set, rehearsed and approved by the prepare service already, is not rehearsed again.
    rehearsal, document = plan_and_rehearse(
        command, packages, options, options.also, settings, state, began, reuse=command == "gate"
    )
    if rehearsal is None:
        return _reused(document, options)
    packages_to_add, config_changes = fixes.packages_to_add(document), fixes.config_fixes_to_make(document)
    offer = packages_to_add + [f"the change of {c['path']}" for c in config_changes]
    if offer and rehearsal.verdict == "block" and not options.fix and _offered(interactive, offer):
        options.fix = True
    if options.fix and offer:
        first = document
        _show(first, options, bool(color), quiet=True)
        rehearsal, document = plan_and_rehearse(
            command,
            packages,
            options,
            [*options.also, *packages_to_add],
            settings,
            state,
            time.monotonic(),
            config_changes,
            fixes.replacements_of(document),
        )
        made = [c for c in document.get("config_fixes_made") or [] if c["applied"]]
        fixes.verify(first, document, {c["path"] for c in made})
        document["fix_of"] = fixes.summary(first, command, packages, options.release, packages_to_add, made)
    elif options.fix:
        document["fix_of"] = None
    _show(document, options, bool(color))
    return EXIT_BLOCKED if rehearsal.verdict == "block" else EXIT_GO


def _release_state(root: str, options: Options, settings: Any, interactive: bool) -> Any:
    """The release's sources and lists, for --release: prepared once, for a
    rehearsal and its --fix alike."""
    if not options.release:
        return None
    from apt_rehearse.plan import release
    from apt_rehearse.store import housekeeping

    state = release.prepare(root, options.release, settings.cache_dir)
    # Whose state it is, for the housekeeping of states whose root is gone.
    housekeeping.mark_release_state(state.directory, root)
    release.use(state, interactive)
    return state


def plan_and_rehearse(
    command: str,
    packages: list[str],
    options: Options,
    also: list[str],
    settings: Any,
    state: Any,
    began: float,
    config_changes: list[dict[str, Any]] | None = None,
    replacing: dict[str, str] | None = None,
    reuse: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Plan the request and rehearse it; with ``reuse`` (the prepare
    service), a fresh verdict of the same transaction is taken instead:
    (None, {"reused": the verdict's entry, "transaction": ...})."""
    import contextlib

    from apt_rehearse.fronts.progress import Relayed, for_stream
    from apt_rehearse.plan import planner, release
    from apt_rehearse.rehearse import PhaseClock
    from apt_rehearse.sandbox.forked import ForkedCall
    from apt_rehearse.store import deb_hashes

    root = os.path.realpath(options.root)
    interactive = not options.json_output and sys.stdout.isatty()
    progress = for_stream(sys.stdout, quiet=not interactive)
    clock = PhaseClock()
    request = planner.Request(command, packages, root, options.release, options.apt_options, also, replacing or {})
    archive_dir = os.path.join(settings.cache_dir, "archives")
    source_cache_call = None
    # .debs hashed by an earlier run and unchanged since are not read again.
    known_debs = deb_hashes.DebHashes(settings.cache_dir)
    with clock.timed("plan"):
        if state is not None:
            # On the core the planner leaves idle.
            source_cache_call = ForkedCall(release.build_source_cache, state, root)
        try:
            transaction = planner.plan_transaction(
                request,
                archive_dir,
                interactive,
                state.directory if state else None,
                known_debs.sha256,
                # The system's own lists, or the --release state's private ones.
                index_dir=release.index_dir(state) if state else os.path.join(settings.cache_dir, "apt-index"),
            )
            source_cache = _finished(source_cache_call)
        finally:
            if source_cache_call:
                source_cache_call.cancel()

    def debug(line: str) -> None:
        click.echo(f"D: {line}", err=True)

    # The real run of this very transaction finds the verdict (a --release
    # rehearsal is no transaction apt will run as such).
    record = not transaction.is_empty and not options.release
    if reuse and transaction.is_empty:
        return None, {"reused": None, "transaction": transaction}
    with contextlib.ExitStack() as held:
        if record:
            claim = _claim(held, transaction, settings, command, interactive)
            known = _known_verdict(transaction, settings, command) if reuse else None
            if known is not None:
                return None, {"reused": known, "transaction": transaction}
            progress = Relayed(progress, claim.tell)  # where it is, for a hook that waits for it
        planned = _Planned(command, transaction, state, began, progress, clock, source_cache, known_debs, record)
        return _rehearse_planned(planned, options, settings, config_changes, debug)


def _claim(held: Any, transaction: Any, settings: Any, command: str, interactive: bool) -> Any:
    """Hold the transaction's lock (store/inflight) for the rehearsal."""
    from apt_rehearse.sandbox.priority import Lifter
    from apt_rehearse.store import inflight

    lifter = Lifter()  # a prepare at idle priority goes on at ours while we wait

    def waiting(holder: dict[str, Any], elapsed: float) -> None:
        if interactive and elapsed < 1.5:
            lifted = " (raised to normal priority)" if lifter.raised else ""
            click.echo(
                f"Waiting for the rehearsal of this transaction that {holder.get('who', '?')} is running{lifted} ..."
            )

    return held.enter_context(
        inflight.claim(settings.cache_dir, transaction.identity, f"apt-rehearse {command}", waiting, on_held=lifter)
    )


def _known_verdict(transaction: Any, settings: Any, command: str) -> dict[str, Any] | None:
    """The fresh verdict of this transaction, once its lock is ours (prepare, gate)."""
    from apt_rehearse.fronts.hook import installed_versions
    from apt_rehearse.store import verdict_cache

    root = transaction.root
    known = verdict_cache.lookup(
        settings.cache_dir, transaction, settings.verdict_max_age, lambda: installed_versions(root)
    )
    if command == "gate" and known is not None:
        # The gate's steps need the approval of this very set, not only its verdict.
        known = verdict_cache.approval_of(settings.cache_dir, transaction, settings.verdict_max_age)
    return known


def _reused(document: dict[str, Any], options: Options) -> int:
    """A request whose verdict was there already: say so, or give its entry as JSON."""
    entry = document["reused"]
    if options.json_output:
        # The report of the rehearsal that reached the verdict: the same schema as any other.
        click.echo(json.dumps(_saved_report(entry) or {"reused": entry, "id": document["transaction"].identity}))
    elif entry is None:
        click.echo("Nothing to rehearse: the request changes nothing.")
    else:
        where = f"; report {entry['report']}" if entry.get("report") else ""
        click.echo(f"Already rehearsed and approved: {str(entry.get('verdict')).upper()}{where}")
    return EXIT_BLOCKED if entry and entry.get("verdict") == "block" else EXIT_GO


def _saved_report(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        with open((entry or {}).get("report") or "", encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("schema") else None


@dataclasses.dataclass
class _Planned:
    """A planned request, as the rehearsal of it needs it."""

    command: str
    transaction: Any
    state: Any
    began: float
    progress: Any
    clock: Any
    source_cache: Any
    known_debs: Any
    record: bool


def _rehearse_planned(
    planned: _Planned,
    options: Options,
    settings: Any,
    config_changes: list[dict[str, Any]] | None,
    debug: Callable[[str], None],
) -> tuple[Any, dict[str, Any]]:
    import apt_pkg

    from apt_rehearse.model import config
    from apt_rehearse.rehearse import conclude, rehearse

    command, transaction, state, progress = planned.command, planned.transaction, planned.state, planned.progress
    rehearsal = rehearse(
        transaction,
        settings,
        progress,
        lookup=apt_pkg.config.find,
        extra_apt_options=config.replay_apt_options(options.apt_options),
        private_lists=state.lists_dir if state else None,
        sources_rewrite=state.sources if state else None,
        debug=debug if options.debug else None,
        clock=planned.clock,
        unattended=command == "gate",
        shell=options.shell,
        unavailable_sources=state.unavailable if state else None,
        source_cache=planned.source_cache,
        config_fixes=config_changes,
    )
    document = conclude(
        rehearsal,
        settings,
        planned.began,
        record_in=settings.cache_dir if planned.record else None,
        approval=command == "gate",
        known_debs=planned.known_debs,
        used_debs=[c.deb for c in transaction.changes if c.deb],
        release_state=state.directory if state else None,
    )
    return rehearsal, document


def _offered(interactive: bool, fixes: list[str]) -> bool:
    """After a BLOCK on a terminal: rehearse again with the fixes?"""
    if not interactive or not sys.stdin.isatty():
        return False
    return click.confirm(f"Rehearse it again with the fixes ({', '.join(fixes)})?", default=True, err=True)


def _show(document: dict[str, Any], options: Options, color: bool, quiet: bool = False) -> None:
    from apt_rehearse.store import report

    if options.json_output:
        if not quiet:
            click.echo(json.dumps(document, indent=2))
        return
    if quiet:
        click.echo(
            f"Rehearsed without the fixes: {document['verdict'].upper()}, {len(document.get('problems') or [])} "
            f"problem(s) (report: {document.get('report_path') or 'not saved'}); now with them."
        )
        return
    click.echo(report.render_text(document, color=color), nl=False)
    if document.get("report_path"):
        click.echo(f"Report: {document['report_path']}")


def _finished(call: Any) -> Any:
    """What a side job found, or None when it failed: it only saves time."""
    if call is None:
        return None
    try:
        return call.result()
    except RehearsalError:
        return None


@main.command("gate")
@common_options
def gate_command() -> None:
    """Rehearse what unattended-upgrades would install, once, and approve it.

    Run before unattended-upgrade (apt-daily-upgrade.service): each of its
    minimal steps is then a verdict-cache hit for the apt hook, and a step of
    a blocked set is stopped before dpkg runs.
    """
    _run_request("gate", ())


def _prepare(_command: str, _packages: list[str], options: Options) -> int:
    from apt_rehearse.fronts import prepare

    _root, settings = _settings_for(options)
    if options.release:
        raise UsageError("prepare rehearses what is pending from the configured sources: it takes no --release")
    os.makedirs(settings.cache_dir, mode=0o755, exist_ok=True)
    interactive = not options.json_output and sys.stdout.isatty()
    code = prepare.prepare(options, settings, click.echo if interactive else lambda _line: None)
    if options.json_output:
        click.echo(json.dumps(prepare.status_document(os.path.realpath(options.root), settings), indent=2))
    return code


def _status(_command: str, _packages: list[str], options: Options, motd: bool = False) -> int:
    from apt_rehearse.fronts import prepare

    root, settings = _settings_for(options, sandbox=False)
    document = prepare.status_document(root, settings)
    if options.json_output:
        click.echo(json.dumps(document, indent=2))
    elif motd:
        click.echo(document["motd"])
    else:
        click.echo("\n".join(prepare.status_lines(document)))
    return EXIT_GO


@main.command("prepare")
@common_options
def prepare_command() -> None:
    """Rehearse what is pending now, so that apt finds the verdicts ready.

    Rehearses the transactions of 'apt-get upgrade', 'apt-get dist-upgrade'
    and unattended-upgrades, each distinct one once (one with a fresh
    verdict is not rehearsed again); apt-rehearse-prepare.service runs it.
    Exit status 10 when one of them blocks.
    """
    _run_request("prepare", (), _prepare)


@main.command("status")
@common_options
@click.option("--motd", is_flag=True, help="One line, for the login banner.")
def status_command(motd: bool) -> None:
    """Say what is pending, and which verdicts are ready for it."""
    _run_request("status", (), lambda c, p, o: _status(c, p, o, motd))


@main.command("shell")
@common_options
@also_option
@click.argument(
    "request", nargs=-1, metavar="[upgrade|dist-upgrade|full-upgrade|install PKG...|remove PKG...|purge PKG...]"
)
def shell_command(request: tuple[str, ...]) -> None:
    """Open a shell in the rehearsed system, after the upgrade, services running.

    Rehearses the request (dist-upgrade when none is given), reboots into the
    result, and opens a shell there; leaving the shell tears it all down.
    """
    words = list(request) or ["dist-upgrade"]
    if words[0] not in ("upgrade", "dist-upgrade", "full-upgrade", "install", "remove", "purge"):
        raise click.UsageError(f"'{words[0]}' is not a request apt-rehearse shell can rehearse")
    options: Options = click.get_current_context().find_root().ensure_object(Options)
    if not sys.stdin.isatty():
        raise click.UsageError("apt-rehearse shell needs a terminal")
    options.shell = True
    _run_request(words[0], tuple(words[1:]))


# apt's requests, each a subcommand: (name, what it rehearses, the metavar of
# its packages or None for none, whether --also applies).
REQUESTS = (
    ("upgrade", "Rehearse 'apt-get upgrade'.", None, True),
    ("dist-upgrade", "Rehearse 'apt-get dist-upgrade' (with --release: a release upgrade).", None, True),
    ("full-upgrade", "Rehearse 'apt full-upgrade' (the same as dist-upgrade).", None, True),
    ("install", "Rehearse 'apt-get install PKG...'.", "PKG[=VERSION|/RELEASE]...", False),
    ("remove", "Rehearse 'apt-get remove PKG...'.", "PKG...", False),
    ("purge", "Rehearse 'apt-get purge PKG...'.", "PKG...", False),
)


def _request_command(name: str, doc: str, metavar: str | None, also: bool) -> click.Command:
    def command(packages: tuple[str, ...] = ()) -> None:
        _run_request(name, packages)

    command.__doc__ = doc
    command.__name__ = name.replace("-", "_") + "_command"
    if metavar:
        command = click.argument("packages", nargs=-1, required=True, metavar=metavar)(command)
    if also:
        command = also_option(command)
    command = fix_option(command)
    return main.command(name)(common_options(command))


for _request in REQUESTS:
    _request_command(*_request)


def run() -> None:
    """Entry point: click's usage errors exit 2, as documented."""
    try:
        main.main(standalone_mode=False)
    except click.UsageError as error:
        _error(error.format_message())
        if error.ctx is not None:
            click.echo(one_line(f"Try '{error.ctx.command_path} --help'."), err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        _error("interrupted; nothing was changed")
        sys.exit(EXIT_FAILED)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    sys.exit(EXIT_GO)
