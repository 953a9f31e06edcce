"""Errors that end a run with one clear line and a documented exit code.

The exit codes are a contract (DESIGN.md): 0 go, 10 blocked by policy,
1 apt-rehearse itself failed, 2 usage error, 3 this system cannot be
rehearsed.
"""

from __future__ import annotations

EXIT_GO = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
EXIT_BLOCKED = 10


def one_line(text: str) -> str:
    """A message as one printable line: a newline, a carriage return or an
    escape sequence in a name the user typed (or apt passed on) must not
    forge or hide lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class RehearsalError(Exception):
    """apt-rehearse could not do its job; the message says what to do."""

    exit_code = EXIT_FAILED


class UsageError(RehearsalError):
    """The request itself is wrong (unknown package, bad option, missing root)."""

    exit_code = EXIT_USAGE


class UnsupportedSystem(RehearsalError):
    """This system cannot be rehearsed (not root, no overlayfs, no namespaces)."""

    exit_code = EXIT_UNSUPPORTED


class RehearsalLimit(RehearsalError):
    """The rehearsal ran out of a resource of its own (room, memory, time).

    Never a statement about a package: the sysadmin raises the limit and
    tries again.
    """


# The kind a process of the sandbox reports an error as, across its pipe.
ERROR_KINDS: dict[str, type[RehearsalError]] = {"unsupported": UnsupportedSystem, "limit": RehearsalLimit}


def from_kind(kind: str | None, message: str, prefix: str = "") -> RehearsalError:
    """The exception for an error reported from inside: an unsupported system
    and a rehearsal's own limit keep their meaning (exit 3, "ran out of room");
    anything else is the sandbox failing, said in its last line."""
    cls = ERROR_KINDS.get(kind or "")
    if cls is not None:
        return cls(message)
    last = message.strip().splitlines()[-1] if message.strip() else "unknown error"
    return RehearsalError(f"{prefix}{last}")
