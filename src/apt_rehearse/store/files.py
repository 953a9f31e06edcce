"""Files of the store written whole or not at all, readable only by whom they are for."""

from __future__ import annotations

import os


def write_atomically(path: str, text: str, mode: int = 0o600, group: int | None = None) -> None:
    """Replace ``path`` with ``text`` in one rename: a reader (the hook, a
    fleet tool) sees the old file or the new one, never half of it. The
    temporary file is created exclusively and never through a link, so
    nothing planted beside it is written or followed."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(temporary)  # a leftover of a killed run with our pid
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if group is not None:
            os.chown(temporary, 0, group)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
