from __future__ import annotations

from apt_rehearse.checks import state as checks
from apt_rehearse.model.package_facts import ConffilePrompt, RemovalFacts
from apt_rehearse.model.replay_result import ReplayResult
from apt_rehearse.model.policy import apply_policy, verdict
from apt_rehearse.model.transaction import Change, Transaction, find_successors

DPKG_OUTPUT = """\
Preparing to unpack .../debs/0/rh-fail_2.0_all.deb ...
Unpacking rh-fail (2.0) over (1.0) ...
Preparing to unpack .../debs/0/libfoo1_1.2_amd64.deb ...
Unpacking libfoo1:amd64 (1.2) over (1.1) ...
Setting up libfoo1:amd64 (1.2) ...
Setting up rh-fail (2.0) ...
rh-fail: cannot migrate the database
dpkg: error processing package rh-fail (--configure):
 installed rh-fail package post-installation script subprocess returned error exit status 3
Preparing to unpack .../x/rh-pre_2.0_all.deb ...
dpkg: error processing archive /run/apt-rehearse/debs/0/rh-pre_2.0_all.deb (--unpack):
 new rh-pre package pre-installation script subprocess returned error exit status 1
Configuration file '/etc/rh-conf.conf'
 ==> Modified (by you or by a script) since installation.
Errors were encountered while processing:
 rh-fail
"""


# apt's status lines for that run (APT::Status-Fd), in the form a real
# apt-get printed them for a failing postinst and preinst.
STATUS_LINES = [
    "pmstatus:rh-fail:40:Configuring rh-fail (all)",
    "pmerror:rh-fail:42.8571:installed rh-fail package post-installation script subprocess returned error exit status 3",
    "pmerror:/run/apt-rehearse/debs/0/rh-pre_2.0_all.deb:57.1429:new rh-pre package pre-installation script "
    "subprocess returned error exit status 1",
]


def test_script_failures_name_package_script_status_and_output() -> None:
    failures = {f["package"]: f for f in checks.script_failures(STATUS_LINES, DPKG_OUTPUT)}
    assert set(failures) == {"rh-fail", "rh-pre"}
    assert failures["rh-fail"]["script"] == "postinst"
    assert failures["rh-fail"]["exit_status"] == 3
    assert failures["rh-fail"]["dpkg_action"] == "--configure"
    assert "rh-fail: cannot migrate the database" in failures["rh-fail"]["output_tail"]
    assert failures["rh-pre"]["script"] == "preinst"
    assert failures["rh-pre"]["dpkg_action"] == "--unpack"


def test_script_failures_come_from_apts_status_lines() -> None:
    # dpkg's English "error processing" lines alone are not a failure: apt's pmerror lines are.
    assert checks.script_failures([], DPKG_OUTPUT) == []
    # An architecture-qualified name keeps its colon; the bare name is the package.
    line = "pmerror:libfoo1:amd64:12.5:installed libfoo1:amd64 package post-installation script subprocess was killed by signal (Terminated)"
    [failure] = checks.script_failures([line], "Setting up libfoo1:amd64 (1.2) ...\nlibfoo1: migrating\n")
    assert (failure["package"], failure["script"], failure["signal"]) == ("libfoo1", "postinst", "Terminated")
    assert failure["dpkg_action"] == "--configure" and failure["output_tail"][-1] == "libfoo1: migrating"


def test_segments_strip_architecture() -> None:
    segments = checks.segment_output(DPKG_OUTPUT)
    assert "libfoo1" in segments and "Setting up libfoo1:amd64 (1.2) ..." in segments["libfoo1"]


def _tx(*changes: Change) -> Transaction:
    return Transaction(list(changes))


def test_removal_marks_manual_service_and_module() -> None:
    tx = _tx(
        Change("libapache2-mod-php8.2", "amd64", "8.2.29-1", None, "remove", manual=True),
        Change("libold1", "amd64", "1.0", None, "remove"),
        Change("asked", "amd64", "1.0", None, "purge", manual=True, requested=True),
    )
    facts = {"libapache2-mod-php8.2:amd64": RemovalFacts([], ["apache: /usr/lib/apache2/modules/libphp8.2.so"])}
    findings = {f.subject: f for f in apply_policy(checks.removal_findings(tx, facts), lambda key, default: default)}
    php = findings["libapache2-mod-php8.2"]
    assert php.severity == "block"
    assert "Remove-Module" in php.kinds and "Remove-Manual" in php.kinds
    assert "REMOVED" in php.message and "apache module" in php.message
    assert findings["libold1"].severity == "info"
    assert findings["asked"].severity == "info" and "PURGED" in findings["asked"].message


