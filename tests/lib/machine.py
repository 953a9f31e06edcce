"""A system tree run as a machine: commands chrooted into it in private
namespaces with a fresh /proc, /dev (nodes made with mknod, never the host's),
/run and /tmp, so apt and its front-ends really run there and really call the
apt-rehearse hook, which builds its (nested) sandbox on that tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

TREE_SETUP = r"""
set -e
R=$1; shift
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=755,size=16m tmpfs "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5; mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8; mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
mkdir "$R/dev/pts" "$R/dev/shm"; mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
mount -t tmpfs -o mode=755 tmpfs "$R/run"; mkdir -p "$R/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
exec chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LANG=C.UTF-8 "$@"
"""


def in_tree(
    tree: Path, command: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run a shell command in the tree as if it were the machine."""
    assignments = [f"{key}={value}" for key, value in (env or {"DEBIAN_FRONTEND": "noninteractive"}).items()]
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--pid",
            "--ipc",
            "--uts",
            "--fork",
            "--propagation",
            "private",
            "sh",
            "-c",
            TREE_SETUP,
            "sh",
            str(tree),
            *assignments,
            "sh",
            "-c",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def install_machine(tree: Path, product_deb: Path, published: list[Path], installed: list[Path]) -> None:
    """Make the tree a machine with apt-rehearse installed: every package in
    ``published`` served from a repository inside the tree (its only source),
    the product's .deb and ``installed`` installed, apt's lists up to date."""
    from lib.localrepo import LocalRepo

    repo = LocalRepo(tree / "srv/rh-repo")
    for package in published:
        repo.add(package)
    repo.publish()
    (tree / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/srv/rh-repo ./\n")
    for extra in (tree / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    # /tmp is a fresh tmpfs inside: install from a directory of the tree.
    (tree / "root/debs").mkdir()
    for package in [product_deb, *installed]:
        shutil.copy(package, tree / "root/debs")
    proc = in_tree(
        tree,
        f"dpkg -i /root/debs/{product_deb.name} && APT_REHEARSE=0 dpkg -i /root/debs/rh-*.deb && "
        "APT_REHEARSE=0 apt-get update -q",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def pending_pair(tree: Path, debs: Path, prefix: str) -> tuple[list[Path], list[Path]]:
    """PREFIX-good and PREFIX-bad at 1.0, with 2.0 of both pending (PREFIX-bad
    2.0's postinst fails), and unattended-upgrades allowed PREFIX-good only:
    (v1, v2) for install_machine."""
    from lib.localrepo import build_deb

    good, bad = f"{prefix}-good", f"{prefix}-bad"
    v1 = [build_deb(debs, name, "1.0", files={f"/usr/share/{name}/v": "1\n"}) for name in (good, bad)]
    v2 = [
        build_deb(debs, good, "2.0", files={f"/usr/share/{good}/v": "2\n"}),
        build_deb(
            debs,
            bad,
            "2.0",
            files={f"/usr/share/{bad}/v": "2\n"},
            postinst=f'echo "{bad}: cannot migrate" >&2\nexit 1\n',
        ),
    ]
    (tree / "etc/apt/apt.conf.d/51rh-unattended").write_text(
        'Unattended-Upgrade::Origins-Pattern { "origin=apt-rehearse-tests"; };\n'
        f'Unattended-Upgrade::Package-Blacklist {{ "{bad}"; }};\n'
    )
    return v1, v2
