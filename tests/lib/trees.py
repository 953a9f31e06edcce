"""Real Debian system trees (bookworm, and trixie) for integration and system tests.

apt-rehearse works on a whole installed system, so its tests need one that is
real (dpkg database, conffiles, maintainer scripts, systemd units) rather
than mocked. Building one with mmdebstrap takes minutes and needs the Debian
archive, so each variant is built once into a tarball under
/var/cache/apt-rehearse-tests/ and every test extracts a fresh copy (seconds).

tree_hash() and dpkg_status_digest() let a test prove that a rehearsal left
the real system byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CACHE_DIR = Path("/var/cache/apt-rehearse-tests")
SUITE = "bookworm"


def suite_sources(suite: str) -> tuple[str, ...]:
    return (
        f"deb http://deb.debian.org/debian {suite} main",
        f"deb http://deb.debian.org/debian {suite}-updates main",
        f"deb http://deb.debian.org/debian-security {suite}-security main",
    )


SOURCES = suite_sources(SUITE)
# What the apt-rehearse package depends on, so its .deb installs in a tree.
PRODUCT_DEPENDS = ("python3-apt", "python3-debian", "python3-click", "python3-pyelftools", "python3-seccomp")

# Each variant: the packages added to --variant=important, and customize
# hooks (run by mmdebstrap with "$1" = the new root).
VARIANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "lamp": {
        "include": (
            "apache2",
            "libapache2-mod-php8.2",
            "php8.2-mysql",
            "mariadb-server",
            "openssh-server",
            "systemd",
            "systemd-sysv",
            "dbus",
            "iproute2",
            "curl",
        ),
        "customize": (
            'echo rehearsal > "$1/etc/hostname"',
            "printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\trehearsal\\n\\n"
            "::1\\tlocalhost ip6-localhost ip6-loopback\\n"
            "ff02::1\\tip6-allnodes\\nff02::2\\tip6-allrouters\\n'"
            ' > "$1/etc/hosts"',
            'mkdir -p "$1/var/www/html"' " && printf '%s\\n' '<?php echo \"ok\"; ?>' > \"$1/var/www/html/index.php\"",
        ),
    },
    "minimal": {
        "include": ("systemd-sysv", "dbus"),
        "customize": (),
    },
    # A machine with every apt front-end the hook must stop, and what the
    # apt-rehearse package depends on.
    "frontends": {
        "include": ("systemd-sysv", "dbus", *PRODUCT_DEPENDS, "aptitude", "unattended-upgrades"),
        "customize": (),
    },
    # A fleet's server (issue 19): the engines that read apt-rehearse's results,
    # Debian's node_exporter (and its collectors: apt_info.py's textfile beside
    # ours) and ansible-core; without recommends (ansible-core's pull the whole
    # "ansible" collection set).
    "fleet": {
        "include": (
            "systemd-sysv",
            "dbus",
            *PRODUCT_DEPENDS,
            "prometheus-node-exporter",
            "prometheus-node-exporter-collectors",
            "ansible-core",
            "sudo",
        ),
        "customize": (),
        "recommends": ("false",),
    },
    # The same machine on trixie (Python 3.13, apt 3.x): users run both.
    "trixie-frontends": {
        "suite": ("trixie",),
        "include": ("systemd-sysv", "dbus", *PRODUCT_DEPENDS, "unattended-upgrades"),
        "customize": (),
    },
}


def variant_suite(variant: str) -> str:
    return VARIANTS[variant].get("suite", (SUITE,))[0]


# Pauses between the attempts of a build: 3 attempts in all, because a
# mirror hiccup should not fail a test run.
RETRY_PAUSES = (10, 30)
_LOG_TAIL_LINES = 40


def mmdebstrap_args(variant: str) -> list[str]:
    """The mmdebstrap command for a variant, less the output path.

    Kept separate so its hash names the cache file: change an argument and
    the next run rebuilds instead of silently testing against an old tree.
    """
    try:
        spec = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown tree variant {variant!r}; known: {sorted(VARIANTS)}") from None
    args = [
        "mmdebstrap",
        "--mode=root",
        "--variant=important",
        "--format=tar",
        f'--aptopt=Apt::Install-Recommends "{spec.get("recommends", ("true",))[0]}"',
        "--include=" + ",".join(spec["include"]),
    ]
    args += [f"--customize-hook={hook}" for hook in spec["customize"]]
    return args


def cache_path(variant: str) -> Path:
    """Where the tarball of a variant lives: name carries a hash of its recipe."""
    suite = variant_suite(variant)
    recipe = json.dumps({"args": mmdebstrap_args(variant), "suite": suite, "sources": suite_sources(suite)})
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    name = variant if variant.startswith(suite + "-") else f"{suite}-{variant}"
    return CACHE_DIR / f"{name}-{digest}.tar"


def bookworm_tree(dest: Path, *, variant: str = "lamp") -> Path:
    """Lay a fresh Debian system of `variant` (bookworm unless the variant
    names another suite, as "trixie-frontends" does) at dest and return dest.

    dest must not exist or be an empty directory. The tarball is built on
    first use (or when the cached one is unreadable) and reused afterwards;
    a lock serialises parallel test processes wanting the same build.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(errno.EEXIST, "tree destination exists and is not empty", str(dest))
    tarball = cache_path(variant)
    _make_cache_dir()
    with _locked(tarball.with_name(tarball.name + ".lock")):
        if not _tarball_readable(tarball):
            _build_tarball(variant, tarball)
        try:
            _extract(tarball, dest)
        except subprocess.CalledProcessError:
            # A cache that looked fine but does not extract is rebuilt once.
            _clear_dir(dest)
            tarball.unlink(missing_ok=True)
            _build_tarball(variant, tarball)
            _extract(tarball, dest)
    return dest


