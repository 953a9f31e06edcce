"""Shared libraries as the dynamic loader would find them, before and after.

Runs inside the sandbox (the rehearsed system at /). dpkg's dependencies keep
packaged programs whole, but nothing keeps software dpkg does not know about
(/opt, /usr/local, /srv, ...) or modules that packaged programs load from
other sources: when the system under them moves, they lose libraries. For
each ELF file found there, the needed libraries (DT_NEEDED, transitively) are
resolved the way ld.so does it: DT_RPATH (when there is no DT_RUNPATH),
DT_RUNPATH, ld.so.cache, then the system directories; a candidate of another
ELF class or machine is skipped, as the loader skips it.

pyelftools parses the files; it is imported here, before the sandbox forks,
because nothing can be imported once the process has moved into the target.
"""

from __future__ import annotations

import os
import stat
import subprocess
from typing import Any


try:  # pragma: no cover - the Debian package depends on python3-pyelftools
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile

    HAVE_ELFTOOLS = True
except ImportError:  # pragma: no cover
    HAVE_ELFTOOLS = False
    ELFError = Exception  # type: ignore[misc,assignment]

ELF_MAGIC = b"\x7fELF"
# Where software dpkg does not know about lives (FHS), and where packaged
# programs load modules from.
THIRD_PARTY_DIRS = ("/opt", "/usr/local", "/srv")
MODULE_DIRS = (
    "/usr/lib/apache2/modules",
    "/usr/lib/nginx/modules",
    "/usr/lib/php",
    "/usr/lib/python3/dist-packages",
    "/usr/lib/{triplet}/security",  # PAM
    "/lib/{triplet}/security",
)
# A bound on the work: a huge /opt must not make every apt run slow.
MAX_FILES_VISITED = 200_000
MAX_ELF_FILES = 20_000
PRUNE = ("/proc", "/sys", "/dev", "/run", "/tmp")


class ElfInfo:
    __slots__ = ("elfclass", "machine", "needed", "rpath", "runpath")

    def __init__(self, elfclass: int, machine: str, needed: list[str], rpath: list[str], runpath: list[str]) -> None:
        self.elfclass, self.machine = elfclass, machine
        self.needed, self.rpath, self.runpath = needed, rpath, runpath

    def to_row(self) -> list[Any]:
        return [self.elfclass, self.machine, self.needed, self.rpath, self.runpath]

    @classmethod
    def from_row(cls, row: list[Any]) -> "ElfInfo | None":
        """A row of the ELF table ([] for a file that is no dynamic ELF object)."""
        if not row:
            return None
        elfclass, machine, needed, rpath, runpath = row
        return cls(
            int(elfclass), str(machine), [str(n) for n in needed], [str(p) for p in rpath], [str(p) for p in runpath]
        )


def elf_key(path: str, info: os.stat_result) -> str:
    """What a file's ELF facts are remembered by: the file as the kernel
    describes it (inode, size, mtime and ctime, which only the kernel sets)
    and its path. The device is left out: overlayfs shows a lower file with
    a device of its own."""
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{path}"


def read_elf(path: str) -> ElfInfo | None:
    """The dynamic-linking facts of one file, or None when it is no dynamic ELF object."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != ELF_MAGIC:
                return None
            handle.seek(0)
            elf = ELFFile(handle)
            if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
                return None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            for segment in elf.iter_segments():
                if not isinstance(segment, DynamicSegment):
                    continue
                for tag in segment.iter_tags():
                    kind = tag.entry.d_tag
                    if kind == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif kind == "DT_RPATH":
                        rpath += [p for p in tag.rpath.split(":") if p]
                    elif kind == "DT_RUNPATH":
                        runpath += [p for p in tag.runpath.split(":") if p]
            return ElfInfo(elf.elfclass, elf["e_machine"], needed, rpath, runpath)
    except Exception:  # noqa: BLE001
        # pyelftools raises many kinds of errors on a truncated or odd file;
        # none of them is a reason to fail a rehearsal.
        return None


def parse_ldconfig_cache(output: str) -> dict[str, list[str]]:
    """``ldconfig -p`` output as soname -> paths, in the cache's order."""
    entries: dict[str, list[str]] = {}
    for line in output.splitlines():
        name, arrow, path = line.strip().partition(" => ")
        if not arrow or not path.startswith("/"):
            continue
        soname = name.split(" (", 1)[0].strip()
        entries.setdefault(soname, []).append(path.strip())
    return entries


def expand_origin(entry: str, origin: str, lib: str) -> str:
    for token, value in (("${ORIGIN}", origin), ("$ORIGIN", origin), ("${LIB}", lib), ("$LIB", lib)):
        entry = entry.replace(token, value)
    return entry


