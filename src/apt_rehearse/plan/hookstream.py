"""apt's DPkg::Pre-Install-Pkgs hook stream, version 3, as a Transaction.

apt.conf(5), "How APT calls dpkg": with ``Version "3"`` apt writes
``VERSION 3``, its whole configuration as ``Key=Value`` lines (values
percent-encoded), a blank line, then one line per dpkg action:

    name old-version old-arch old-multiarch direction new-version new-arch new-multiarch action

where a missing version or arch is ``-``, direction is ``<`` (install or
upgrade), ``>`` (downgrade or removal) or ``=`` (reinstall), and action is
the path of the .deb to unpack, ``**CONFIGURE**`` or ``**REMOVE**``.

Pure parsing: no I/O, so it can be fuzzed.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Callable
from urllib.parse import unquote

from apt_rehearse.model.errors import RehearsalError
from apt_rehearse.model.transaction import Change, Transaction

SUPPORTED_VERSION = 3
CONFIGURE = "**CONFIGURE**"
REMOVE = "**REMOVE**"


class HookInputError(RehearsalError):
    """apt's hook stream is not what version 3 promises."""


@dataclasses.dataclass(frozen=True)
class PackageLine:
    package: str
    old_version: str | None
    old_arch: str | None
    direction: str
    new_version: str | None
    new_arch: str | None
    action: str


@dataclasses.dataclass
class HookInput:
    version: int
    config: dict[str, list[str]]
    lines: list[PackageLine]

    def get(self, key: str, default: str = "") -> str:
        """A scalar the way apt finds it: case-insensitive key, last value wins."""
        values = self.config.get(key.lower())
        return values[-1] if values else default

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.get(key, "").strip().lower()
        if value in ("1", "yes", "true", "with", "on", "enable"):
            return True
        if value in ("0", "no", "false", "without", "off", "disable"):
            return False
        return default

    def values(self, key: str) -> list[str]:
        """The items of an apt list (``Key::=value`` lines)."""
        return list(self.config.get(key.lower() + "::", []))


def _dash(value: str) -> str | None:
    return None if value == "-" else value


def parse(text: str) -> HookInput:
    """Parse a whole hook stream; one clear HookInputError for anything off."""
    if not text:
        raise HookInputError('apt sent no hook input (is the hook registered with Version "3" and InfoFD?)')
    lines = text.split("\n")
    header = lines[0].strip()
    if not header.startswith("VERSION "):
        raise HookInputError(
            f"hook input does not start with 'VERSION 3' (got {header[:40]!r}); "
            'register the hook with DPkg::Tools::Options::<hook>::Version "3"'
        )
    try:
        version = int(header.split()[1])
    except (IndexError, ValueError):
        raise HookInputError(f"hook input has a bad version line {header[:40]!r}") from None
    if version != SUPPORTED_VERSION:
        raise HookInputError(
            f"hook protocol version {version} is not supported; set "
            'DPkg::Tools::Options::/usr/lib/apt-rehearse/apt-hook::Version "3"'
        )
    if "\n\n" not in text:
        raise HookInputError("hook input ends inside the configuration dump (truncated stream)")
    config: dict[str, list[str]] = {}
    index = 1
    while True:
        if index >= len(lines):
            raise HookInputError("hook input ends inside the configuration dump (truncated stream)")
        line = lines[index]
        index += 1
        if line == "":
            break
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise HookInputError(f"hook input has a malformed configuration line {line[:60]!r}")
        config.setdefault(key.lower(), []).append(unquote(value))
    packages = []
    if not text.endswith("\n"):
        raise HookInputError("hook input does not end with a newline (truncated stream)")
    for line in lines[index:]:
        if not line:
            continue
        fields = line.split(" ")
        if len(fields) != 9:
            raise HookInputError(f"hook input line has {len(fields)} fields, version 3 has 9: {line[:80]!r}")
        name, old_version, old_arch, _old_ma, direction, new_version, new_arch, _new_ma, action = fields
        if direction not in ("<", ">", "="):
            raise HookInputError(f"hook input line has an unknown direction {direction!r}: {line[:80]!r}")
        if action not in (CONFIGURE, REMOVE) and not (action.startswith("/") and action.endswith(".deb")):
            raise HookInputError(f"hook input line has an unknown action {action[:60]!r}")
        if not name or any(c in name for c in "/\\\0"):
            raise HookInputError(f"hook input line has a bad package name {name[:60]!r}")
        packages.append(
            PackageLine(
                name, _dash(old_version), _dash(old_arch), direction, _dash(new_version), _dash(new_arch), action
            )
        )
    return HookInput(version, config, packages)