def tree_hash(root: Path, exclude: tuple[str, ...] = (), *, content: bool = True) -> str:
    """A hash of everything in a tree, for "left byte-for-byte unchanged" checks.

    Covers, per entry: relative path, type, mode, uid, gid, size, mtime_ns,
    symlink target, sha256 of regular file content and device numbers. Does
    not follow symlinks nor descend into other filesystems (a mount point
    below root is left out altogether, since what is seen there is the
    mounted filesystem). `exclude` holds relative paths ("proc",
    "var/log/apt-rehearse") skipped with everything below them; since
    creating or removing such a path touches its parent directory, the
    parent's mtime and size are left out of the hash too.

    With content=False, file content is replaced by ctime_ns: no write,
    chmod or rename can leave ctime as it was, and a big /usr hashes in a
    fraction of the time.
    """
    root_b = os.fsencode(os.path.abspath(root))
    root_st = os.lstat(root_b)
    if not stat.S_ISDIR(root_st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", os.fsdecode(root_b))
    excluded = {os.fsencode(p.strip("/")) for p in exclude if p.strip("/")}
    # Parents of excluded paths: their mtime/size change when the excluded
    # entry appears or disappears, so those two fields are not hashed.
    loose_dirs = {os.path.dirname(p) for p in excluded}
    if b"" in loose_dirs:
        loose_dirs.add(b".")
    h = hashlib.sha256()
    _hash_entry(h, b".", root_b, root_st, loose=b"." in loose_dirs, content=content)
    stack = [b""]  # relative directory paths still to read
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root_b, rel_dir) if rel_dir else root_b
        with os.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if rel in excluded:
                continue
            st = entry.stat(follow_symlinks=False)
            if st.st_dev != root_st.st_dev:
                continue  # another filesystem mounted here
            _hash_entry(h, rel, entry.path, st, loose=rel in loose_dirs, content=content)
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))  # depth-first, in name order
    return h.hexdigest()


def dpkg_status_digest(root: Path) -> str:
    """sha256 of the tree's dpkg status file: the cheap "did dpkg change?" check."""
    with open(Path(root) / "var/lib/dpkg/status", "rb") as f:
        return _file_sha256(f)


# --- internals ---------------------------------------------------------------


