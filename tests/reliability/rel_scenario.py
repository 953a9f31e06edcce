"""The tree the reliability suite rehearses: a bookworm system with systemd,
and small real packages that pass, block, hang, crash, reach for the host.

Version 1.0 of each is installed; 2.0 is served from a local repository.
Marker arguments (sleep 3.1716, 3.1717) let a test see from the process
table which phase a rehearsal is in, without any hook in the product.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, install_into

REPLAY_MARK = "3.1717"  # the preinst of rel-slow 2.0 sleeps this long: the replay phase
OBSERVE_MARK = "3.1716"  # a probe sleeps this long: the observation phase
SECRET = "rel-secret-7f3a9c-password"  # a sysadmin's local conffile content

REACH = r"""#!/bin/sh
# Inside the sandbox: try every way to reach a daemon of the host (perl-base
# is in every Debian system; python3 is not).
port=$(cat /usr/share/rel-reach/port)
abstract=$(cat /usr/share/rel-reach/abstract)
tcp() { perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(PeerAddr => $ARGV[0], Timeout => 3); print $s ? "CONNECTED" : "no: $!"' "$1"; }
echo "REACH tcp-loopback: $(tcp 127.0.0.1:$port)"
echo "REACH tcp-host: $(tcp $HOSTADDR:$port)"
echo "REACH tcp-outside: $(tcp 1.1.1.1:53)"
echo "REACH udp-host: $(perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(PeerAddr => $ARGV[0], Proto => "udp"); print $s && $s->send("x") ? "SENT" : "no: $!"' $HOSTADDR:$port)"
sock=$(ls /run/rel-canary-*.sock 2>/dev/null | head -n 1)
if [ -n "$sock" ]; then echo "REACH unix-run: PRESENT $sock"; else echo "REACH unix-run: ABSENT"; fi
echo "REACH unix-abstract: $(perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => "\0" . $ARGV[0]); print $s ? "CONNECTED" : "no: $!"' "$abstract")"
echo "REACH interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ',')"
echo "REACH dev: $(ls /dev | tr '\n' ',')"
exit 0
"""


@dataclasses.dataclass
class Scenario:
    base: Path
    tree: Path
    debs: Path
    repo: LocalRepo
    log: Path
    cache: Path


def _packages(debs: Path, canary_port: int, canary_abstract: str, host_addr: str) -> tuple[list[Path], list[Path]]:
    names = ("rel-clean", "rel-fail", "rel-slow", "rel-hang", "rel-reach", "rel-corrupt", "rel-big", "rel-hook")
    v1 = [build_deb(debs, name, "1.0", files={f"/usr/share/{name}/v": "1\n"}) for name in names]
    v1.append(build_deb(debs, "rel-conf", "1.0", conffiles={"/etc/rel-conf.conf": "password=packaged-default\n"}))
    # 6 MiB that compress to almost nothing: the .deb looks small enough for
    # a small tmpfs upper (apt-rehearse sends a change it expects not to fit
    # to a disk upper instead), and then fills it for real.
    big = b"apt-rehearse fills its upper\n" * ((6 << 20) // 29)
    v2 = [
        build_deb(debs, "rel-clean", "2.0", files={"/usr/share/rel-clean/v": "2\n"}),
        build_deb(
            debs,
            "rel-fail",
            "2.0",
            files={"/usr/share/rel-fail/v": "2\n"},
            postinst='echo "rel-fail: cannot migrate" >&2\nexit 3\n',
        ),
        build_deb(
            debs, "rel-slow", "2.0", files={"/usr/share/rel-slow/v": "2\n"}, preinst=f"/bin/sleep {REPLAY_MARK}\n"
        ),
        build_deb(
            debs,
            "rel-hang",
            "2.0",
            files={"/usr/share/rel-hang/v": "2\n"},
            postinst="# a daemon that never answers, started the wrong way\n(setsid sleep 100000 &)\nsleep 100000\n",
        ),
        build_deb(
            debs,
            "rel-reach",
            "2.0",
            files={
                "/usr/share/rel-reach/port": f"{canary_port}\n",
                "/usr/share/rel-reach/abstract": canary_abstract + "\n",
                "/usr/share/rel-reach/reach": REACH.replace("$HOSTADDR", host_addr),
            },
            postinst="/usr/share/rel-reach/reach\n",
        ),
        build_deb(debs, "rel-big", "2.0", files={"/usr/share/rel-big/blob": big}),
        build_deb(
            debs, "rel-hook", "2.0", files={"/usr/share/rel-hook/v": "2\n"}, preinst=f"/bin/sleep {REPLAY_MARK}\n"
        ),
        build_deb(debs, "rel-conf", "2.0", conffiles={"/etc/rel-conf.conf": "password=new-packaged-default\nnew=1\n"}),
    ]
    corrupt = build_deb(
        debs / "corrupt", "rel-corrupt", "2.0", files={"/usr/share/rel-corrupt/blob": os.urandom(64 << 10)}
    )
    data = corrupt.read_bytes()
    # Damage data.tar (the last member), keep control.tar: the index is
    # built from it, so apt downloads it with a matching hash; dpkg finds it broken.
    corrupt.write_bytes(data[: len(data) - 20000] + b"\0" * 4096 + data[len(data) - 15904 :])
    v2.append(corrupt)
    return v1, v2


def host_address() -> str:
    """An address of the host outside loopback (the sandbox must not reach it either)."""
    proc = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    words = proc.stdout.split()
    return words[0] if words else "127.0.0.1"


def make(base: Path, canary_port: int, canary_abstract: str) -> Scenario:
    tree = bookworm_tree(base / "tree", variant="minimal")
    debs = base / "debs"
    v1, v2 = _packages(debs, canary_port, canary_abstract, host_address())
    install_into(tree, v1)
    (tree / "etc/rel-conf.conf").write_text(f"password={SECRET}\n")  # the sysadmin's own value
    os.chmod(tree / "etc/rel-conf.conf", 0o600)
    repo = LocalRepo(base / "repo")
    for deb in v1 + v2:
        repo.add(deb)
    repo.publish()
    serve_to_tree(tree, repo)
    return Scenario(base, tree, debs, repo, base / "log", base / "cache")


def set_probe(tree: Path, on: bool) -> None:
    """A probe that marks the observation phase in the process table."""
    probe = tree / "etc/apt-rehearse/probes.d/rel-observe.probe"
    if on:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(f"Name: rel-observe\nType: command\nCommand: /bin/sleep {OBSERVE_MARK}\nExpect-Exit: 0\n")
    elif probe.exists():
        probe.unlink()
