"""Which package of the configured sources ships a file, from the archive's
Contents indexes.

apt downloads them with the lists when an index target asks for them
(apt-file's /etc/apt/apt.conf.d/50apt-file.conf: deb::Contents-deb), so on
a host with apt-file, and in a --release rehearsal there (its private lists
are updated with the host's index targets), they are at hand, checked by apt
against the signed Release. ``apt-helper cat-file`` reads each one in
whatever compression apt stored it; grep -F keeps only the lines that can
match, since a release's Contents has millions of lines. Without them,
nothing is found here and plan/fixes falls back on Debian's naming.
"""

from __future__ import annotations

import glob
import os
import subprocess

APT_HELPER = "/usr/lib/apt/apt-helper"
TIMEOUT_S = 120


def index_files(lists_dir: str, architecture: str) -> list[str]:
    """The Contents indexes in apt's lists directory for this architecture
    (and Debian's arch-independent Contents-all), udebs left out."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(lists_dir), "*Contents-*"))):
        name = os.path.basename(path).split("_Contents-", 1)[-1].split(".", 1)[0]
        if name in (architecture, "all") and not path.endswith((".diff_Index", ".IndexDiff")):
            found.append(path)
    return found


def parse_lines(lines: list[str], basenames: set[str]) -> dict[str, set[str]]:
    """Contents lines ("usr/lib/x/libfoo.so.1   libs/libfoo1,oldlibs/libfoo1-dev")
    -> basename -> packages shipping a file of that name."""
    found: dict[str, set[str]] = {}
    for line in lines:
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            continue
        path, locations = parts
        name = os.path.basename(path)
        if name in basenames and _where_it_belongs(path, name):
            found.setdefault(name, set()).update(where.rsplit("/", 1)[-1] for where in locations.split(","))
    return found


def packages_shipping(basenames: set[str], lists_dir: str, architecture: str) -> dict[str, set[str]]:
    """basename -> the packages whose files have that name, in every
    Contents index apt has; empty when there are none."""
    found: dict[str, set[str]] = {}
    if not basenames or not os.access(APT_HELPER, os.X_OK):
        return found
    patterns = [argument for name in sorted(basenames) for argument in ("-e", name)]
    for index in index_files(lists_dir, architecture):
        cat = subprocess.Popen([APT_HELPER, "cat-file", index], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            grep = subprocess.run(
                ["grep", "-F", *patterns], stdin=cat.stdout, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            continue
        finally:
            if cat.stdout:
                cat.stdout.close()
            cat.kill()
            cat.wait()
        for name, packages in parse_lines(grep.stdout.splitlines(), basenames).items():
            found.setdefault(name, set()).update(packages)
    return found


def _where_it_belongs(path: str, name: str) -> bool:
    """A unit counts in systemd's unit directories only, a library in a
    library directory: not an example under /usr/share/doc."""
    if name.endswith((".service", ".socket", ".timer")):
        return "/systemd/system/" in f"/{path}"
    if ".so" in name:
        return "/lib" in f"/{path}" and not path.startswith("usr/share/")
    return True