def _hash_entry(
    h: "hashlib._Hash", rel: bytes, path: bytes, st: os.stat_result, *, loose: bool, content: bool = True
) -> None:
    mode = st.st_mode
    kind = stat.S_IFMT(mode)
    fields = [
        rel,
        b"%o" % kind,
        b"%o" % stat.S_IMODE(mode),
        b"%d" % st.st_uid,
        b"%d" % st.st_gid,
        b"-" if loose else b"%d" % st.st_size,
        b"-" if loose else b"%d" % st.st_mtime_ns,
    ]
    if stat.S_ISLNK(mode):
        fields.append(os.readlink(path))
    elif stat.S_ISREG(mode):
        fields.append(_regular_file_sha256(path).encode() if content else b"%d" % st.st_ctime_ns)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        fields.append(b"%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    # Length-prefix every field so no path or link target can fake a boundary.
    for field in fields:
        h.update(b"%d:" % len(field))
        h.update(field)
    h.update(b"\n")


_NOATIME = getattr(os, "O_NOATIME", 0)


def _regular_file_sha256(path: bytes) -> str:
    # O_NOATIME: hashing the tree should not itself touch it (only works for
    # the file's owner or root; fall back silently otherwise).
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | _NOATIME)
    except PermissionError:
        fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        return _file_sha256(f)


def _file_sha256(f: BinaryIO) -> str:
    if hasattr(hashlib, "file_digest"):
        return hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _make_cache_dir() -> None:
    CACHE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(CACHE_DIR, 0o700)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _tarball_readable(tarball: Path) -> bool:
    """Cheap sanity check of a cached tarball (it is only ever renamed into
    place complete, so this guards against manual damage, not half writes)."""
    try:
        if not tarball.is_file() or tarball.stat().st_size < 10 << 20:
            return False
        with tarfile.open(tarball, "r:") as tf:
            return tf.next() is not None
    except (OSError, tarfile.TarError):
        return False


def _build_tarball(variant: str, tarball: Path) -> None:
    """Run mmdebstrap into a temporary file and rename it into place, with retries."""
    args = mmdebstrap_args(variant)
    attempts = len(RETRY_PAUSES) + 1
    last_output = ""
    for attempt in range(1, attempts + 1):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{tarball.stem}.", suffix=".tar", dir=CACHE_DIR)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with tempfile.TemporaryFile(mode="w+", dir=CACHE_DIR) as log:
                proc = subprocess.run(
                    [*args, variant_suite(variant), str(tmp), *suite_sources(variant_suite(variant))],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "LC_ALL": "C.UTF-8"},
                )
                log.seek(0)
                last_output = "".join(log.readlines()[-_LOG_TAIL_LINES:])
            if proc.returncode == 0 and _tarball_readable(tmp):
                os.chmod(tmp, 0o600)
                os.replace(tmp, tarball)
                return
        finally:
            tmp.unlink(missing_ok=True)
        if attempt < attempts:
            time.sleep(RETRY_PAUSES[attempt - 1])
    raise RuntimeError(
        f"mmdebstrap failed {attempts} times building the {variant!r} tree; " f"last output:\n{last_output}"
    )


def _extract(tarball: Path, dest: Path) -> None:
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-xpf",
            str(tarball),
            "-C",
            str(dest),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _clear_dir(path: Path) -> None:
    """Empty a half-extracted tree (never crossing into a mount)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            if os.path.ismount(child):
                raise RuntimeError(f"refusing to clear {path}: {child} is a mount point")
            shutil.rmtree(child)
        else:
            child.unlink()


def install_into(tree: Path, debs: list[Path]) -> None:
    """Install .debs with the tree's own dpkg (the host's would resolve the
    tree's statoverride groups against the host's group database)."""
    staging = tree / "tmp/rh-debs"
    staging.mkdir()
    for deb in debs:
        shutil.copy(deb, staging)
    proc = subprocess.run(
        ["chroot", str(tree), "sh", "-c", "dpkg -i /tmp/rh-debs/*.deb"], capture_output=True, text=True
    )
    shutil.rmtree(staging)
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg -i in {tree} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def build_package() -> Path:
    """The apt-rehearse .deb, built by make deb (dh + pybuild) from this tree."""
    proc = subprocess.run(["make", "-C", str(REPO_ROOT), "deb"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("make deb failed: " + proc.stdout[-3000:] + proc.stderr[-3000:])
    debs = sorted(glob.glob(str(REPO_ROOT / "build" / "apt-rehearse_*_all.deb")))
    if not debs:
        raise RuntimeError("make deb built no .deb")
    return Path(debs[-1])
