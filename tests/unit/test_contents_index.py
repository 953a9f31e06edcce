"""The archive's Contents indexes, as plan/contents reads them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from apt_rehearse.plan import contents


def test_lines_name_the_packages_shipping_a_file_where_it_belongs() -> None:
    lines = [
        "usr/lib/x86_64-linux-gnu/libqux.so.1                        libs/libqux1,oldlibs/libqux1-compat",
        "usr/share/doc/rh/examples/rh-legacyd.service                doc/rh-doc",
        "lib/systemd/system/rh-legacyd.service                       net/rh-legacyd-ng",
        "usr/share/doc/libqux1/libqux.so.1                           doc/libqux-doc",
        "usr/bin/a file with spaces                                  misc/spaced",
        "garbage",
    ]
    found = contents.parse_lines(lines, {"libqux.so.1", "rh-legacyd.service", "a file with spaces"})
    assert found == {
        "libqux.so.1": {"libqux1", "libqux1-compat"},
        "rh-legacyd.service": {"rh-legacyd-ng"},
        "a file with spaces": {"spaced"},
    }


def test_index_files_are_this_architecture_s_and_all_not_udebs(tmp_path: Path) -> None:
    for name in (
        "deb.debian.org_debian_dists_trixie_main_Contents-amd64.lz4",
        "deb.debian.org_debian_dists_trixie_main_Contents-all.lz4",
        "deb.debian.org_debian_dists_trixie_main_Contents-arm64.lz4",
        "deb.debian.org_debian_dists_trixie_main_Contents-udeb-amd64.lz4",
        "deb.debian.org_debian_dists_trixie_main_binary-amd64_Packages.lz4",
    ):
        (tmp_path / name).write_bytes(b"")
    names = [Path(p).name for p in contents.index_files(str(tmp_path), "amd64")]
    assert names == [
        "deb.debian.org_debian_dists_trixie_main_Contents-all.lz4",
        "deb.debian.org_debian_dists_trixie_main_Contents-amd64.lz4",
    ]


def test_a_compressed_index_is_read_through_apt(tmp_path: Path) -> None:
    index = tmp_path / "example.org_debian_dists_x_main_Contents-amd64.gz"
    plain = tmp_path / "plain"
    plain.write_text("lib/systemd/system/rh-x.service   net/rh-x-ng\nusr/bin/other   misc/other\n")
    index.write_bytes(subprocess.run(["gzip", "-c", str(plain)], capture_output=True, check=True).stdout)
    assert contents.packages_shipping({"rh-x.service"}, str(tmp_path), "amd64") == {"rh-x.service": {"rh-x-ng"}}
    assert contents.packages_shipping({"rh-y.service"}, str(tmp_path), "amd64") == {}