# apt-get's and apt's options whose value is the next word (apt-get(8)).
OPTIONS_WITH_VALUE = frozenset(
    {
        "-o",
        "--option",
        "-c",
        "--config-file",
        "-t",
        "--target-release",
        "--default-release",
        "-a",
        "--host-architecture",
        "-P",
        "--build-profiles",
    }
)


def requested_packages(command_line: str) -> set[str]:
    """Package names the user typed (``apt-get install foo bar-``)."""
    try:
        words = shlex.split(command_line)
    except ValueError:
        words = command_line.split()
    commands = {"install", "remove", "purge", "reinstall", "autoremove"}
    seen_command = False
    names = set()
    skip_value = False
    for word in words[1:]:
        if skip_value:  # the value of "-o X=1", "-t trixie", ...
            skip_value = False
            continue
        if word in OPTIONS_WITH_VALUE:
            skip_value = True
            continue
        if not seen_command:
            seen_command = word in commands
            continue
        if word.startswith("-"):
            continue
        name = word.split("=", 1)[0].split("/", 1)[0].rstrip("+-_")
        names.add(name.split(":", 1)[0])
    return names


def to_transaction(
    hook: HookInput,
    root: str,
    dpkg_status_sha256: str,
    sha256_of: Callable[[str], str],
    is_auto: Callable[[str, str], bool],
) -> Transaction:
    """The same Transaction the CLI would compute for this apt run."""
    purge = hook.get_bool("APT::Get::Purge")
    requested = requested_packages(hook.get("CommandLine::AsString"))
    changes: dict[tuple[str, str], Change] = {}
    for line in hook.lines:
        if line.action == CONFIGURE:
            continue
        if line.action == REMOVE:
            arch = line.old_arch or line.new_arch or "all"
            key = (line.package, arch)
            changes[key] = Change(
                line.package,
                arch,
                line.old_version,
                None,
                "purge" if purge else "remove",
                manual=not is_auto(line.package, arch),
                requested=line.package in requested,
            )
            continue
        arch = line.new_arch or "all"
        if line.old_version is None:
            action = "install"
        else:
            action = {"<": "upgrade", ">": "downgrade", "=": "reinstall"}[line.direction]
        changes[(line.package, arch)] = Change(
            line.package,
            arch,
            line.old_version,
            line.new_version,
            action,
            manual=not is_auto(line.package, arch),
            deb=line.action,
            sha256=sha256_of(line.action),
            requested=line.package in requested,
        )
    command = hook.get("CommandLine::AsString")
    return Transaction(
        changes=list(changes.values()),
        root=root,
        request=command.split(" ", 1)[1] if " " in command else (command or "apt transaction"),
        dpkg_status_sha256=dpkg_status_sha256,
        apt_config={"DPkg::Options": hook.values("DPkg::Options")},
    )


def deb_provides(deb: str) -> list[str]:
    """The names a .deb provides (its Provides field, versions dropped)."""
    import apt_pkg  # the hook's cache hit never gets here: no import cost for it
    from debian.debfile import DebError, DebFile

    try:
        field = DebFile(deb).debcontrol().get("Provides", "")
    except (DebError, OSError, KeyError, ValueError):
        return []
    return [name for group in apt_pkg.parse_depends(field, False) for name, _version, _op in group] if field else []
