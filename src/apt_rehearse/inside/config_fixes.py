"""Inside the sandbox: a problem's configuration fix, made in the rehearsed
system only (the overlay), to see whether it works.

A fix names a file, a line, the text the line has and the text it gets
(checks/services: a web server's socket renamed with its package). The line
is changed only when it still reads as expected; the web server whose file
changed is then reloaded, as the sysadmin would after the edit. The host's
file is never touched: this runs after pivot_root, on the copy.
"""

from __future__ import annotations

from typing import Any

from apt_rehearse.inside.commands import run_command


def apply(fixes: list[dict[str, Any]], services_live: bool) -> list[dict[str, Any]]:
    """Make each change; say for each whether it was made."""
    done: list[dict[str, Any]] = []
    units: list[str] = []
    for fix in fixes:
        path, number, old, new = fix["path"], int(fix["line"]), fix["old"], fix["new"]
        row = {"path": path, "line": number, "applied": False}
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines(keepends=True)
            if 0 < number <= len(lines) and lines[number - 1].strip() == old.strip():
                lines[number - 1] = lines[number - 1].replace(old.strip(), new.strip(), 1)
                with open(path, "w", encoding="utf-8") as handle:
                    handle.writelines(lines)
                row["applied"] = True
                if fix.get("unit") and fix["unit"] not in units:
                    units.append(fix["unit"])
            else:
                row["why"] = "the line no longer reads as the fix expects"
        except OSError as error:
            row["why"] = error.strerror or str(error)
        done.append(row)
    if services_live:
        for unit in units:
            # A unit the system does not have (no such web server here) is no error: nothing to reload.
            # A unit that failed in the run may have hit its start limit; the sysadmin's restart resets it too.
            run_command(["systemctl", "reset-failed", unit], timeout=30)
            run_command(["systemctl", "reload-or-restart", unit], timeout=60)
    return done