class Resolver:
    """ld.so's search order, over one file system as it is right now."""

    def __init__(
        self,
        cache: dict[str, list[str]],
        system_dirs: list[str],
        lib_token: str,
        known: dict[str, list[Any]] | None = None,
    ) -> None:
        self.cache, self.system_dirs, self.lib_token = cache, system_dirs, lib_token
        self.known = known or {}  # ELF facts of earlier rehearsals, by elf_key
        self.seen: dict[str, list[Any]] = {}  # this scan's, to be remembered
        self._elf: dict[str, ElfInfo | None] = {}

    def info(self, path: str) -> ElfInfo | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key = elf_key(path, st)
        if key not in self._elf:
            row = self.known.get(key)
            try:
                info = ElfInfo.from_row(row) if row is not None else read_elf(path)
            except (TypeError, ValueError):  # a malformed row: read the file
                info = read_elf(path)
            self._elf[key] = info
            self.seen[key] = info.to_row() if info is not None else []
        return self._elf[key]

    def _usable(self, candidate: str, wanted: ElfInfo) -> bool:
        info = self.info(candidate)
        return info is not None and info.elfclass == wanted.elfclass and info.machine == wanted.machine

    def find(
        self, soname: str, requester: str, info: ElfInfo, loader_rpaths: list[tuple[str, list[str]]]
    ) -> str | None:
        if "/" in soname:
            return soname if self._usable(soname, info) else None
        origin = os.path.dirname(requester)
        dirs: list[str] = []
        if not info.runpath:
            # DT_RPATH of the object, then of the objects that loaded it.
            dirs += [expand_origin(d, origin, self.lib_token) for d in info.rpath]
            for loader, rpath in loader_rpaths:
                dirs += [expand_origin(d, os.path.dirname(loader), self.lib_token) for d in rpath]
        dirs += [expand_origin(d, origin, self.lib_token) for d in info.runpath]
        for directory in dirs:
            candidate = os.path.join(directory, soname)
            if self._usable(candidate, info):
                return candidate
        for candidate in self.cache.get(soname, []):
            if self._usable(candidate, info):
                return candidate
        for directory in self.system_dirs:
            candidate = os.path.join(directory, soname)
            if self._usable(candidate, info):
                return candidate
        return None

    def closure(self, path: str) -> dict[str, Any] | None:
        """Every library ``path`` needs, transitively: soname -> resolved path or None."""
        top = self.info(path)
        if top is None:
            return None
        resolved: dict[str, str | None] = {}
        needed_by: dict[str, str] = {}
        # (object path, its info, the RPATHs of the objects that loaded it)
        queue: list[tuple[str, ElfInfo, list[tuple[str, list[str]]]]] = [(path, top, [])]
        while queue:
            current, info, loaders = queue.pop(0)
            chain = loaders + ([(current, info.rpath)] if info.rpath and not info.runpath else [])
            for soname in info.needed:
                if soname in resolved:
                    continue
                found = self.find(soname, current, info, loaders)
                resolved[soname] = found
                needed_by[soname] = current
                if found is not None:
                    child = self.info(found)
                    if child is not None:
                        queue.append((found, child, chain))
        return {"direct": list(top.needed), "libraries": resolved, "needed_by": needed_by}


def multiarch_triplet(cache: dict[str, list[str]]) -> str:
    """The system's multiarch directory name, from where its own libc lives."""
    for path in cache.get("libc.so.6", []):
        parent = os.path.basename(os.path.dirname(path))
        if parent.count("-") >= 2:
            return parent
    machine = os.uname().machine
    return {
        "x86_64": "x86_64-linux-gnu",
        "aarch64": "aarch64-linux-gnu",
        "i686": "i386-linux-gnu",
        "armv7l": "arm-linux-gnueabihf",
        "ppc64le": "powerpc64le-linux-gnu",
        "s390x": "s390x-linux-gnu",
        "riscv64": "riscv64-linux-gnu",
    }.get(machine, f"{machine}-linux-gnu")


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return 127, ""
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def ldconfig_cache() -> dict[str, list[str]]:
    code, output = _run(["ldconfig", "-p"])
    return parse_ldconfig_cache(output) if code == 0 else {}


def make_resolver(cache: dict[str, list[str]], triplet: str, known: dict[str, list[Any]] | None = None) -> Resolver:
    system_dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    return Resolver(cache, system_dirs, f"lib/{triplet}", known)


