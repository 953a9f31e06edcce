"""The DPkg::Pre-Install-Pkgs hook: rehearse apt's exact transaction first.

apt runs this before dpkg, with the version-3 stream on fd 20 (InfoFD). Exit
0 lets apt go on; exit 10 stops it before dpkg has touched anything. It runs
on every apt transaction, so the paths that do nothing (disabled, nothing to
rehearse, a verdict already known) import as little as possible.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterator

from apt_rehearse.model.errors import EXIT_BLOCKED, EXIT_GO, RehearsalError, one_line
from apt_rehearse.plan.hookstream import HookInput, HookInputError, parse, to_transaction
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, REMOVING_ACTIONS, Transaction, find_successors

INFO_FD = 20
DEFAULT_CACHE_DIR = "/var/cache/apt-rehearse"
PREFIX = "apt-rehearse:"


def _say(message: str) -> None:
    sys.stderr.write(f"{PREFIX} {one_line(message)}\n")
    sys.stderr.flush()


def read_stream() -> str:
    """Everything apt sent; read to the end so apt never writes into a closed pipe."""
    try:
        os.fstat(INFO_FD)
        fd = INFO_FD
    except OSError:
        fd = sys.stdin.fileno()
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def is_unattended(hook: HookInput | None) -> bool:
    if os.environ.get("DEBIAN_FRONTEND", "") == "noninteractive":
        return True
    if hook is not None:
        if hook.get_bool("APT::Get::Assume-Yes") or "unattended-upgrade" in hook.get("CommandLine::AsString"):
            return True
    try:
        with open("/dev/tty", "rb"):
            return False
    except OSError:
        return True


def on_error_policy(hook: HookInput | None, unattended: bool) -> str:
    """What to do when the rehearsal itself fails: "allow" or "block"."""
    default = "block" if unattended else "allow"
    if hook is None:
        return default
    specific = hook.get("APT::Rehearse::On-Error::" + ("Unattended" if unattended else "Interactive"))
    value = (specific or hook.get("APT::Rehearse::On-Error") or default).strip().lower()
    return value if value in ("allow", "block") else default


def _file_sha256(path: str, hashes: Any) -> str:
    try:
        return hashes.sha256(path)
    except OSError as error:
        raise HookInputError(f"apt named {path}, which cannot be read: {error.strerror}") from None


def _paragraphs(path: str) -> Iterator[dict[str, str]]:
    """The deb822 paragraphs of dpkg's status or apt's extended_states, field
    names lower-cased, continuation lines left out (no field read here has
    any). Not apt_pkg.TagFile: importing apt_pkg alone is 3 ms of the 50 a
    cache hit takes, and this runs before every apt run."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for paragraph in handle.read().split("\n\n"):
            fields = {}
            for line in paragraph.splitlines():
                if line[:1] not in (" ", "\t", "#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if fields:
                yield fields


def _auto_flags(root: str) -> dict[tuple[str, str], bool]:
    """apt's extended_states: which packages are automatically installed."""
    try:
        return {
            (fields["package"], fields.get("architecture", "")): fields.get("auto-installed") == "1"
            for fields in _paragraphs(os.path.join(root, "var/lib/apt/extended_states"))
            if "package" in fields
        }
    except OSError:  # none yet, or unreadable: nothing is marked automatic
        return {}


def installed_versions(root: str) -> dict[str, str | None]:
    """package:arch -> installed version, from dpkg's status file."""
    versions: dict[str, str | None] = {}
    for fields in _paragraphs(os.path.join(root, "var/lib/dpkg/status")):
        if "package" in fields and fields.get("status", "").endswith(" installed"):
            versions[f"{fields['package']}:{fields.get('architecture', 'all')}"] = fields.get("version")
            versions.setdefault(fields["package"], fields.get("version"))
    return versions


def main() -> int:
    started = time.monotonic()
    try:
        text = read_stream()
    except OSError as error:
        _say(f"cannot read apt's hook input ({error.strerror}); the rehearsal is skipped")
        return EXIT_GO
    if os.environ.get("APT_REHEARSE", "") == "0":
        # Also the guard inside the sandbox: a rehearsal never rehearses itself.
        return EXIT_GO
    hook: HookInput | None = None
    unattended = is_unattended(None)
    try:
        hook = parse(text)
        unattended = is_unattended(hook)
        if not hook.get_bool("APT::Rehearse::Enable", True):
            return EXIT_GO
        root = hook.get("Dir", "/") or "/"
        root = os.path.realpath(root)
        from apt_rehearse.store.deb_hashes import DebHashes, digest

        with open(os.path.join(root, "var/lib/dpkg/status"), "rb") as handle:
            status_sha = digest(handle)
        flags = _auto_flags(root)
        cache_dir = hook.get("APT::Rehearse::Cache-Dir", DEFAULT_CACHE_DIR)

        hashes = DebHashes(cache_dir)
        transaction = to_transaction(
            hook,
            root,
            status_sha,
            lambda path: _file_sha256(path, hashes),
            lambda package, arch: flags.get((package, arch), flags.get((package, ""), False)),
        )
        if transaction.is_empty:
            return EXIT_GO
        from apt_rehearse.model.defaults import DEFAULT_MAX_AGE as default_age
        from apt_rehearse.store import verdict_cache

        max_age = float(hook.get("APT::Rehearse::Cache-Max-Age", str(default_age)) or default_age)

        cached = verdict_cache.lookup(cache_dir, transaction, max_age, lambda: installed_versions(root))
        if cached is not None:
            hashes.save()
            return _cached_verdict(cached, transaction.identity, time.monotonic() - started)
        from apt_rehearse.store import inflight

        # The prepare service (or a CLI run) rehearsing this very transaction now: wait for it, take its verdict.
        from apt_rehearse.sandbox.priority import Lifter

        # A prepare runs at idle priority: waited for, it goes on at the hook's.
        lifter = Lifter()
        waiting = _waiting(unattended, lifter)
        with inflight.claim(cache_dir, transaction.identity, "the apt hook", waiting, on_held=lifter) as held:
            if held.waited:
                cached = verdict_cache.lookup(cache_dir, transaction, max_age, lambda: installed_versions(root))
                if cached is not None:
                    hashes.save()
                    return _cached_verdict(cached, transaction.identity, time.monotonic() - started)
            transaction.successors = _successors(transaction)
            code = _rehearse_now(hook, transaction, unattended, cache_dir)
        hashes.save()
        return code
    except RehearsalError as error:
        return _failed(str(error), error.exit_code, hook, unattended)
    except KeyboardInterrupt:
        return _failed("interrupted", 1, hook, unattended)
    except Exception as error:  # noqa: BLE001 - the hook must answer apt, whatever happens
        if os.environ.get("APT_REHEARSE_DEBUG"):
            import traceback

            traceback.print_exc()
        return _failed(f"internal error: {error.__class__.__name__}: {error}", 1, hook, unattended)


def unattended_lines(document: dict) -> list[str]:
    """What ends up in apt's output and unattended-upgrades' log, read by
    someone after the fact: each problem with its cause and fix, the verdict
    and the report. Nothing at info level."""
    lines = []
    for problem in document.get("problems") or []:
        lines.append(f"{problem['severity'].upper()} {problem['title']}")
        lines.append(f"  cause: {problem['cause']['text']}")
        fix = problem.get("fix") or {}
        if fix.get("packages"):
            lines.append(f"  fix: add {' '.join(fix['packages'])}")
        elif fix.get("diffs"):
            lines.append(f"  fix: change {', '.join(d['path'] for d in fix['diffs'])} (the diff is in the report)")
    lines.append(f"verdict {document['verdict'].upper()}; report {document.get('report_path', '(not saved)')}")
    return lines


def _successors(transaction: Transaction) -> dict[str, str]:
    """Renamed packages (libfoo1 -> libfoo1t64): asked of the .debs' control
    only when a manually installed package goes, the one case they change."""
    if not any(c.action in REMOVING_ACTIONS and c.manual and not c.requested for c in transaction.changes):
        return {}
    from apt_rehearse.plan.hookstream import deb_provides

    provides = {c.package: deb_provides(c.deb) for c in transaction.changes if c.action in INSTALLING_ACTIONS and c.deb}
    return find_successors(transaction.changes, provides)


def _waiting(unattended: bool, lifter: Any) -> Any:
    shown = {"now": None}

    def say(holder: dict, elapsed: float) -> None:
        if elapsed < 1.5:
            since = time.time() - float(holder.get("started") or time.time())
            lifted = ", raised to normal priority" if lifter.raised else ""
            _say(
                f"this transaction is being rehearsed already by {holder.get('who', '?')} (pid {holder.get('pid', '?')},"
                f" for {since:.0f} s{lifted}); waiting for its verdict ..."
            )
        # On a terminal, where that rehearsal is, as it moves: apt's user sees it is not hung.
        now = holder.get("now")
        if not unattended and now and now != shown["now"]:
            _say(f"  {now}")
            shown["now"] = now

    return say


def process_age() -> float:
    """Seconds since this process started, Python's own start-up included
    (/proc/self/stat's start time against /proc/uptime; 10 ms steps)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _cached_verdict(entry: dict, identity: str, seconds: float) -> int:
    verdict = entry.get("verdict", "block")
    where = f"; report {entry['report']}" if entry.get("report") else ""
    kind = (
        "the unattended set approved by 'apt-rehearse gate'"
        if entry.get("kind") == "approval"
        else "an earlier rehearsal"
    )
    _say(
        f"transaction {identity[:12]} already rehearsed ({kind}): {verdict.upper()}{where} (answered in {max(seconds, process_age()):.2f} s)"
    )
    if verdict == "block":
        _say("stopping apt before dpkg runs, as the policy says (APT_REHEARSE=0 lets an emergency fix through)")
        return EXIT_BLOCKED
    return EXIT_GO


def _failed(reason: str, code: int, hook: HookInput | None, unattended: bool) -> int:
    policy = on_error_policy(hook, unattended)
    mode = "unattended" if unattended else "interactive"
    if policy == "allow":
        _say(
            f"WARNING: could not rehearse this transaction ({reason}); On-Error for {mode} runs is 'allow': "
            "apt goes on UNREHEARSED"
        )
        return EXIT_GO
    _say(
        f"could not rehearse this transaction ({reason}); On-Error for {mode} runs is 'block': apt stops before "
        "dpkg runs. To go on anyway: APT_REHEARSE=0 apt-get ..."
    )
    return EXIT_BLOCKED


def _rehearse_now(hook: HookInput, transaction, unattended: bool, cache_dir: str) -> int:  # noqa: ANN001
    import apt_pkg

    from apt_rehearse.model import config
    from apt_rehearse.store import report
    from apt_rehearse.fronts.progress import for_stream
    from apt_rehearse.rehearse import conclude, rehearse

    began = time.monotonic()
    config.load_dumped_config(hook.config)
    settings = config.read_settings()
    for line in config.setting_warnings():
        _say(f"W: {line}")
    _say(f"rehearsing this transaction ({len(transaction.changes)} packages) on a throw-away copy of the system ...")
    progress = for_stream(sys.stderr, quiet=unattended)
    # The real run's Dpkg::Options, -o ones included, go to the replay too.
    dpkg_options = [f"DPkg::Options::={value}" for value in hook.values("DPkg::Options")]
    rehearsal = rehearse(
        transaction,
        settings,
        progress,
        lookup=apt_pkg.config.find,
        extra_apt_options=dpkg_options,
        unattended=unattended,
    )
    # apt's own archives are apt's: only our reports, verdicts and states are tidied.
    document = conclude(rehearsal, settings, began, record_in=cache_dir)
    text = report.render_text(
        document, color=not unattended and not os.environ.get("NO_COLOR") and apt_pkg.config.find_b("APT::Color", True)
    )
    if unattended:
        for line in unattended_lines(document):
            _say(line)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
        _say(f"report {document.get('report_path', '(not saved)')}")
    if rehearsal.verdict == "block":
        _say("stopping apt before dpkg runs, as the policy says (APT_REHEARSE=0 lets an emergency fix through)")
        return EXIT_BLOCKED
    if rehearsal.verdict == "warn" and not unattended:
        return EXIT_GO if _ask_tty("Continue with the real run? [y/N] ") else EXIT_BLOCKED
    return EXIT_GO


def _ask_tty(question: str) -> bool:
    """apt owns stdin: ask on the terminal itself."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    try:
        os.write(fd, question.encode())
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = os.read(fd, 1)
            if not chunk:
                break
            answer += chunk
    except OSError:
        return False
    finally:
        os.close(fd)
    return answer.decode("utf-8", "replace").strip().lower() in ("y", "yes")


def run() -> None:
    sys.exit(main())