def test_policy_can_soften_and_harden() -> None:
    tx = _tx(Change("tool", "amd64", "1.0", None, "remove", manual=True))
    config = {"APT::Rehearse::Policy::Remove-Manual": "warn"}
    [finding] = apply_policy(checks.removal_findings(tx, {}), lambda key, default: config.get(key, default))
    assert finding.severity == "warn"
    config = {"APT::Rehearse::Policy::Remove": "block", "APT::Rehearse::Policy::Remove-Manual": "nonsense"}
    [finding] = apply_policy(checks.removal_findings(tx, {}), lambda key, default: config.get(key, default))
    assert finding.severity == "block"


def _replay(after: dict, before: dict, output: str = "", status: int = 0) -> ReplayResult:
    return ReplayResult.from_json(
        {
            "before": before,
            "after": after,
            "apt": {"output": output, "exit_status": status, "timed_out": False, "status_lines": []},
            "audit": {"exit_status": 0, "output": ""},
            "check": {"exit_status": 0, "output": ""},
        }
    )


def test_exact_replay_has_no_findings() -> None:
    tx = _tx(
        Change("a", "amd64", "1", "2", "upgrade"),
        Change("b", "all", "1", None, "remove"),
        Change("c", "amd64", None, "3", "install"),
    )
    before = {
        "a:amd64": {"version": "1", "status": "ii "},
        "b:all": {"version": "1", "status": "ii "},
        "z:amd64": {"version": "9", "status": "ii "},
    }
    after = {
        "a:amd64": {"version": "2", "status": "ii "},
        "b:all": {"version": "1", "status": "rc "},
        "c:amd64": {"version": "3", "status": "ii "},
        "z:amd64": {"version": "9", "status": "ii "},
    }
    assert checks.state_findings(tx, _replay(after, before)) == []


def test_mismatch_and_half_configured_are_found() -> None:
    tx = _tx(Change("a", "amd64", "1", "2", "upgrade"))
    before = {"a:amd64": {"version": "1", "status": "ii "}, "z:amd64": {"version": "9", "status": "ii "}}
    after = {"a:amd64": {"version": "2", "status": "iF "}, "z:amd64": {"version": "9", "status": "rc "}}
    findings = checks.state_findings(tx, _replay(after, before))
    kinds = {f.check: f for f in findings}
    assert "package-state" in kinds and "half-configured" in kinds["package-state"].message
    assert kinds["replay-mismatch"].details["differences"] == [{"package": "z:amd64", "expected": "9", "actual": None}]


def test_a_purge_that_left_the_config_files_is_a_mismatch() -> None:
    tx = _tx(Change("p", "amd64", "1", None, "purge"), Change("r", "amd64", "1", None, "remove"))
    before = {"p:amd64": {"version": "1", "status": "ii "}, "r:amd64": {"version": "1", "status": "ii "}}
    removed = {"p:amd64": {"version": "1", "status": "rc "}, "r:amd64": {"version": "1", "status": "rc "}}
    [finding] = checks.state_findings(tx, _replay(removed, before))
    assert finding.check == "replay-mismatch"
    assert finding.details["differences"] == [{"package": "p:amd64", "expected": "purged", "actual": "config-files"}]
    purged = {"r:amd64": {"version": "1", "status": "rc "}}  # dpkg forgets a purged package
    assert checks.state_findings(tx, _replay(purged, before)) == []


def test_an_upgrade_that_changes_the_architecture_is_no_mismatch() -> None:
    # bookworm -> trixie: linux-libc-dev goes amd64 -> all, python3-tomli all -> amd64.
    tx = _tx(
        Change("linux-libc-dev", "all", "6.1.187-1", "6.12.118-1", "upgrade"),
        Change("python3-tomli", "amd64", "2.0.1-2", "2.2.1-2+b1", "upgrade"),
    )
    before = {
        "linux-libc-dev:amd64": {"version": "6.1.187-1", "status": "ii "},
        "python3-tomli:all": {"version": "2.0.1-2", "status": "ii "},
    }
    after = {
        "linux-libc-dev:all": {"version": "6.12.118-1", "status": "ii "},
        "python3-tomli:amd64": {"version": "2.2.1-2+b1", "status": "ii "},
    }
    assert checks.state_findings(tx, _replay(after, before)) == []
    # ... but the old name:arch staying behind still is one.
    after["linux-libc-dev:amd64"] = {"version": "6.1.187-1", "status": "ii "}
    [finding] = checks.state_findings(tx, _replay(after, before))
    assert finding.details["differences"] == [
        {"package": "linux-libc-dev:amd64", "expected": None, "actual": "6.1.187-1"}
    ]


