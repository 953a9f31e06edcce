"""What the upgrade would change in the kernel: sysctl.d, modules-load.d and
binfmt.d resolved as systemd resolves them at boot, compared before and after
(pure logic on directory trees made here; nothing needs root)."""

from __future__ import annotations

import os
from pathlib import Path

from apt_rehearse.checks import hazards as hazard_checks
from apt_rehearse.inside import kernel_settings
from apt_rehearse.model.policy import apply_policy, verdict


def _write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _link(root: Path, path: str, target: str) -> None:
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def _values(root: Path) -> dict[str, tuple[str, str]]:
    return {key: (s["value"], s["file"]) for key, s in kernel_settings.effective_sysctl(str(root)).items()}


def test_sysctl_precedence_same_name_earlier_dir_wins_and_files_apply_by_name(tmp_path: Path) -> None:
    _write(tmp_path, "/usr/lib/sysctl.d/10-a.conf", "vm.swappiness = 1\nkernel.pid_max = 4194304\n")
    _write(tmp_path, "/etc/sysctl.d/20-b.conf", "vm.swappiness = 2\n")
    _write(tmp_path, "/lib/sysctl.d/30-c.conf", "vm.swappiness = 3\n")  # a later name wins, whatever its directory
    _write(tmp_path, "/usr/lib/sysctl.d/50-redis.conf", "vm.overcommit_memory = 1\n")
    _write(tmp_path, "/run/sysctl.d/50-redis.conf", "vm.overcommit_memory = 2\n")  # /run hides /usr/lib
    _write(tmp_path, "/usr/local/lib/sysctl.d/60-local.conf", "net.core.somaxconn = 4096\n")
    _write(tmp_path, "/usr/lib/sysctl.d/60-local.conf", "net.core.somaxconn = 1\n")
    _write(tmp_path, "/usr/lib/sysctl.d/70-masked.conf", "kernel.sysrq = 1\n")
    _link(tmp_path, "/etc/sysctl.d/70-masked.conf", "/dev/null")  # the sysadmin's mask
    _write(tmp_path, "/usr/lib/sysctl.d/README", "vm.dirty_ratio = 5\n")  # not a .conf file
    assert _values(tmp_path) == {
        "vm.swappiness": ("3", "/lib/sysctl.d/30-c.conf"),
        "kernel.pid_max": ("4194304", "/usr/lib/sysctl.d/10-a.conf"),
        "vm.overcommit_memory": ("2", "/run/sysctl.d/50-redis.conf"),
        "net.core.somaxconn": ("4096", "/usr/local/lib/sysctl.d/60-local.conf"),
    }


def test_sysctl_later_assignment_wins_keys_are_normalised_and_globs_kept(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "/etc/sysctl.d/10-net.conf",
        (
            "# comment\n; another\n"
            "net.ipv4.ip_forward = 0\n"
            "net/ipv4/ip_forward=1\n"  # the same key with slashes; later wins
            "net/ipv4/conf/eth0.1/rp_filter = 2\n"  # a dot inside a name when slashes separate
            "-net.ipv6.conf.all.forwarding = 1\n"  # "-": ignore errors
            "net.ipv4.conf.*.rp_filter = 2\n"
            "-net.ipv4.conf.all.rp_filter\n"  # no assignment: a glob exclusion, not a value
            "net.ipv4.ip_local_port_range = 32768   60999\n"
        ),
    )
    settings = kernel_settings.effective_sysctl(str(tmp_path))
    assert settings["net.ipv4.ip_forward"]["value"] == "1"
    assert "net.ipv4.conf.eth0/1.rp_filter" in settings
    assert kernel_settings.proc_path("net.ipv4.conf.eth0/1.rp_filter") == "net/ipv4/conf/eth0.1/rp_filter"
    assert settings["net.ipv6.conf.all.forwarding"] == {
        "value": "1",
        "file": "/etc/sysctl.d/10-net.conf",
        "ignore_errors": True,
    }
    assert settings["net.ipv4.ip_forward"]["ignore_errors"] is False
    assert settings["net.ipv4.conf.*.rp_filter"]["value"] == "2"
    assert "net.ipv4.conf.all.rp_filter" not in settings
    assert settings["net.ipv4.ip_local_port_range"]["value"] == "32768   60999"
    assert kernel_settings.normalize_key("/net//ipv4/ip_forward") == "net.ipv4.ip_forward"


