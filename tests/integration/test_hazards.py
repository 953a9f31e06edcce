"""System hazards on a real bookworm tree: lost shared libraries, the boot
chain, and conffiles in detail (dpkg's and ucf's).

The libraries and the programs under /opt are compiled here with gcc; the
packages are built with dpkg-deb and served from a local repository; the tree
has the real ucf (the "frontends" variant), and a real loop device stands for
the disk grub-install would write to.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import assert_host_clean, host_snapshot, run_cli, run_json
from lib.elf import compile_library, compile_program
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, dpkg_status_digest, install_into, tree_hash

pytestmark = pytest.mark.integration

LIBDIR = "/usr/lib/x86_64-linux-gnu"
CONF_V1 = "a=1\nb=2\n"
CONF_LOCAL = "a=1\nb=2\nsecret=hunter2\n"
CONF_V2 = "a=1\nb=3\nc=4\n"
UCF_V1 = "x=1\n"
UCF_LOCAL = "x=1\nlocal=yes-hunter3\n"
UCF_V2 = "x=2\n"
UCF_POSTINST = "ucf /usr/share/rh-ucf/rh-ucf.conf /etc/rh-ucf.conf\nucfr rh-ucf /etc/rh-ucf.conf\n"
GRUB_CFG = (
    "mkdir -p /boot/grub\nprintf 'menuentry rh {{\\n linux /boot/vmlinuz-{v} root=/dev/vda1\\n"
    " initrd /boot/initrd.img-{v}\\n}}\\n' > /boot/grub/grub.cfg\n"
)


def _compile(work: Path) -> dict[str, bytes]:
    """Two libraries with sonames, and a program linked against each."""
    built = {}
    for lib in ("foo", "bar"):
        built[f"lib{lib}"] = compile_library(work, f"lib{lib}.so.1")
        built[f"tool-{lib}"] = compile_program(work, f"tool-{lib}", f"lib{lib}.so.1")
    return built


def _packages(debs: Path, built: dict[str, bytes], device: str) -> tuple[list[Path], list[Path]]:
    foo = {f"{LIBDIR}/libfoo.so.1": built["libfoo"]}
    v1 = [
        build_deb(debs, "libfoo1", "1.0", files=foo),
        build_deb(debs, "libbar1", "1.0", files={f"{LIBDIR}/libbar.so.1": built["libbar"]}),
        build_deb(
            debs,
            "rh-grub",
            "1.0",
            files={
                "/usr/sbin/grub-install": '#!/bin/sh\necho "rh-grub: installing to $1"\ndd if=/dev/zero of="$1" bs=512 count=1 conv=notrunc\n'
            },
        ),
        build_deb(debs, "rh-bootloader", "1.0", depends="rh-grub"),
        build_deb(debs, "rh-initramfs", "1.0", files={"/usr/sbin/update-initramfs": "#!/bin/sh\nexit 0\n"}),
        build_deb(debs, "rh-kernel-bad", "1.0"),
        build_deb(debs, "rh-kernel-good", "1.0"),
        build_deb(debs, "rh-conf", "1.0", conffiles={"/etc/rh-conf.conf": CONF_V1}),
        build_deb(
            debs, "rh-ucf", "1.0", depends="ucf", files={"/usr/share/rh-ucf/rh-ucf.conf": UCF_V1}, postinst=UCF_POSTINST
        ),
    ]
    v2 = [
        # The same soname from a renamed package (as in the t64 transition).
        build_deb(debs, "libfoo1t64", "1.0", files=foo, conflicts="libfoo1", replaces="libfoo1", provides="libfoo1"),
        build_deb(debs, "rh-bootloader", "2.0", depends="rh-grub", postinst=f"grub-install {device}\n"),
        build_deb(
            debs,
            "rh-kernel-bad",
            "2.0",
            files={"/boot/vmlinuz-9.9-rh": "kernel\n"},
            postinst="update-initramfs -c -k 9.9-rh\n" + GRUB_CFG.format(v="9.9-rh"),
        ),
        build_deb(
            debs,
            "rh-kernel-good",
            "2.0",
            files={"/boot/vmlinuz-9.8-rh": "kernel\n"},
            postinst="update-initramfs -c -k 9.8-rh\necho initrd > /boot/initrd.img-9.8-rh\n"
            + GRUB_CFG.format(v="9.8-rh"),
        ),
        # Not installed before: its efibootmgr lands during the run and must be recorded too.
        build_deb(
            debs,
            "rh-efitools",
            "1.0",
            files={"/usr/bin/efibootmgr": "#!/bin/sh\necho 'efibootmgr: cannot write EFI variables' >&2\nexit 1\n"},
            postinst="efibootmgr --create --disk /dev/vda --label debian\n",
        ),
        # A postinst that fetches something, as font and firmware installers do.
        build_deb(
            debs,
            "rh-netfetch",
            "1.0",
            postinst='python3 -c "import urllib.request; '
            "urllib.request.urlopen('http://deb.debian.org/debian/', timeout=20)\"\n",
        ),
        build_deb(debs, "rh-conf", "2.0", conffiles={"/etc/rh-conf.conf": CONF_V2}),
        build_deb(
            debs, "rh-ucf", "2.0", depends="ucf", files={"/usr/share/rh-ucf/rh-ucf.conf": UCF_V2}, postinst=UCF_POSTINST
        ),
    ]
    return v1, v2


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scenario(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-hazards-", dir="/var/tmp"))
    device = None
    try:
        tree = bookworm_tree(base / "tree", variant="frontends")
        built = _compile(base / "cc")
        disk = base / "disk.img"
        disk.write_bytes(os.urandom(1 << 20))
        device = subprocess.run(
            ["losetup", "--find", "--show", str(disk)], check=True, capture_output=True, text=True
        ).stdout.strip()
        v1, v2 = _packages(base / "debs", built, device)
        install_into(tree, v1)
        # Libraries come in as dependencies, as on a real system.
        subprocess.run(["chroot", str(tree), "apt-mark", "auto", "libfoo1", "libbar1"], check=True, capture_output=True)
        for name in ("tool-foo", "tool-bar"):
            target = tree / "opt/vendor/bin" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(built[name])
            target.chmod(0o755)
        (tree / "etc/rh-conf.conf").write_text(CONF_LOCAL)
        (tree / "etc/rh-ucf.conf").write_text(UCF_LOCAL)
        repo = LocalRepo(base / "repo")
        for deb in v1 + v2:
            repo.add(deb)
        repo.publish()
        serve_to_tree(tree, repo)
        yield {"tree": tree, "base": base, "device": device, "disk": disk}
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(base, ignore_errors=True)


def rehearse(info: dict, *args: str):
    before_tree, before_status, host = tree_hash(info["tree"]), dpkg_status_digest(info["tree"]), host_snapshot()
    proc, document = run_json(
        "--root", str(info["tree"]), "--no-services", "-o", f"APT::Rehearse::Log-Dir={info['base']}/log", *args
    )
    assert tree_hash(info["tree"]) == before_tree
    assert dpkg_status_digest(info["tree"]) == before_status
    assert_host_clean(host)
    return proc, document


def _of(document: dict, check: str) -> list[dict]:
    return [f for f in document["findings"] if f["check"] == check]


def test_program_under_opt_loses_a_library_of_a_removed_package(scenario: dict) -> None:
    proc, document = rehearse(scenario, "remove", "libbar1")
    assert proc.returncode == 10, (proc.stderr, document["findings"])
    [finding] = _of(document, "library")
    assert finding["severity"] == "block"
    assert finding["message"] == (
        "/opt/vendor/bin/tool-bar: libbar.so.1 not found after the upgrade; " "it came from libbar1, which is removed"
    )
    assert finding["details"]["package"] == "libbar1"
    figures = {row["object"]: row for row in document["libraries"]["per_object"]}
    assert figures["/opt/vendor/bin/tool-bar"]["missing_after"] == ["libbar.so.1"]
    assert figures["/opt/vendor/bin/tool-bar"]["resolved_before"] == figures["/opt/vendor/bin/tool-bar"]["needs"]
    assert figures["/opt/vendor/bin/tool-foo"]["missing_after"] == []


def test_same_soname_from_a_renamed_package_is_no_false_alarm(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "libfoo1t64")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert {(c["package"], c["action"]) for c in document["transaction"]["changes"]} >= {
        ("libfoo1", "remove"),
        ("libfoo1t64", "install"),
    }
    assert not _of(document, "library")
    figures = {row["object"]: row for row in document["libraries"]["per_object"]}
    assert figures["/opt/vendor/bin/tool-foo"]["missing_after"] == []


def test_grub_install_is_recorded_not_run(scenario: dict) -> None:
    disk_before = _sha256(scenario["disk"])
    proc, document = rehearse(scenario, "install", "rh-bootloader")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert not _of(document, "script-failure")
    [finding] = [f for f in _of(document, "boot") if "Boot-Command" in f["kinds"]]
    assert finding["message"].startswith(f"would run grub-install {scenario['device']} (from rh-bootloader postinst)")
    assert document["boot"]["recorded_commands"] == [
        {"package": "rh-bootloader", "script": "postinst", "command": f"grub-install {scenario['device']}"}
    ]
    assert _sha256(scenario["disk"]) == disk_before  # the device the script named is untouched


def test_a_command_installed_by_the_run_is_recorded_too(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-efitools")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert document["boot"]["recorded_commands"] == [
        {
            "package": "rh-efitools",
            "script": "postinst",
            "command": "efibootmgr --create --disk /dev/vda --label debian",
        }
    ]


def test_a_script_that_reaches_for_the_network_is_reported_as_such(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-netfetch")
    assert proc.returncode == 0, (
        proc.stderr,
        document["findings"],
    )  # a warning: the sandbox's limit, not the package's
    [finding] = [f for f in document["findings"] if f["severity"] != "info"]
    assert finding["kinds"] == ["Needs-Network"] and finding["severity"] == "warn"
    assert "reaching for the network, which the sandbox does not have" in finding["message"]


def test_kernel_without_initramfs_and_dangling_grub_entry_block(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-kernel-bad")
    assert proc.returncode == 10, (proc.stderr, document["findings"])
    messages = sorted(f["message"] for f in _of(document, "boot") if "Boot-Chain" in f["kinds"])
    assert messages == [
        "/boot/grub/grub.cfg names the initrd /boot/initrd.img-9.9-rh, which would not exist after the upgrade",
        "kernel 9.9-rh: its initramfs /boot/initrd.img-9.9-rh was not built (initramfs-tools); the machine may not boot it",
    ]


def test_kernel_with_its_initramfs_passes(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-kernel-good")
    assert proc.returncode == 0, (proc.stderr, document["findings"])
    assert not _of(document, "boot")
    assert document["boot"]["kernels"]["9.8-rh"]["initrd_bytes"] == len("initrd\n")
    assert {r["path"] for r in document["boot"]["references"] if r["exists"]} == {
        "/boot/vmlinuz-9.8-rh",
        "/boot/initrd.img-9.8-rh",
    }


def test_dpkg_conffile_prompt_with_diff_in_the_saved_report_only(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-conf")
    [finding] = _of(document, "conffile")
    details = finding["details"]
    assert details["leftover"] == "/etc/rh-conf.conf.dpkg-dist" and details["tool"] == "dpkg"
    assert (details["added"], details["removed"]) == (2, 2)
    assert "-secret=hunter2" in details["diff"] and "+c=4" in details["diff"]
    assert "leaves the new version as /etc/rh-conf.conf.dpkg-dist (+2 -2 lines" in finding["message"]
    # The terminal report never shows the content; the saved one is root:adm 0640.
    text = run_cli(
        "--root",
        str(scenario["tree"]),
        "--no-services",
        "-o",
        f"APT::Rehearse::Log-Dir={scenario['base']}/log",
        "install",
        "rh-conf",
    )
    assert "/etc/rh-conf.conf" in text.stdout and "hunter2" not in text.stdout + text.stderr
    saved = sorted((scenario["base"] / "log").glob("*.json"))
    assert saved and all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in saved)


def test_ucf_conffile_prompt(scenario: dict) -> None:
    proc, document = rehearse(scenario, "install", "rh-ucf")
    assert proc.returncode == 0, (proc.stderr, document["findings"])  # a warning
    [finding] = _of(document, "conffile")
    assert finding["severity"] == "warn"
    assert finding["subject"] == "rh-ucf"
    assert finding["details"]["leftover"] == "/etc/rh-ucf.conf.ucf-dist" and finding["details"]["tool"] == "ucf"
    assert finding["message"].startswith("/etc/rh-ucf.conf: changed locally and by the new rh-ucf; ucf will ask")
    assert "+x=2" in finding["details"]["diff"]
    assert document["conffile_leftovers"][0]["leftover"] == "/etc/rh-ucf.conf.ucf-dist"
