"""Libraries as ld.so finds them, boot-chain and conffile findings: pure logic
(the ELF files are compiled here with gcc; nothing needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from apt_rehearse.inside import bootchain
from apt_rehearse.inside import conffile_state
from apt_rehearse.checks import hazards as hazard_checks
from apt_rehearse.inside import libraries
from apt_rehearse.store import elf_table
from apt_rehearse.model.hazard_facts import HazardFacts
from apt_rehearse.model.policy import Finding
from apt_rehearse.model.transaction import Change, Transaction

LDCONFIG_P = """\
3 libs found in cache `/etc/ld.so.cache'
\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
\tlibz.so.1 (libc6) => /lib/i386-linux-gnu/libz.so.1
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
"""


def test_ldconfig_cache_and_triplet() -> None:
    cache = libraries.parse_ldconfig_cache(LDCONFIG_P)
    assert cache["libz.so.1"] == ["/lib/x86_64-linux-gnu/libz.so.1", "/lib/i386-linux-gnu/libz.so.1"]
    assert libraries.multiarch_triplet(cache) == "x86_64-linux-gnu"
    assert (
        libraries.expand_origin("$ORIGIN/../lib:${LIB}", "/opt/x/bin", "lib/x86_64-linux-gnu")
        == "/opt/x/bin/../lib:lib/x86_64-linux-gnu"
    )


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed (make check installs it)")


def _build(tmp: Path, *, rpath: str | None = None, runpath: bool = False) -> dict[str, Path]:
    (tmp / "lib.c").write_text("int rh(void) { return 1; }\n")
    (tmp / "main.c").write_text("int rh(void);\nint main(void) { return rh(); }\n")
    for where in ("a", "b"):
        (tmp / where).mkdir(exist_ok=True)
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-Wl,-soname,librh.so.1",
                "-o",
                str(tmp / where / "librh.so.1"),
                str(tmp / "lib.c"),
            ],
            check=True,
        )
    flags = [f"-L{tmp / 'a'}", "-l:librh.so.1"]
    if rpath:
        flags += [f"-Wl,-rpath,{rpath}", "-Wl,--enable-new-dtags" if runpath else "-Wl,--disable-new-dtags"]
    subprocess.run(["gcc", "-o", str(tmp / "prog"), str(tmp / "main.c"), *flags], check=True)
    return {"prog": tmp / "prog", "a": tmp / "a" / "librh.so.1", "b": tmp / "b" / "librh.so.1"}


@needs_gcc
def test_rpath_comes_before_the_cache_and_runpath_after_rpath(tmp_path: Path) -> None:
    files = _build(tmp_path, rpath="$ORIGIN/b")
    info = libraries.read_elf(str(files["prog"]))
    assert info is not None and info.needed[0] == "librh.so.1" and info.rpath == ["$ORIGIN/b"] and not info.runpath
    resolver = libraries.Resolver({"librh.so.1": [str(files["a"])]}, [], "lib/x86_64-linux-gnu")
    assert resolver.closure(str(files["prog"]))["libraries"]["librh.so.1"] == str(files["b"])
    files["b"].unlink()  # gone from the RPATH directory: the cache still has one
    assert resolver.closure(str(files["prog"]))["libraries"]["librh.so.1"] == str(files["a"])
    files["a"].unlink()
    assert resolver.closure(str(files["prog"]))["libraries"]["librh.so.1"] is None


@needs_gcc
def test_runpath_and_a_candidate_of_another_class_is_skipped(tmp_path: Path) -> None:
    files = _build(tmp_path, rpath="$ORIGIN/b", runpath=True)
    info = libraries.read_elf(str(files["prog"]))
    assert info is not None and info.runpath == ["$ORIGIN/b"] and not info.rpath
    files["b"].write_bytes(b"\x7fELF" + b"\x01" + b"\0" * 200)  # a 32-bit or broken object: the loader passes it by
    resolver = libraries.Resolver({}, [str(files["a"].parent)], "lib/x86_64-linux-gnu")
    assert resolver.closure(str(files["prog"]))["libraries"]["librh.so.1"] == str(files["a"])


@needs_gcc
def test_the_scan_after_is_the_one_before_when_nothing_it_rests_on_changed(tmp_path: Path) -> None:
    files = _build(tmp_path, rpath="$ORIGIN/b")
    before = libraries.scan([], files=[str(files["prog"])])
    assert before["objects"][str(files["prog"])]["libraries"]["librh.so.1"] == str(files["b"])
    assert {str(files["prog"]), str(files["b"]), libraries.LD_CACHE} <= set(before["fingerprints"])
    again = libraries.rescan(before, [])
    assert again.get("reused") and again["objects"] == before["objects"]
    files["b"].unlink()  # what it found is gone: scanned again, and found elsewhere or not at all
    after = libraries.rescan(before, [])
    assert not after.get("reused")
    assert after["objects"][str(files["prog"])]["libraries"]["librh.so.1"] != str(files["b"])
    files["a"].write_bytes(files["a"].read_bytes())  # untouched path, but the scan before did not rest on it
    assert libraries.rescan(libraries.scan([], files=[str(files["prog"])]), []).get("reused")


@needs_gcc
def test_elf_facts_are_remembered_by_file_and_kept_in_a_root_only_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "build").mkdir()
    files = _build(tmp_path / "build", rpath="$ORIGIN/b")
    first = libraries.scan([], files=[str(files["prog"])])
    reads: list[str] = []
    real = libraries.read_elf
    monkeypatch.setattr(libraries, "read_elf", lambda path: reads.append(path) or real(path))
    again = libraries.scan([], files=[str(files["prog"])], known=first["elf_seen"])
    assert reads == [] and again["objects"] == first["objects"]  # nothing parsed twice
    files["b"].write_bytes(files["b"].read_bytes())  # rewritten: a new ctime, read again
    libraries.scan([], files=[str(files["prog"])], known=first["elf_seen"])
    assert reads == [str(files["b"])]
    broken = {key: ["not", "a", "row"] for key in first["elf_seen"]}
    assert libraries.scan([], files=[str(files["prog"])], known=broken)["objects"] == first["objects"]
    if os.geteuid() != 0:
        pytest.skip("the ELF table is root's alone (nobody else saves one): run as root to check it is kept")
    cache = tmp_path / "cache"
    elf_table.save_elf_table(str(cache), first, again)
    assert elf_table.load_elf_table(str(cache)) == {**first["elf_seen"], **again["elf_seen"]}
    table = cache / "hashes" / elf_table.ELF_TABLE
    assert table.stat().st_mode & 0o077 == 0
    os.chmod(table, 0o646)  # writable by others: not trusted any more
    assert elf_table.load_elf_table(str(cache)) == {}


def _scan(objects: dict[str, dict[str, str | None]]) -> dict:
    return {
        "available": True,
        "objects": {
            p: {"direct": list(libs), "libraries": libs, "needed_by": {s: p for s in libs}}
            for p, libs in objects.items()
        },
    }


def test_lost_libraries_only_counts_what_was_found_before() -> None:
    before = _scan(
        {
            "/opt/a": {"libx.so.1": "/usr/lib/libx.so.1", "liby.so.1": None},
            "/opt/gone": {"libx.so.1": "/usr/lib/libx.so.1"},
        }
    )
    after = _scan({"/opt/a": {"libx.so.1": None, "liby.so.1": None}})
    assert libraries.lost_libraries(before, after) == [
        {"object": "/opt/a", "soname": "libx.so.1", "was": "/usr/lib/libx.so.1", "needed_by": "/opt/a"}
    ]
    tx = Transaction(changes=[Change("libx1", "amd64", "1", None, "remove")], root="/", request="remove libx1")
    losses = libraries.lost_libraries(before, after)
    [finding] = hazard_checks.lost_library_findings(tx, losses, {"/usr/lib/libx.so.1": "libx1"})
    assert finding.message == "/opt/a: libx.so.1 not found after the upgrade; it came from libx1, which is removed"


def _boot(
    kernels: dict, references: list, links: dict | None = None, generator: str | None = "initramfs-tools"
) -> dict:
    return {"kernels": kernels, "references": references, "links": links or {}, "generator": generator}


def test_boot_findings() -> None:
    kernel = {"kernel": "/boot/vmlinuz-2", "kernel_bytes": 9, "initrd": None, "initrd_bytes": None}
    old_broken = {"kernel": "/boot/vmlinuz-0", "kernel_bytes": 9, "initrd": None, "initrd_bytes": None}
    before = _boot(
        {"0": old_broken},
        [{"config": "g", "kind": "kernel", "path": "/boot/vmlinuz-0", "exists": False}],
        {"/vmlinuz": {"target": "boot/vmlinuz-1", "exists": True}},
    )
    after = _boot(
        {"0": old_broken, "2": kernel},
        [
            {"config": "g", "kind": "kernel", "path": "/boot/vmlinuz-0", "exists": False},
            {"config": "g", "kind": "initrd", "path": "/boot/initrd.img-2", "exists": False},
        ],
        {"/vmlinuz": {"target": "boot/vmlinuz-1", "exists": False}},
    )
    # The replay's JSON, as it crosses the sandbox's boundary: after-apt facts at the top.
    hazards = {
        "before": {"boot": before},
        "boot": after,
        "recorded_commands": [{"package": "grub-pc", "script": "postinst", "command": "grub-install /dev/vda"}],
    }
    tx = Transaction(changes=[], root="/", request="upgrade")
    messages = [f.message for f in hazard_checks.boot_findings(tx, HazardFacts.from_json(hazards))]
    assert messages == [
        "would run grub-install /dev/vda (from grub-pc postinst); recorded in the rehearsal, not run against this machine's disks or firmware",
        "kernel 2: its initramfs /boot/initrd.img-2 was not built (initramfs-tools); the machine may not boot it",
        "g names the initrd /boot/initrd.img-2, which would not exist after the upgrade",
        "/vmlinuz would point to boot/vmlinuz-1, which does not exist",
    ]
    # Without an initramfs generator, a kernel without an initrd is how the system boots.
    hazards["boot"] = _boot({"2": kernel}, [], generator=None)
    hazards["recorded_commands"] = []
    assert hazard_checks.boot_findings(tx, HazardFacts.from_json(hazards)) == []


def test_conffile_leftovers_with_diff(tmp_path: Path) -> None:
    (tmp_path / "x.conf").write_text("a=1\nsecret=s\n")
    (tmp_path / "x.conf.dpkg-dist").write_text("a=2\n")
    (tmp_path / "y.conf").write_text("new\n")
    (tmp_path / "y.conf.ucf-old").write_text("old\n")
    rows = conffile_state.new_leftovers([], [str(tmp_path / "x.conf.dpkg-dist"), str(tmp_path / "y.conf.ucf-old")])
    x, y = rows
    assert (x["tool"], x["added"], x["removed"]) == ("dpkg", 1, 2)
    assert f"--- {tmp_path}/x.conf (yours)" in x["diff"] and "+a=2" in x["diff"]
    assert (y["tool"], y["suffix"], y["added"], y["removed"]) == ("ucf", ".ucf-old", 1, 1)
    prompt = Finding(
        "conffile", ["Conffile-Prompt"], "x", f"{tmp_path}/x.conf: changed", {"path": str(tmp_path / "x.conf")}
    )
    new = hazard_checks.conffile_detail_findings(rows, [prompt])
    assert prompt.details["leftover"].endswith("x.conf.dpkg-dist") and "(+1 -2 lines" in prompt.message
    assert [f.kinds for f in new] == [["Conffile-Prompt"]]  # ucf's: no checksum predicted it
    assert "secret" not in prompt.message and "secret" not in new[0].message


def test_release_findings() -> None:
    hazards = {"before": {"autoremovable": ["a"]}, "autoremovable": ["a", "b"], "obsolete": ["old1", "old2"]}
    messages = [f.message for f in hazard_checks.release_findings(HazardFacts.from_json(hazards))]
    assert messages == [
        "2 package(s) stay installed that no source offers any more: old1, old2",
        "1 package(s) become auto-removable ('apt autoremove' would remove them): b",
    ]


def test_grub_probe_answers_are_found_by_the_shims_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "grub-probe"
    fake.write_text(
        '#!/bin/sh\ncase "$*" in\n  "--target=device /") echo /dev/vda1 ;;\n'
        '  "--device /dev/vda1 --target=fs_uuid") echo 1234-abcd ;;\n  *) exit 1 ;;\nesac\n'
    )
    fake.chmod(0o755)
    answers = bootchain.capture_grub_probe(str(fake), paths=("/",))
    assert answers[bootchain.grub_probe_key(["--target=device", "/"])] == (0, "/dev/vda1\n")
    assert answers[bootchain.grub_probe_key(["--device", "/dev/vda1", "--target=fs_uuid"])] == (0, "1234-abcd\n")
    assert answers[bootchain.grub_probe_key(["--target=fs", "/"])][0] == 1

    # The real shim, installed by the replay's own code, with its answers in
    # this test's directory instead of the sandbox's /run and its grub-probe
    # here instead of /usr/sbin (dpkg-divert is for the sandbox's dpkg only).
    answers_dir, shim = tmp_path / "answers", tmp_path / "sbin" / "grub-probe"
    shim.parent.mkdir()
    assert bootchain.GRUB_PROBE_ANSWERS in bootchain.GRUB_PROBE_SHIM
    monkeypatch.setattr(
        bootchain, "GRUB_PROBE_SHIM", bootchain.GRUB_PROBE_SHIM.replace(bootchain.GRUB_PROBE_ANSWERS, str(answers_dir))
    )
    monkeypatch.setattr(bootchain, "GRUB_PROBE_ANSWERS", str(answers_dir))
    monkeypatch.setattr(bootchain, "GRUB_PROBE", str(shim))
    monkeypatch.setattr(bootchain, "_divert", lambda path, rename: None)
    assert bootchain._install_grub_probe_shim(answers) is None

    def probe(*args: str) -> tuple[int, str]:
        proc = subprocess.run([str(shim), *args], capture_output=True, text=True, check=False, env=bootchain.PATH_ENV)
        return proc.returncode, proc.stdout

    # Found whatever order grub-mkconfig passes the options in.
    assert probe("--target=fs_uuid", "--device", "/dev/vda1") == (0, "1234-abcd\n")
    assert probe("--device", "/dev/vda1", "--target=fs_uuid") == (0, "1234-abcd\n")
    assert probe("/", "--target=device") == (0, "/dev/vda1\n")
    assert probe("--target=fs", "/") == (1, "")  # the host's grub-probe failed: so does the shim
    assert bootchain.unanswered_grub_probes() == []
    assert probe("--target=device", "/srv") == (1, "")  # never asked on the host
    assert bootchain.unanswered_grub_probes() == ["--target=device /srv"]


def test_a_diff_of_a_root_only_conffile_stays_out_of_the_report(tmp_path: Path) -> None:
    local = tmp_path / "debian.cnf"
    local.write_text("password = s3cret\n")
    local.chmod(0o600)
    (tmp_path / "debian.cnf.dpkg-dist").write_text("password =\n")
    [row] = conffile_state.new_leftovers([], [str(tmp_path / "debian.cnf.dpkg-dist")])
    assert row["diff"] is None and row["diff_withheld"] and (row["added"], row["removed"]) == (1, 1)
    assert "s3cret" not in repr(row)


def test_hazard_facts_from_the_replays_json() -> None:
    facts = HazardFacts.from_json(
        {
            "before": {
                "libraries": {"objects": {"a": 1}},
                "boot": {"generator": "dracut"},
                "kernel": {"sysctl": {}},
                "autoremovable": ["x"],
            },
            "libraries": {"objects": {"b": 2}},
            "boot": {"kernels": {"6.1": {}}},
            "kernel": {"modules": {}},
            "autoremovable": ["x", "y"],
            "kernel_owners": {"/etc/sysctl.d/a.conf": "a"},
            "obsolete": ["old"],
        }
    )
    assert facts is not None
    assert (facts.before.libraries, facts.after.libraries) == ({"objects": {"a": 1}}, {"objects": {"b": 2}})
    assert (facts.before.boot.generator, facts.after.boot.generator) == ("dracut", None)
    assert facts.after.boot.kernels == {"6.1": {}} and facts.before.boot.kernels == {}
    assert (facts.before.autoremovable, facts.after.autoremovable) == (["x"], ["x", "y"])
    assert facts.kernel_owners == {"/etc/sysctl.d/a.conf": "a"} and facts.obsolete == ["old"]
    assert facts.recorded_commands == [] and facts.conffile_leftovers == []
    # No hazards collected (a refused run): nothing to read, not empty facts that look like "all fine".
    assert HazardFacts.from_json(None) is None and HazardFacts.from_json({}) is None


def _init(target: str | None, exists: bool, systemd: bool = False) -> dict:
    return {"path": "/sbin/init", "target": target, "exists": exists, "systemd": systemd}


def test_a_system_left_without_init_is_a_boot_chain_finding() -> None:
    kernel = {"kernel": "/boot/vmlinuz-6", "kernel_bytes": 9, "initrd": "/boot/initrd.img-6", "initrd_bytes": 9}
    systemd = _init("/usr/lib/systemd/systemd", True, systemd=True)
    before = {**_boot({"6": kernel}, []), "init": systemd}
    gone = {**_boot({"6": kernel}, []), "init": _init("/sbin/init", False)}
    tx = Transaction(
        changes=[Change("systemd-sysv", "amd64", "252", None, "remove")], root="/", request="remove systemd-sysv"
    )
    [finding] = hazard_checks.boot_findings(tx, HazardFacts.from_json({"before": {"boot": before}, "boot": gone}))
    assert finding.kinds == ["Boot-Chain"] and finding.subject == "/sbin/init"
    assert finding.message == (
        "/sbin/init is gone after the upgrade: the next boot finds no init to start, at best the kernel's fallback shell on the console (removed: systemd-sysv)"
    )
    dangling = {**gone, "init": _init("/lib/sysvinit/init", False)}
    [finding] = hazard_checks.boot_findings(tx, HazardFacts.from_json({"before": {"boot": before}, "boot": dangling}))
    assert "points to /lib/sysvinit/init, which does not exist" in finding.message
    # Another init in its place (sysvinit-core) boots: not this check's to judge.
    other = {**gone, "init": _init("/lib/sysvinit/init", True)}
    assert hazard_checks.boot_findings(tx, HazardFacts.from_json({"before": {"boot": before}, "boot": other})) == []
    # No kernel of its own in /boot (a container, a VM given its kernel from outside): what starts it is not ours.
    container = {"before": {"boot": {**before, "kernels": {}}}, "boot": {**gone, "kernels": {}}}
    assert hazard_checks.boot_findings(tx, HazardFacts.from_json(container)) == []
    # A report from before the init was recorded: nothing to compare.
    old = {"before": {"boot": _boot({"6": kernel}, [])}, "boot": _boot({"6": kernel}, [])}
    assert hazard_checks.boot_findings(tx, HazardFacts.from_json(old)) == []