def candidate_files(extra_dirs: list[str], triplet: str) -> tuple[list[str], bool]:
    """Files to check, and whether the bound on the work cut the list short."""
    files: list[str] = []
    visited = 0
    roots = [(d, False) for d in (*THIRD_PARTY_DIRS, *extra_dirs)]
    roots += [(d.format(triplet=triplet), True) for d in MODULE_DIRS]
    seen_dirs: set[tuple[int, int]] = set()
    for top, modules_only in roots:
        if not os.path.isdir(top) or top.startswith(PRUNE):
            continue
        for directory, subdirs, names in os.walk(top):
            try:
                st = os.stat(directory)
            except OSError:
                subdirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                subdirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            for name in sorted(names):
                visited += 1
                if visited > MAX_FILES_VISITED or len(files) >= MAX_ELF_FILES:
                    return files, True
                if modules_only and ".so" not in name:
                    continue
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_size < 64:
                        continue
                    # Programs are executable and libraries are named *.so*: the
                    # data beside them (a web site under /srv) is not opened at all.
                    if not st.st_mode & 0o111 and ".so" not in name:
                        continue
                    with open(path, "rb") as handle:
                        if handle.read(4) != ELF_MAGIC:
                            continue
                except OSError:
                    continue
                files.append(path)
            subdirs.sort()
    return files, False


def scan(
    extra_dirs: list[str], files: list[str] | None = None, known: dict[str, list[Any]] | None = None
) -> dict[str, Any]:
    """Resolve the libraries of every candidate file, as the system is now
    (``known``: ELF facts remembered from earlier rehearsals, by elf_key)."""
    if not HAVE_ELFTOOLS:
        return {"available": False, "reason": "python3-pyelftools is not installed"}
    cache = ldconfig_cache()
    triplet = multiarch_triplet(cache)
    capped = False
    if files is None:
        files, capped = candidate_files(extra_dirs, triplet)
    resolver = make_resolver(cache, triplet, known)
    objects = {}
    for path in files:
        closure = resolver.closure(path)
        if closure is not None:
            objects[path] = closure
    return {
        "available": True,
        "triplet": triplet,
        "capped": capped,
        "objects": objects,
        "fingerprints": fingerprints(relied_on(objects)),
        "elf_seen": resolver.seen,
    }


LD_CACHE = "/etc/ld.so.cache"


def relied_on(objects: dict[str, Any]) -> set[str]:
    """Every file a scan's answer rests on: the objects, each library they
    found, and the loader's cache."""
    paths = {LD_CACHE, *objects}
    for closure in objects.values():
        paths.update(found for found in closure["libraries"].values() if found)
    return paths


def fingerprints(paths: set[str]) -> dict[str, list[int] | None]:
    prints: dict[str, list[int] | None] = {}
    for path in sorted(paths):
        try:
            info = os.stat(path)
            prints[path] = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]
        except OSError:
            prints[path] = None
    return prints


def rescan(before: dict[str, Any], extra_dirs: list[str], known: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The scan after the run, of the objects found before.

    When every file the first answer rests on is still the same file (same
    inode, size and mtime) and the loader's cache is unchanged, nothing can
    have gone missing: a library still there is still found first or
    shadowed by another that is found. Most single-package runs touch none
    of them, and skip the ELF parsing."""
    previous = before.get("fingerprints")
    if before.get("available") and previous and fingerprints(set(previous)) == previous:
        return {**before, "reused": True, "elf_seen": {}}
    return scan(
        extra_dirs, files=list(before.get("objects", {})), known={**(known or {}), **before.get("elf_seen", {})}
    )


def lost_libraries(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Libraries an object found before the run and does not find after it.

    An object that is gone after the run is no loss here (its removal is a
    finding of its own); a library that was already missing is not news.
    """
    if not before.get("available") or not after.get("available"):
        return []
    lost = []
    for path, then in sorted(before["objects"].items()):
        now = after["objects"].get(path)
        if now is None:
            continue
        missing = [
            (soname, then["libraries"][soname], now["needed_by"].get(soname, then["needed_by"].get(soname)))
            for soname, was in then["libraries"].items()
            if was is not None and soname in now["libraries"] and now["libraries"][soname] is None
        ]
        # A library the object no longer needs at all (its needer went away
        # with it) is not lost either; only what is asked for and not found.
        for soname, was, needed_by in missing:
            lost.append({"object": path, "soname": soname, "was": was, "needed_by": needed_by})
    return lost


def summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The figures for the JSON report: libraries per object, before and after."""
    if not before.get("available"):
        return {"checked": False, "reason": before.get("reason", "")}
    rows = []
    for path, then in sorted(before["objects"].items()):
        now = after.get("objects", {}).get(path)
        rows.append(
            {
                "object": path,
                "needs": len(then["libraries"]),
                "resolved_before": sum(1 for v in then["libraries"].values() if v),
                "resolved_after": None if now is None else sum(1 for v in now["libraries"].values() if v),
                "missing_after": None if now is None else sorted(k for k, v in now["libraries"].items() if v is None),
            }
        )
    return {"checked": True, "objects": len(rows), "capped": before.get("capped", False), "per_object": rows}