def test_a_renamed_manual_package_warns_instead_of_blocking() -> None:
    changes = [
        Change("libmagic1", "amd64", "1:5.44-3", None, "remove", manual=True),
        Change("libmagic1t64", "amd64", None, "1:5.46-5", "install"),
        Change("libncurses5-dev", "amd64", "6.4-4", None, "remove", manual=True),
        Change("libncurses-dev", "amd64", "6.4-4", "6.5-2", "upgrade", manual=True),
        Change("tool", "amd64", "1.0", None, "remove", manual=True),
        Change("libssl3", "amd64", "3.0.19-1", None, "remove"),
        Change("libssl3t64", "amd64", None, "3.5.4-1", "install"),
    ]
    provides = {
        "libmagic1t64": ["libmagic1"],
        "libncurses-dev": ["libncurses5-dev", "libtinfo-dev"],
        "libssl3t64": ["libssl3"],
    }
    tx = Transaction(changes, successors=find_successors(changes, provides))
    assert tx.successors == {"libmagic1": "libmagic1t64", "libncurses5-dev": "libncurses-dev", "libssl3": "libssl3t64"}
    findings = {f.subject: f for f in apply_policy(checks.removal_findings(tx, {}), lambda key, default: default)}
    magic = findings["libmagic1"]
    assert magic.severity == "warn" and magic.kinds == ["Remove", "Remove-Renamed"]
    assert "renamed: libmagic1t64 provides it and is marked automatic" in magic.message
    assert "marked automatic" not in findings["libncurses5-dev"].message
    assert findings["tool"].severity == "block"  # nothing provides it: lost
    ssl = findings["libssl3"]  # a side effect anyway: named, not raised
    assert (
        ssl.severity == "info" and ssl.kinds == ["Remove"] and ssl.message.endswith("(renamed: libssl3t64 provides it)")
    )
    assert verdict(list(findings.values())) == "block"


def test_successors_come_only_from_what_the_transaction_installs() -> None:
    changes = [
        Change("libold1", "amd64", "1", None, "remove", manual=True),
        Change("other", "amd64", "1", None, "remove"),
    ]
    # A provider that this transaction does not install (or removes) is no successor.
    assert find_successors(changes, {"other": ["libold1"], "elsewhere": ["libold1"]}) == {}


def test_conffile_prompts_merge_prediction_and_dpkg_output() -> None:
    findings = checks.conffile_findings([ConffilePrompt("rh-conf", "/etc/rh-conf.conf")], DPKG_OUTPUT)
    assert len(findings) == 1
    assert findings[0].details == {"path": "/etc/rh-conf.conf", "package": "rh-conf", "seen_in_replay": True}


def test_verdict_order() -> None:
    tx = _tx(Change("tool", "amd64", "1.0", None, "remove", manual=True))
    findings = apply_policy(checks.removal_findings(tx, {}), lambda key, default: default)
    assert verdict(findings) == "block"
    assert verdict([]) == "pass"


def test_out_of_room_detection() -> None:
    replay = _replay({}, {}, output="dpkg: error: No space left on device")
    assert checks.out_of_room(replay)
    assert not checks.out_of_room(_replay({}, {}, output="fine"))