def test_etc_sysctl_conf_applies_last_unless_a_sysctl_d_link_already_is_it(tmp_path: Path) -> None:
    _write(tmp_path, "/etc/sysctl.conf", "vm.swappiness = 10\n")
    _write(tmp_path, "/usr/lib/sysctl.d/99-zz-vendor.conf", "vm.swappiness = 60\n")
    assert _values(tmp_path)["vm.swappiness"] == ("10", "/etc/sysctl.conf")  # procps: sysctl.conf last
    # Debian's link: applied in its place among the names, once.
    _link(tmp_path, "/etc/sysctl.d/99-sysctl.conf", "../sysctl.conf")
    assert _values(tmp_path)["vm.swappiness"] == ("60", "/usr/lib/sysctl.d/99-zz-vendor.conf")
    _write(tmp_path, "/etc/sysctl.conf", "vm.swappiness = 10\nvm.dirty_ratio = 5\n")
    assert _values(tmp_path)["vm.dirty_ratio"] == ("5", "/etc/sysctl.conf")  # named as the file the sysadmin edits


def test_modules_load_entries_with_etc_modules_and_precedence(tmp_path: Path) -> None:
    _write(tmp_path, "/etc/modules", "# /etc/modules\nloop\nbonding mode=1\n")
    _link(tmp_path, "/etc/modules-load.d/modules.conf", "../modules")
    _write(tmp_path, "/usr/lib/modules-load.d/br.conf", "br_netfilter\n; comment\n\nnf-conntrack\n")
    _write(tmp_path, "/usr/lib/modules-load.d/masked.conf", "dummy\n")
    _write(tmp_path, "/etc/modules-load.d/masked.conf", "")  # an empty file masks too
    _write(tmp_path, "/usr/lib/modules-load.d/zz.conf", "nf_conntrack\nloop\n")  # listed before: not twice
    modules = kernel_settings.effective_modules(str(tmp_path))
    assert {key: (m["module"], m["file"]) for key, m in modules.items()} == {
        "br_netfilter": ("br_netfilter", "/usr/lib/modules-load.d/br.conf"),
        "nf_conntrack": ("nf-conntrack", "/usr/lib/modules-load.d/br.conf"),
        "loop": ("loop", "/etc/modules"),
        "bonding": ("bonding", "/etc/modules"),
    }
    assert kernel_settings.parse_modules("# x\n  overlay  \n") == ["overlay"]


def test_binfmt_entries_are_named_by_the_field_after_the_delimiter(tmp_path: Path) -> None:
    assert kernel_settings.parse_binfmt(
        ":python3.11:M::\\xa7\\x0d\\x0d\\x0a::/usr/bin/python3.11:\n# c\n"
        "|qemu-arm|M|0|\\x7fELF|\\xff\\xff|/usr/libexec/qemu-binfmt/arm|F\n"
    ) == [
        ("python3.11", ":python3.11:M::\\xa7\\x0d\\x0d\\x0a::/usr/bin/python3.11:", "/usr/bin/python3.11"),
        (
            "qemu-arm",
            "|qemu-arm|M|0|\\x7fELF|\\xff\\xff|/usr/libexec/qemu-binfmt/arm|F",
            "/usr/libexec/qemu-binfmt/arm",
        ),
    ]
    _write(tmp_path, "/usr/lib/binfmt.d/a.conf", ":wine:M::MZ::/usr/bin/wine:\n")
    _write(tmp_path, "/etc/binfmt.d/b.conf", ":wine:M::MZ::/usr/local/bin/wine:\n")  # the same name later replaces it
    formats = kernel_settings.effective_binfmt(str(tmp_path))
    assert formats["wine"]["file"] == "/etc/binfmt.d/b.conf" and formats["wine"]["interpreter"] == "/usr/local/bin/wine"


def _tree(base: Path, name: str, files: dict[str, str]) -> str:
    root = base / name
    root.mkdir()
    for path, text in files.items():
        _write(root, path, text)
    return str(root)


