"""Bad input and unsupported systems: never a traceback, one clear line, the
documented exit code (0 go, 10 blocked, 1 failed, 2 usage, 3 unsupported)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import rel_run
from conftest import SRC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apt_rehearse.plan.hookstream import HookInputError, parse, to_transaction

DOCUMENTED = {0, 1, 2, 3, 10}
VALID_STREAM = (
    "VERSION 3\nAPT::Architecture=amd64\nCommandLine::AsString=apt-get install rel-clean\n"
    "DPkg::Options::=--force-confold\n\n"
    "rel-clean 1.0 all none < 2.0 all none /var/cache/apt/archives/rel-clean_2.0_all.deb\n"
    "rel-clean 1.0 all none < 2.0 all none **CONFIGURE**\n"
    "rel-old 1.0 amd64 same > - - none **REMOVE**\n"
)

# -- the hook's version-3 parser, in process (>= 1000 inputs) -----------------------

fields = st.one_of(
    st.sampled_from(
        [
            "-",
            "<",
            ">",
            "=",
            "**CONFIGURE**",
            "**REMOVE**",
            "none",
            "same",
            "all",
            "amd64",
            "1.0",
            "2:1.0-1",
            "/x.deb",
            "/var/cache/apt/archives/a_1_all.deb",
            "",
        ]
    ),
    st.text(max_size=12),
)
package_line = st.lists(fields, min_size=0, max_size=11).map(" ".join)
config_line = st.one_of(
    st.tuples(st.text(max_size=20), st.sampled_from(["=", ""]), st.text(max_size=20)).map("".join),
    st.sampled_from(
        ["Dir=/", "APT::Get::Purge=true", "CommandLine::AsString=apt-get install 'x", "DPkg::Options::=%zz", "A=%00"]
    ),
)
streams = st.one_of(
    st.text(max_size=400),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.tuples(
        st.sampled_from(["VERSION 3", "VERSION 2", "VERSION", "VERSION 3 x", "version 3", ""]),
        st.lists(config_line, max_size=6),
        st.booleans(),
        st.lists(package_line, max_size=6),
        st.booleans(),
    ).map(lambda t: "\n".join([t[0], *t[1]]) + ("\n\n" if t[2] else "\n") + "\n".join(t[3]) + ("\n" if t[4] else "")),
    st.tuples(st.integers(0, len(VALID_STREAM)), st.text(max_size=8)).map(
        lambda t: VALID_STREAM[: t[0]] + t[1] + VALID_STREAM[t[0] :]
    ),
    st.integers(0, len(VALID_STREAM)).map(lambda n: VALID_STREAM[:n]),
)


@pytest.mark.case("hook v3 parser fuzzed (hypothesis, in process)")
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(text=streams)
def test_hook_parser_fuzz(ledger, text: str) -> None:  # noqa: ANN001
    ledger.tried()
    try:
        hook = parse(text)
        to_transaction(hook, "/nonexistent-root", "0" * 64, lambda path: "0" * 64, lambda package, arch: False)
    except HookInputError as error:
        message = str(error)
        assert message and "\n" not in message and len(message) < 400, repr(message)


@pytest.mark.case("hook fuzzed end to end (exit code, one line)")
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(text=streams)
def test_hook_process_fuzz(ledger, base: Path, text: str) -> None:  # noqa: ANN001
    """The real hook process on fuzzed input: it answers apt with 0 or 10 and one line."""
    ledger.tried()
    # Every stream that parses points at a root with no dpkg database, so no
    # fuzzed input can start a real rehearsal of this machine.
    if text.startswith("VERSION 3\n"):
        text = text.replace("VERSION 3\n", f"VERSION 3\nDir={base}/no-such-root\n", 1)
    proc = subprocess.run(
        [
            "/usr/bin/python3",
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(SRC)!r}); " "from apt_rehearse.fronts.hook import run; run()",
        ],
        input=text.encode("utf-8", "surrogateescape"),
        capture_output=True,
        timeout=120,
        env=dict(rel_run.environment(), DEBIAN_FRONTEND="noninteractive"),
        check=False,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode in (0, 10), (proc.returncode, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    if proc.returncode == 10:
        assert len(lines) == 1 and lines[0].startswith("apt-rehearse: "), lines


# -- the CLI's arguments -------------------------------------------------------------

SUBCOMMANDS = [
    "upgrade",
    "dist-upgrade",
    "full-upgrade",
    "install",
    "remove",
    "purge",
    "gate",
    "shell",
    "frobnicate",
    "",
]
OPTIONS = [
    "--json",
    "--debug",
    "--no-services",
    "--release",
    "-o",
    "--also",
    "--root",
    "--help",
    "--version",
    "-h",
    "--",
    "-",
]
# argv cannot carry NUL or lone surrogates: anything else may be typed.
argv_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=15)
option_values = st.one_of(
    argv_text,
    st.sampled_from(
        [
            "trixie",
            "Trixie!",
            "=",
            "A=B",
            "APT::Rehearse::Timeout=x",
            "APT::Rehearse::Tmpfs-Size=12Q",
            "APT::Rehearse::Policy::Remove=maybe",
            "-o",
            "rel-clean",
            "rel-nope",
            "rel-clean=9.9",
            "rel-clean/sid",
            "/nonexistent",
            "..",
            "*",
            "rel-*",
        ]
    ),
)
words = st.one_of(st.sampled_from(SUBCOMMANDS), st.sampled_from(OPTIONS), option_values)


@pytest.mark.case("CLI arguments fuzzed (hypothesis)")
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(argv=st.lists(words, max_size=6))
def test_cli_argument_fuzz(ledger, scenario, argv: list[str]) -> None:  # noqa: ANN001
    ledger.tried()
    # The target is always the test tree (a fuzzed run never rehearses this
    # machine), services off to keep a run that happens to be valid short;
    # the scratch options come last so that fuzzed ones cannot move the
    # report or the cache onto the host.
    safe = [
        "--root",
        str(scenario.tree),
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={scenario.base}/log-fuzz",
        "-o",
        f"APT::Rehearse::Cache-Dir={scenario.base}/cache-fuzz",
    ]
    argv = [word for word in argv if word not in ("--root", "shell")]  # shell needs a terminal; root stays ours
    proc = subprocess.run(
        [rel_run.PYTHON, "-m", "apt_rehearse", *safe, *argv],
        capture_output=True,
        text=True,
        env=rel_run.environment(),
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    assert proc.returncode in DOCUMENTED, (argv, proc.returncode, proc.stderr[-1500:])
    if "--debug" in argv:  # documented: the plan and tracebacks on stderr
        assert proc.returncode in (0, 10) or "\nE: " in "\n" + proc.stderr, (argv, proc.stderr[-1500:])
        return
    assert "Traceback" not in proc.stderr, (argv, proc.stderr[-1500:])
    if proc.returncode in (1, 2, 3):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("E: ")]
        hints = [line for line in lines if line.startswith("Try '")]
        assert len(errors) == 1 and len(lines) == len(errors) + len(hints), (argv, proc.stderr[-1500:])
        assert "internal error" not in errors[0], (argv, errors[0])


# -- unsupported systems -----------------------------------------------------------------


def _one_line_exit(proc: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("E: ") and words in lines[0], lines
    assert "Traceback" not in proc.stderr


def _cli(
    scenario, *prefix: str, args: tuple[str, ...] = ("install", "rel-clean")
) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    argv = [*prefix, "env", f"PYTHONPATH={SRC}", *rel_run.cli_argv(scenario.tree, scenario.log, scenario.cache, *args)]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)


@pytest.mark.case("unsupported: not root")
def test_not_root(scenario) -> None:  # noqa: ANN001
    _one_line_exit(_cli(scenario, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"), 3, "must run as root")


@pytest.mark.case("unsupported: no CAP_SYS_ADMIN")
def test_no_cap_sys_admin(scenario) -> None:  # noqa: ANN001
    _one_line_exit(_cli(scenario, "setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"), 3, "CAP_SYS_ADMIN")


# In a private mount namespace (nothing propagates to the host): what the
# kernel tells about its filesystems is made to say "no overlayfs".
NO_OVERLAY = r"""
set -e
grep -v overlay /proc/filesystems > "$SCRATCH/filesystems"
mount --bind "$SCRATCH/filesystems" /proc/filesystems
mount -t tmpfs -o size=1m tmpfs /sys/module
exec "$@"
"""


@pytest.mark.case("unsupported: no overlayfs module")
def test_no_overlayfs(scenario) -> None:  # noqa: ANN001
    scratch = scenario.base / "no-overlay"
    scratch.mkdir(exist_ok=True)
    proc = _cli(
        scenario,
        "env",
        f"SCRATCH={scratch}",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        NO_OVERLAY,
        "sh",
    )
    _one_line_exit(proc, 3, "overlayfs")


@pytest.mark.case("unsupported: cannot confine (no python3-seccomp, no CAP_SETPCAP)")
def test_cannot_confine(scenario, ledger) -> None:  # noqa: ANN001
    """Never an unconfined rehearsal: one line, exit 3, nothing rehearsed."""
    hidden = scenario.base / "no-seccomp"
    hidden.mkdir(exist_ok=True)
    (hidden / "seccomp.py").write_text("raise ImportError('python3-seccomp hidden by the test')\n")
    for args in (("install", "rel-clean"), ("--no-services", "install", "rel-clean")):
        ledger.tried()
        argv = [
            "env",
            f"PYTHONPATH={hidden}:{SRC}",
            *rel_run.cli_argv(scenario.tree, scenario.log, scenario.cache, *args),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
        _one_line_exit(proc, 3, "python3-seccomp")
        ledger.tried()
        _one_line_exit(
            _cli(scenario, "setpriv", "--inh-caps=-setpcap", "--bounding-set=-setpcap", args=args), 3, "CAP_SETPCAP"
        )


READ_ONLY_ROOT = r"""
set -e
mount -o remount,bind,ro /
mount -t tmpfs -o size=64m tmpfs /run
# The checkout stays where it is, even when it lives under /tmp (a clone
# there, as a newcomer makes it): held on /run across the tmpfs on /tmp.
mkdir /run/rel-src && mount --bind "$REL_SRC" /run/rel-src
mount -t tmpfs -o size=64m tmpfs /tmp  # as on a read-only system
mkdir -p "$REL_SRC" && mount --bind /run/rel-src "$REL_SRC"
exec "$@"
"""


@pytest.mark.case("unsupported: read-only root")
def test_read_only_root(scenario) -> None:  # noqa: ANN001
    """/ (and with it the tree) read-only, in a private mount namespace: the
    rehearsal needs no write to the root (uppers on tmpfs) and must still
    give a verdict, or refuse in one line with exit 3."""
    prefix = (
        "env",
        f"REL_SRC={SRC.parent}",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        READ_ONLY_ROOT,
        "sh",
    )
    proc = _cli(scenario, *prefix, args=("--no-services", "install", "rel-clean"))
    _one_line_exit(proc, 3, "read-only")
    # Given writable places for its own files (a tmpfs on /run, here), the
    # rehearsal of the read-only system works.
    proc = _cli(
        scenario,
        *prefix,
        args=(
            "--no-services",
            "-o",
            "APT::Rehearse::Cache-Dir=/run/rel-cache",
            "-o",
            "APT::Rehearse::Log-Dir=/run/rel-log",
            "install",
            "rel-clean",
        ),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


NESTED_OVERLAY = r"""
set -e
S=$SCRATCH
mount -t tmpfs tmpfs "$S"
mkdir -p "$S/u1" "$S/w1" "$S/m1" "$S/u2" "$S/w2" "$S/m2"
mount -t overlay overlay -o lowerdir="$TREE",upperdir="$S/u1",workdir="$S/w1" "$S/m1"
mount -t overlay overlay -o lowerdir="$S/m1",upperdir="$S/u2",workdir="$S/w2" "$S/m2"
exec "$@"
"""


@pytest.mark.case("unsupported: root on a filesystem overlayfs refuses")
def test_root_overlayfs_refuses(scenario) -> None:  # noqa: ANN001
    """A root that is already two overlays deep: the kernel refuses a third."""
    scratch = scenario.base / "nested"
    scratch.mkdir(exist_ok=True)
    nested = scratch / "m2"
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "env",
        f"SCRATCH={scratch}",
        f"TREE={scenario.tree}",
        "sh",
        "-c",
        NESTED_OVERLAY,
        "sh",
        "env",
        f"PYTHONPATH={SRC}",
        *rel_run.cli_argv(nested, scenario.log, scenario.cache, "--no-services", "install", "rel-clean"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    _one_line_exit(proc, 3, "overlay")
    os.rmdir(scratch)
