"""Where the uppers live: memory when the change fits, disk when it does not."""

from __future__ import annotations

from apt_rehearse.model.config import Settings
from apt_rehearse.sandbox.upper_place import disk_room_problem, read_meminfo, upper_fits_in_memory

GIB = 1 << 30


def memory(total: int, available: int) -> dict[str, int]:
    return {"MemTotal": total, "MemAvailable": available}


def test_a_release_upgrade_of_a_server_fits_in_memory() -> None:
    assert upper_fits_in_memory(600 << 20, Settings(), memory(24 * GIB, 20 * GIB))


def test_large_change_goes_to_disk() -> None:
    assert not upper_fits_in_memory(3 * GIB, Settings(), memory(64 * GIB, 60 * GIB))
    assert upper_fits_in_memory(3 * GIB, Settings(large_change_bytes=4 * GIB), memory(64 * GIB, 60 * GIB))


def test_a_small_machine_goes_to_disk_before_the_tmpfs_fills() -> None:
    # 2 GiB of RAM: the 50% tmpfs is 1 GiB; 1.2 GiB unpacked would run out of room
    assert not upper_fits_in_memory(1200 << 20, Settings(), memory(2 * GIB, 1800 << 20))
    # a busy machine: the cap is not reached, but half of what is available is
    assert not upper_fits_in_memory(600 << 20, Settings(), memory(8 * GIB, 1 * GIB))
    assert upper_fits_in_memory(400 << 20, Settings(), memory(8 * GIB, 1 * GIB))


def test_an_absolute_tmpfs_size() -> None:
    assert not upper_fits_in_memory(600 << 20, Settings(tmpfs_size=str(512 << 20)), memory(24 * GIB, 20 * GIB))
    assert upper_fits_in_memory(400 << 20, Settings(tmpfs_size=str(512 << 20)), memory(24 * GIB, 20 * GIB))


def test_meminfo_of_this_machine() -> None:
    info = read_meminfo()
    assert 0 < info["MemAvailable"] <= info["MemTotal"]


def test_a_disk_upper_never_crowds_the_hosts_file_system() -> None:
    assert disk_room_problem(6 * GIB, 200 * GIB, 256 * GIB) is None
    # 20 GiB free of 256: 5% (12.8 GiB) must stay free for the host's services
    assert disk_room_problem(6 * GIB, 20 * GIB, 256 * GIB) is None
    assert "would leave less than" in disk_room_problem(8 * GIB, 20 * GIB, 256 * GIB)
    # a small disk: 1 GiB stays free at the least
    assert disk_room_problem(1 * GIB, 2 * GIB, 10 * GIB) is None
    assert disk_room_problem(1 * GIB + 1, 2 * GIB, 10 * GIB) is not None