def test_a_script_that_needs_the_network_is_not_blamed() -> None:
    output = (
        "Setting up rh-fonts (2.0) ...\n"
        "rh-fonts: downloading the fonts\n"
        "curl: (6) Could not resolve host: fonts.example.org\n"
        "dpkg: error processing package rh-fonts (--configure):\n"
        " installed rh-fonts package post-installation script subprocess returned error exit status 6\n"
        "dpkg: dependency problems prevent configuration of rh-site:\n"
        " rh-site depends on rh-fonts; however:\n"
        "  Package rh-fonts is not configured yet.\n\n"
        "dpkg: error processing package rh-site (--configure):\n"
        " dependency problems - leaving unconfigured\n"
        "Errors were encountered while processing:\n rh-fonts\n rh-site\n"
        "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    )
    replay = {
        "apt": {
            "output": output,
            "exit_status": 100,
            "timed_out": False,
            "status_lines": [
                "pmerror:rh-fonts:50:installed rh-fonts package post-installation script subprocess returned error exit status 6",
                "pmerror:rh-site:50:dependency problems - leaving unconfigured",
            ],
        },
        "before": {},
        "after": {
            "rh-fonts:all": {"version": "2.0", "status": "iF"},
            "rh-site:all": {"version": "2.0", "status": "iU"},
        },
        "audit": {"output": "The following packages are only half configured"},
        "check": {"exit_status": 0, "output": ""},
    }
    tx = Transaction(
        [Change("rh-fonts", "all", "1.0", "2.0", "upgrade"), Change("rh-site", "all", "1.0", "2.0", "upgrade")]
    )
    findings = checks.state_findings(tx, ReplayResult.from_json(replay))
    assert [(f.subject, f.kinds) for f in findings] == [("rh-fonts", ["Needs-Network"]), ("rh-site", ["Needs-Network"])]
    assert "Could not resolve host: fonts.example.org" in findings[0].message
    assert "because rh-fonts could not be rehearsed without the network" in findings[1].message
    apply_policy(findings, lambda key, default: default)
    assert {f.severity for f in findings} == {"warn"}


def test_a_script_refused_by_the_confinement_is_not_blamed() -> None:
    output = (
        "Setting up rh-tune (2.0) ...\n"
        'sysctl: setting key "vm.swappiness": Read-only file system\n'
        "dpkg: error processing package rh-tune (--configure):\n"
        " installed rh-tune package post-installation script subprocess returned error exit status 255\n"
        "dpkg: dependency problems prevent configuration of rh-db:\n"
        " rh-db depends on rh-tune; however:\n"
        "  Package rh-tune is not configured yet.\n\n"
        "dpkg: error processing package rh-db (--configure):\n"
        " dependency problems - leaving unconfigured\n"
        "Errors were encountered while processing:\n rh-tune\n rh-db\n"
        "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    )
    replay = {
        "apt": {
            "output": output,
            "exit_status": 100,
            "timed_out": False,
            "status_lines": [
                "pmerror:rh-tune:50:installed rh-tune package post-installation script subprocess returned error exit status 255",
                "pmerror:rh-db:50:dependency problems - leaving unconfigured",
            ],
        },
        "before": {},
        "after": {"rh-tune:all": {"version": "2.0", "status": "iF"}, "rh-db:all": {"version": "2.0", "status": "iU"}},
        "audit": {"output": ""},
        "check": {"exit_status": 0, "output": ""},
    }
    tx = Transaction(
        [Change("rh-tune", "all", "1.0", "2.0", "upgrade"), Change("rh-db", "all", "1.0", "2.0", "upgrade")]
    )
    findings = checks.state_findings(tx, ReplayResult.from_json(replay))
    assert [(f.subject, f.kinds) for f in findings] == [("rh-tune", ["Needs-Kernel"]), ("rh-db", ["Needs-Kernel"])]
    assert "which the sandbox refuses" in findings[0].message and "vm.swappiness" in findings[0].message
    assert "inside the sandbox's confinement" in findings[1].message
    apply_policy(findings, lambda key, default: default)
    assert {f.severity for f in findings} == {"warn"}


def test_what_the_confinement_refuses_is_recognised() -> None:
    refused = [
        'sysctl: permission denied on key "kernel.printk_ratelimit"',
        "sh: 1: cannot create /proc/sys/vm/swappiness: Read-only file system",
        "modprobe: ERROR: could not insert 'dummy': Operation not permitted",
        "date: cannot set date: Operation not permitted",
        "swapon: /swapfile: swapon failed: Operation not permitted",
        "mknod: /dev/sdz: Operation not permitted",
    ]
    for line in refused:
        assert checks.needs_kernel([line]), line
    for line in ("curl: (6) Could not resolve host: x", "E: something else failed", "mknod: /x: File exists"):
        assert checks.needs_kernel([line]) is None, line