def test_a_change_versus_no_change(tmp_path: Path) -> None:
    common = {
        "/usr/lib/sysctl.d/50-pid-max.conf": "kernel.pid_max = 4194304\n",
        "/etc/sysctl.conf": "vm.swappiness=10\n",
    }
    before = kernel_settings.collect(
        _tree(
            tmp_path,
            "before",
            {
                **common,
                "/usr/lib/sysctl.d/40-old.conf": "vm.max_map_count = 262144\nkernel.sysrq = 1\n",
                "/usr/lib/modules-load.d/old.conf": "dummy\n",
            },
        )
    )
    after = kernel_settings.collect(
        _tree(
            tmp_path,
            "after",
            {
                **common,
                # kernel.sysrq moves to another file with the same value: no change; vm.max_map_count changes.
                "/usr/lib/sysctl.d/40-old.conf": "vm.max_map_count = 1048576\n",
                "/usr/lib/sysctl.d/41-moved.conf": "kernel.sysrq=1\n",
                "/usr/lib/sysctl.d/30-rh-test.conf": "vm.overcommit_memory = 1\n",
                "/usr/lib/modules-load.d/rh.conf": "br_netfilter\n",
                "/usr/lib/binfmt.d/rh.conf": ":rh:E::rh::/usr/bin/rh-run:\n",
            },
        )
    )
    rows = kernel_settings.changes(before, after)
    assert [(r["kind"], r["key"], r["value"], r["was"], r["file"]) for r in rows] == [
        ("sysctl", "vm.max_map_count", "1048576", "262144", "/usr/lib/sysctl.d/40-old.conf"),
        ("sysctl", "vm.overcommit_memory", "1", None, "/usr/lib/sysctl.d/30-rh-test.conf"),
        ("modules", "br_netfilter", "load", None, "/usr/lib/modules-load.d/rh.conf"),
        ("modules", "dummy", None, "load", "/usr/lib/modules-load.d/old.conf"),
        ("binfmt", "rh", ":rh:E::rh::/usr/bin/rh-run:", None, "/usr/lib/binfmt.d/rh.conf"),
    ]
    # Nothing changed: nothing to report, even where the kernel runs with
    # something else than the configuration (kernel.pid_max is 32768 on a
    # host whose init never applied it): that is not the run's doing.
    assert kernel_settings.changes(before, before) == []
    assert kernel_settings.summary(after) == {"sysctl": 5, "modules": 1, "binfmt": 1}


def test_running_values_from_proc_sys_and_sys_module(tmp_path: Path) -> None:
    proc_sys, sys_module = tmp_path / "sys", tmp_path / "module"
    _write(proc_sys, "/vm/overcommit_memory", "0\n")
    _write(proc_sys, "/net/ipv4/ip_local_port_range", "32768\t60999\n")
    _write(proc_sys, "/net/ipv4/conf/eth0.1/rp_filter", "1\n")
    for name, value in (("all", "2"), ("lo", "2"), ("eth0", "1")):
        _write(proc_sys, f"/net/ipv4/conf/{name}/accept_redirects", value + "\n")
        _write(proc_sys, f"/net/ipv4/conf/{name}/rp_filter_same", "2\n")
    (sys_module / "nf_conntrack").mkdir(parents=True)
    rows = [
        {"kind": "sysctl", "key": "vm.overcommit_memory"},
        {"kind": "sysctl", "key": "net.ipv4.ip_local_port_range"},
        {"kind": "sysctl", "key": "net.ipv4.conf.eth0/1.rp_filter"},
        {"kind": "sysctl", "key": "net.ipv4.conf.*.accept_redirects"},
        {"kind": "sysctl", "key": "net.ipv4.conf.*.rp_filter_same"},
        {"kind": "sysctl", "key": "net.bridge.bridge-nf-call-iptables"},  # its module is not loaded
        {"kind": "modules", "key": "nf-conntrack"},
        {"kind": "modules", "key": "br_netfilter"},
        {"kind": "binfmt", "key": "rh"},
    ]
    running = kernel_settings.running(rows, str(proc_sys), str(sys_module), binfmt_dir=None)
    assert [r["running"] for r in running] == [
        "0",
        "32768 60999",
        "1",
        "varies: 1, 2",
        "2",
        None,
        "loaded",
        "not loaded",
        None,
    ]
    (tmp_path / "binfmt").mkdir()
    (tmp_path / "binfmt" / "rh").write_text("enabled\n")
    assert kernel_settings.running(rows[-1:], binfmt_dir=str(tmp_path / "binfmt"))[0]["running"] == "registered"


def test_binfmt_misc_is_looked_at_only_where_it_is_mounted(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "25 30 0:22 / /proc rw,nosuid - proc proc rw\n"
        "48 25 0:41 / /proc/sys/fs/binfmt_misc rw,relatime - autofs systemd-1 rw,fd=30\n"
    )
    assert not kernel_settings.binfmt_mounted(str(mountinfo))  # an automount point: a look would mount it
    with mountinfo.open("a") as handle:
        handle.write(
            "95 48 0:45 / /proc/sys/fs/binfmt_misc rw,nosuid,nodev,noexec,relatime - binfmt_misc binfmt_misc rw\n"
        )
    assert kernel_settings.binfmt_mounted(str(mountinfo))


def _row(**fields: object) -> dict:
    row = {
        "kind": "sysctl",
        "key": "vm.overcommit_memory",
        "value": "1",
        "was": None,
        "running": "0",
        "file": "/usr/lib/sysctl.d/30-redis.conf",
        "was_file": None,
        "ignore_errors": False,
    }
    row.update(fields)
    return row


def test_findings_name_key_value_running_file_and_package_and_only_inform() -> None:
    rows = [
        _row(),
        _row(key="kernel.pid_max", value="4194304", running="4194304", file="/etc/sysctl.d/x.conf"),
        _row(key="vm.swappiness", value="1", was="10", running=None),
        _row(key="vm.max_map_count", value=None, was="262144", running="262144", file="/usr/lib/sysctl.d/40-old.conf"),
        {
            "kind": "modules",
            "key": "br_netfilter",
            "value": "load",
            "was": None,
            "running": "not loaded",
            "file": "/usr/lib/modules-load.d/rh.conf",
            "was_file": None,
        },
        {
            "kind": "binfmt",
            "key": "rh",
            "value": ":rh:E::rh::/usr/bin/rh-run:",
            "was": None,
            "running": None,
            "file": "/usr/lib/binfmt.d/rh.conf",
            "was_file": None,
            "interpreter": "/usr/bin/rh-run",
        },
    ]
    owners = {
        "/usr/lib/sysctl.d/30-redis.conf": "redis-server",
        "/usr/lib/sysctl.d/40-old.conf": "rh-old",
        "/usr/lib/modules-load.d/rh.conf": "rh-net",
        "/usr/lib/binfmt.d/rh.conf": "rh-run",
    }
    findings = hazard_checks.kernel_findings(rows, owners)
    assert [f.message for f in findings] == [
        "the upgrade sets vm.overcommit_memory = 1 (now 0) through /usr/lib/sysctl.d/30-redis.conf, from "
        "redis-server, at the next boot or restart of systemd-sysctl",
        "the upgrade sets kernel.pid_max = 4194304 (as now) through /etc/sysctl.d/x.conf (which no package ships) "
        "at the next boot or restart of systemd-sysctl",
        "the upgrade sets vm.swappiness = 1 (the running value cannot be read; configured 10 until now) through "
        "/usr/lib/sysctl.d/30-redis.conf, from redis-server, at the next boot or restart of systemd-sysctl",
        "the upgrade no longer sets vm.max_map_count (now 262144), which /usr/lib/sysctl.d/40-old.conf, from rh-old, "
        "set to 262144: from the next boot on, the kernel's default applies",
        "the upgrade loads the kernel module br_netfilter (not loaded now) through /usr/lib/modules-load.d/rh.conf, "
        "from rh-net, at the next boot or restart of systemd-modules-load",
        "the upgrade registers the binary format rh for /usr/bin/rh-run (binfmt_misc is not mounted now) through "
        "/usr/lib/binfmt.d/rh.conf, from rh-run, at the next boot or restart of systemd-binfmt",
    ]
    first = findings[0]
    assert (first.check, first.kinds, first.subject) == ("kernel", ["Kernel-Settings"], "vm.overcommit_memory")
    assert {k: first.details[k] for k in ("key", "value", "running", "file", "package")} == {
        "key": "vm.overcommit_memory",
        "value": "1",
        "running": "0",
        "file": "/usr/lib/sysctl.d/30-redis.conf",
        "package": "redis-server",
    }
    apply_policy(findings, lambda _key, default: default)
    assert {f.severity for f in findings} == {"info"} and verdict(findings) == "pass"
    apply_policy(findings, lambda key, default: "block" if key == "APT::Rehearse::Policy::Kernel-Settings" else default)
    assert verdict(findings) == "block"  # the sysadmin may make it stop apt


def test_the_text_report_says_how_much_of_the_kernel_settings_was_compared() -> None:
    from apt_rehearse.store import report

    line = report._checked({"kernel": {"sysctl": 5, "modules": 1, "binfmt": 2}})
    assert line == "the kernel settings for the next boot (5 sysctl key(s), 1 module(s) to load, 2 binary format(s))"
