"""Findings grouped into problems, removals judged by what the booted
rehearsal saw, causes with their file and line, and the fixes' names:
pure logic over findings and observations shaped as the real ones are."""

from __future__ import annotations

from pathlib import Path

from apt_rehearse.checks import problems as problem_checks
from apt_rehearse.checks.removals import apache_modules, judge_removals, php_extensions
from apt_rehearse.checks.services import service_findings
from apt_rehearse.model.observation import Observation
from apt_rehearse.model.policy import Finding, apply_policy
from apt_rehearse.model.transaction import Change, Transaction
from apt_rehearse.plan.fixes import package_names_for

PHP_MODULES = [
    "apache: /usr/lib/apache2/modules/libphp8.2.so",
    "apache: /etc/apache2/mods-available/php8.2.load",
]
MYSQL_MODULES = ["php: /usr/lib/php/20220829/mysqli.so", "php: /etc/php/8.2/mods-available/mysqli.ini"]


def _observation(
    units: dict[str, str],
    apache: list[str],
    php: list[str],
    pages: dict[str, dict] | None = None,
    sockets: list[dict] | None = None,
    references: list[dict] | None = None,
) -> Observation:
    return Observation.from_json(
        {
            "units": {name: {"load": "loaded", "active": state, "sub": "running"} for name, state in units.items()},
            "sockets": sockets or [],
            "http": pages or {},
            "config_tests": {
                "apache2ctl -M": {"exit_status": 0, "modules": apache},
                "php -m": {"exit_status": 0, "modules": php},
            },
            "probes": {},
            "journal": {},
            "socket_references": references or [],
        }
    )


def _removal(
    package: str, kinds: list[str], modules: list[str], services: list[str], replacement: str | None
) -> Finding:
    return Finding(
        "removal",
        kinds,
        package,
        f"{package} 1.0 would be REMOVED (manually installed; likely replaced by {replacement})",
        {"web_modules": modules, "enabled_services": services, "replacement": replacement},
    )


def _lamp_transaction(*extra: Change) -> Transaction:
    return Transaction(
        [
            Change("libapache2-mod-php8.2", "amd64", "8.2.29-1", None, "remove", manual=True),
            Change("php8.2-mysql", "amd64", "8.2.29-1", None, "remove", manual=True),
            Change("apache2", "amd64", "2.4.65-1", "2.4.65-3", "upgrade"),
            *extra,
        ],
        root="/nonexistent",
    )


PAGE = {"80/": {"status": 200, "content_type": "text/html", "sha256": "a", "php_source": False, "stable": True}}
SOURCE = {"80/": {"status": 200, "content_type": "text/plain", "sha256": "b", "php_source": True, "stable": True}}


def test_a_removal_whose_replacement_works_is_a_warning_that_names_it() -> None:
    tx = _lamp_transaction(
        Change("libapache2-mod-php8.4", "amd64", None, "8.4.11-1", "install"),
        Change("php8.4-mysql", "amd64", None, "8.4.11-1", "install"),
    )
    module = _removal(
        "libapache2-mod-php8.2", ["Remove-Module", "Remove-Manual"], PHP_MODULES, [], "libapache2-mod-php8.4"
    )
    mysql = _removal("php8.2-mysql", ["Remove-Module", "Remove-Manual"], MYSQL_MODULES, [], "php8.4-mysql")
    before = _observation({"apache2.service": "active"}, ["core_module", "php_module"], ["Core", "mysqli"], PAGE)
    after = _observation({"apache2.service": "active"}, ["core_module", "php_module"], ["Core", "mysqli"], PAGE)
    findings = [module, mysql] + service_findings(before, after, None)
    judge_removals(tx, findings, before, after, None)
    apply_policy(findings, lambda key, default: default)
    assert [(f.subject, f.kinds, f.severity) for f in findings] == [
        ("libapache2-mod-php8.2", ["Remove", "Remove-Replaced"], "warn"),
        ("php8.2-mysql", ["Remove", "Remove-Replaced"], "warn"),
    ]
    assert module.message == (
        "libapache2-mod-php8.2 1.0 would be REMOVED (replaced by libapache2-mod-php8.4: "
        "php_module still loads, the site answers the same)"
    )
    assert "PHP's mysqli still loads" in mysql.message
    # Warnings still make problems, with no package to add: the replacement is there.
    [first, second] = problem_checks.problems_of(findings, tx, before)
    assert first.severity == "warn" and not first.fix.packages


def test_the_same_removal_with_the_replacement_broken_still_blocks() -> None:
    tx = _lamp_transaction(Change("libapache2-mod-php8.4", "amd64", None, "8.4.11-1", "install"))
    module = _removal(
        "libapache2-mod-php8.2", ["Remove-Module", "Remove-Manual"], PHP_MODULES, [], "libapache2-mod-php8.4"
    )
    before = _observation({"apache2.service": "active"}, ["core_module", "php_module"], ["Core"], PAGE)
    after = _observation({"apache2.service": "active"}, ["core_module"], ["Core"], SOURCE)
    findings = [module] + service_findings(before, after, None)
    judge_removals(tx, findings, before, after, None)
    apply_policy(findings, lambda key, default: default)
    assert module.severity == "block" and "Remove-Replaced" not in module.kinds
    assert module.message.endswith("libapache2-mod-php8.4 is in the transaction, but Apache no longer loads php_module")
    # Without a booted rehearsal nothing shows what it did: it stays too.
    module = _removal("libapache2-mod-php8.2", ["Remove-Module"], PHP_MODULES, [], "libapache2-mod-php8.4")
    judge_removals(tx, [module], None, None, None)
    assert module.kinds == ["Remove-Module"] and "no services were booted" in module.message
    # A replacement the transaction does not install is no judgement: the removal is as it was.
    alone = _lamp_transaction()
    module = _removal("libapache2-mod-php8.2", ["Remove-Module"], PHP_MODULES, [], "libapache2-mod-php8.4")
    judge_removals(alone, [module], before, before, None)
    assert module.kinds == ["Remove-Module"] and "judged" not in module.details


def test_a_replaced_service_must_run_under_its_new_name() -> None:
    tx = Transaction(
        [
            Change("php8.2-fpm", "amd64", "8.2.29-1", None, "remove", manual=True),
            Change("php8.4-fpm", "amd64", None, "8.4.11-1", "install"),
        ],
        root="/nonexistent",
    )
    fpm = _removal("php8.2-fpm", ["Remove-Service", "Remove-Manual"], [], ["php8.2-fpm.service"], "php8.4-fpm")
    before = _observation({"php8.2-fpm.service": "active"}, [], [])
    running = _observation({"php8.4-fpm.service": "active"}, [], [])
    judge_removals(tx, [fpm], before, running, running)
    assert (
        fpm.kinds == ["Remove", "Remove-Replaced"]
        and "php8.4-fpm.service runs in place of php8.2-fpm.service" in fpm.message
    )
    fpm = _removal("php8.2-fpm", ["Remove-Service", "Remove-Manual"], [], ["php8.2-fpm.service"], "php8.4-fpm")
    stopped = _observation({"php8.4-fpm.service": "failed"}, [], [])
    judge_removals(tx, [fpm], before, running, stopped)  # runs after the upgrade, not after the reboot
    assert (
        "Remove-Service" in fpm.kinds
        and "php8.4-fpm.service does not run in place of php8.2-fpm.service" in fpm.message
    )


def test_three_unrelated_breakages_are_three_problems_the_costliest_first() -> None:
    tx = _lamp_transaction()
    module = _removal(
        "libapache2-mod-php8.2", ["Remove-Module", "Remove-Manual"], PHP_MODULES, [], "libapache2-mod-php8.4"
    )
    before = _observation(
        {"apache2.service": "active", "mariadb.service": "active", "ssh.service": "active"},
        ["core_module", "php_module"],
        ["Core"],
        PAGE,
        [
            {"proto": "tcp", "port": 80, "unit": "apache2.service"},
            {"proto": "tcp", "port": 3306, "unit": "mariadb.service"},
        ],
    )
    after = _observation(
        {"apache2.service": "active", "mariadb.service": "failed", "ssh.service": "active"},
        ["core_module"],
        ["Core"],
        SOURCE,
        [{"proto": "tcp", "port": 80, "unit": "apache2.service"}],
    )
    after.journal["mariadb.service"] = ["[ERROR] /usr/sbin/mariadbd: unknown variable 'query_cache_typo=1'"]
    before.config_tests["sshd -t"] = {"exit_status": 0, "output": []}
    after.config_tests["sshd -t"] = {
        "exit_status": 255,
        "output": ["/etc/ssh/sshd_config: line 12: Bad configuration option: Protocol1"],
    }
    lost = Finding(
        "library",
        ["Lost-Library"],
        "/usr/local/bin/report-tool",
        "/usr/local/bin/report-tool: libreport.so.1 not found after the upgrade; it came from libreport1",
        {
            "object": "/usr/local/bin/report-tool",
            "soname": "libreport.so.1",
            "package": "libreport1",
            "package_removed": False,
        },
    )
    findings = [module, lost] + service_findings(before, after, None)
    apply_policy(findings, lambda key, default: default)
    problems = problem_checks.problems_of(findings, tx, before)
    assert [(p.key, p.area, p.severity) for p in problems] == [
        ("service:ssh.service", "remote-access", "block"),
        ("service:mariadb.service", "data", "block"),
        ("removal:libapache2-mod-php8.2", "site", "block"),
        ("library:libreport.so.1", "system", "block"),
    ]
    ssh, mariadb, php, library = problems
    assert (ssh.cause.file, ssh.cause.line) == ("/etc/ssh/sshd_config", 12)
    assert mariadb.cause.text == "[ERROR] /usr/sbin/mariadbd: unknown variable 'query_cache_typo=1'"
    assert [f.kinds[0] for f in mariadb.findings] == ["Service-Failed", "Lost-Socket"]
    # The module, and the page that now serves PHP source, are the removal's.
    assert [f.kinds[0] for f in php.findings] == ["Remove-Module", "Module-Lost", "Http-Changed"]
    assert (
        php.title == "libapache2-mod-php8.2 is removed: Apache loses php_module; http://localhost:80/ serves PHP source"
    )
    assert php.fix.packages == ["libapache2-mod-php8.4"]
    assert library.title == "/usr/local/bin/report-tool no longer finds libreport.so.1"
    assert library.cause.text == "it came from libreport1" and not library.fix
    # Every finding above info is in exactly one problem.
    placed = [id(f) for p in problems for f in p.findings]
    assert sorted(placed) == sorted(id(f) for f in findings if f.severity != "info")


def test_a_config_line_pointing_at_a_removed_socket_is_the_cause_and_its_change_the_fix() -> None:
    reference = {
        "file": "/etc/nginx/sites-enabled/default",
        "line": 14,
        "text": "fastcgi_pass unix:/run/php/php8.2-fpm.sock;",
        "path": "/run/php/php8.2-fpm.sock",
    }
    before = _observation(
        {"nginx.service": "active"},
        [],
        [],
        PAGE,
        [{"proto": "tcp", "port": 80, "unit": "nginx.service"}],
        [{**reference, "exists": True, "beside": ["/run/php/php8.2-fpm.sock"]}],
    )
    bad_gateway = {"80/": {**PAGE["80/"], "status": 502}}
    after = _observation(
        {"nginx.service": "active"},
        [],
        [],
        bad_gateway,
        [{"proto": "tcp", "port": 80, "unit": "nginx.service"}],
        [{**reference, "exists": False, "beside": ["/run/php/php8.4-fpm.sock"]}],
    )
    findings = service_findings(before, after, None)
    apply_policy(findings, lambda key, default: default)
    dangling = next(f for f in findings if "Dangling-Socket" in f.kinds)
    assert dangling.message == (
        "/etc/nginx/sites-enabled/default line 14 points at /run/php/php8.2-fpm.sock, which existed before and does "
        "not after the upgrade (/run/php/php8.4-fpm.sock does)"
    )
    [problem] = problem_checks.problems_of(findings, Transaction([], root="/"), before)
    assert (problem.cause.file, problem.cause.line) == ("/etc/nginx/sites-enabled/default", 14)
    assert problem.area == "site" and len(problem.findings) == 2
    [diff] = problem.fix.diffs
    assert diff["diff"].splitlines()[-2:] == [
        "-fastcgi_pass unix:/run/php/php8.2-fpm.sock;",
        "+fastcgi_pass unix:/run/php/php8.4-fpm.sock;",
    ]


def test_daemons_name_the_file_and_line_they_reject() -> None:
    cases = {
        "AH00526: Syntax error on line 3 of /etc/apache2/sites-enabled/site.conf:": (
            "/etc/apache2/sites-enabled/site.conf",
            3,
        ),
        'nginx: [emerg] unknown directive "foo" in /etc/nginx/sites-enabled/default:12': (
            "/etc/nginx/sites-enabled/default",
            12,
        ),
        "ERROR: [/etc/php/8.4/fpm/pool.d/www.conf:7] unknown entry 'x'": ("/etc/php/8.4/fpm/pool.d/www.conf", 7),
        "/etc/ssh/sshd_config: line 12: Bad configuration option: Protocol1": ("/etc/ssh/sshd_config", 12),
        # Dovecot 2.4 on a kept 2.3 conf.d file (corpus, postfix-dovecot).
        "doveconf: Fatal: Error in configuration file /etc/dovecot/conf.d/10-auth.conf line 128: "
        "disable_plaintext_auth: Unknown setting: disable_plaintext_auth": ("/etc/dovecot/conf.d/10-auth.conf", 128),
        # BIND 9.20 on a kept named.conf.local (corpus, bind9).
        "/etc/bind/named.conf.local:4: option 'auto-dnssec' no longer exists": ("/etc/bind/named.conf.local", 4),
        "everything is fine": (None, None),
    }
    for text, (file, line) in cases.items():
        assert problem_checks.file_and_line([text])[:2] == (file, line), text


def test_modules_and_extensions_a_package_ships(tmp_path: Path) -> None:
    load = tmp_path / "etc/apache2/mods-available/php8.2.load"
    load.parent.mkdir(parents=True)
    load.write_text("# Conflicts: php5\nLoadModule php_module /usr/lib/apache2/modules/libphp8.2.so\n")
    assert apache_modules(str(tmp_path), ["/etc/apache2/mods-available/php8.2.load"]) == {"php_module"}
    # Without its .load file (a tree without /etc): the name the .so implies.
    assert apache_modules("/nonexistent", ["/usr/lib/apache2/modules/mod_rewrite.so"]) == {"rewrite_module"}
    assert php_extensions([m.split(": ")[1] for m in MYSQL_MODULES]) == {"mysqli"}


def test_library_package_names_follow_the_policy() -> None:
    assert package_names_for("libreport.so.1") == ["libreport1", "libreport1t64"]
    assert package_names_for("libfoo-1.2.so.0") == ["libfoo-1.2-0", "libfoo-1.2-0t64"]
    assert package_names_for("libgdbm2.so.6") == ["libgdbm2-6", "libgdbm2-6t64"]
    assert package_names_for("ld-linux-x86-64.so.2") == []


def test_fixes_are_verified_by_the_second_rehearsal() -> None:
    from apt_rehearse.checks import verified_fixes

    def problem(key: str, severity: str, fix: dict | None, findings: list[int] = [0]) -> dict:
        return {"key": key, "title": key, "severity": severity, "findings": findings, "fix": fix, "verified": None}

    first = {
        "id": "a" * 64,
        "verdict": "block",
        "transaction": {"changes": [{"package": "libqux", "action": "upgrade"}]},
        "problems": [
            problem("library:libqux.so.1", "block", {"packages": ["libqux1"], "diffs": [], "why": ""}),
            problem("removal:php8.2", "block", {"packages": ["php8.4", "libqux"], "diffs": [], "why": ""}),
            problem("service:x.service", "block", {"packages": ["x2"], "diffs": [], "why": ""}),
            problem(
                "site:nginx.service",
                "block",
                {"packages": [], "diffs": [{"path": "/etc/x", "diff": "-a\n+b\n"}], "why": ""},
            ),
        ],
    }
    assert verified_fixes.packages_to_add(first) == ["libqux1", "php8.4", "x2"]  # libqux is in the transaction
    second = {
        "findings": [{"message": "php8.2 1.0 would be REMOVED (replaced by php8.4: php_module still loads)"}],
        "problems": [problem("removal:php8.2", "warn", None), problem("service:x.service", "block", None)],
    }
    verified_fixes.verify(first, second)
    assert [p["verified"] for p in first["problems"]] == [True, True, False, None]
    assert (
        "what is left is a warning: php8.2 1.0 would be REMOVED (replaced by php8.4"
        in first["problems"][1]["verified_detail"]
    )
    assert first["problems"][3]["verified_detail"] == "a configuration change: apply the diff, then rehearse again"
    assert verified_fixes.real_run("dist-upgrade", [], None, ["php8.4"]) == "apt-get dist-upgrade php8.4"
    assert (
        verified_fixes.real_run("full-upgrade", [], "trixie", ["a"])
        == "with the sources switched to trixie: apt-get dist-upgrade a"
    )
    assert verified_fixes.real_run("remove", ["old"], None, ["new"]) == "apt-get remove old new+"


def test_renamed_packages_are_one_problem_and_a_php_binding_is_the_site() -> None:
    changes = [
        Change("libssl3", "amd64", "3.0.19-1", None, "remove", manual=True),
        Change("libssl3t64", "amd64", None, "3.5.4-1", "install"),
        Change("libgnutls30", "amd64", "3.7.9-2", None, "remove", manual=True),
        Change("libgnutls30t64", "amd64", None, "3.8.9-3", "install"),
        Change("php8.2-mysql", "amd64", "8.2.29-1", None, "remove", manual=True),
    ]
    from apt_rehearse.checks.state import removal_findings
    from apt_rehearse.model.package_facts import RemovalFacts
    from apt_rehearse.model.transaction import find_successors

    tx = Transaction(
        changes, successors=find_successors(changes, {"libssl3t64": ["libssl3"], "libgnutls30t64": ["libgnutls30"]})
    )
    facts = {"php8.2-mysql:amd64": RemovalFacts([], MYSQL_MODULES)}
    findings = apply_policy(removal_findings(tx, facts), lambda key, default: default)
    problems = problem_checks.problems_of(findings, tx)
    assert [(p.key, p.area, p.severity) for p in problems] == [
        ("removal:php8.2-mysql", "site", "block"),  # mysql in its name, but PHP's binding: the site's
        ("renamed:", "system", "warn"),
    ]
    renamed = problems[1]
    assert (
        renamed.title == "2 manually installed package(s) renamed: libgnutls30 -> libgnutls30t64, libssl3 -> libssl3t64"
    )
    assert (
        renamed.fix.why == "after the real run, 'apt-mark manual libgnutls30t64 libssl3t64' keeps them as you had them"
    )


def test_a_conffile_prompt_with_nobody_to_answer_names_the_file_and_the_answers() -> None:
    prompt = Finding(
        "conffile",
        ["Conffile-Prompt", "Conffile-Prompt-Unattended"],
        "/etc/mysql/my.cnf",
        "/etc/mysql/my.cnf: changed locally and by the new mariadb-common; dpkg will ask which to keep",
        {"path": "/etc/mysql/my.cnf", "package": "mariadb-common"},
    )
    apply_policy([prompt], lambda key, default: default)
    [problem] = problem_checks.problems_of([prompt], Transaction([], root="/"))
    assert (problem.key, problem.area, problem.severity) == ("conffile:/etc/mysql/my.cnf", "data", "block")
    assert problem.title == "/etc/mysql/my.cnf: dpkg will ask, and nobody is there to answer"
    assert problem.cause.file == "/etc/mysql/my.cnf" and "waits, in a run with nobody to answer" in problem.cause.text
    assert "--force-confold keeps yours" in problem.fix.why


def test_a_config_fix_changes_its_line_only_when_it_reads_as_expected(tmp_path: Path) -> None:
    from apt_rehearse.inside import config_fixes

    site = tmp_path / "site"
    site.write_text("server {\n    fastcgi_pass unix:/run/php/php8.2-fpm.sock;\n}\n")
    fix = {
        "path": str(site),
        "line": 2,
        "old": "fastcgi_pass unix:/run/php/php8.2-fpm.sock;",
        "new": "fastcgi_pass unix:/run/php/php8.4-fpm.sock;",
        "unit": "nginx.service",
    }
    stale = {**fix, "line": 1}
    done = config_fixes.apply([fix, stale], services_live=False)
    assert [row["applied"] for row in done] == [True, False] and "no longer reads" in done[1]["why"]
    assert site.read_text() == "server {\n    fastcgi_pass unix:/run/php/php8.4-fpm.sock;\n}\n"  # indentation kept
    missing = config_fixes.apply([{**fix, "path": str(tmp_path / "gone")}], services_live=False)
    assert missing[0]["applied"] is False and missing[0]["why"]


def test_the_unattended_log_gets_the_problems_not_every_finding() -> None:
    from apt_rehearse.fronts.hook import unattended_lines

    document = {
        "verdict": "block",
        "report_path": "/var/log/apt-rehearse/x.json",
        "problems": [
            {
                "severity": "block",
                "title": "libapache2-mod-php8.2 is removed: Apache loses php_module",
                "cause": {"text": "the upgrade removes libapache2-mod-php8.2"},
                "fix": {"packages": ["libapache2-mod-php8.4"]},
            },
            {
                "severity": "block",
                "title": "nginx.service's site",
                "cause": {"text": "/etc/nginx/x line 4 points at ..."},
                "fix": {"packages": [], "diffs": [{"path": "/etc/nginx/x", "diff": "..."}]},
            },
        ],
        "findings": [{"severity": "info", "message": "quiet"}],
    }
    assert unattended_lines(document) == [
        "BLOCK libapache2-mod-php8.2 is removed: Apache loses php_module",
        "  cause: the upgrade removes libapache2-mod-php8.2",
        "  fix: add libapache2-mod-php8.4",
        "BLOCK nginx.service's site",
        "  cause: /etc/nginx/x line 4 points at ...",
        "  fix: change /etc/nginx/x (the diff is in the report)",
        "verdict BLOCK; report /var/log/apt-rehearse/x.json",
    ]


def test_the_new_version_s_line_pairs_each_kept_line_it_changes() -> None:
    from apt_rehearse.inside.conffile_state import replaced_lines

    yours = ["# rh-conf", "listen_old 8094", "workers 4", "legacy_mode on", "log /var/log/x"]
    new = ["# rh-conf", "listen 8094", "workers 2", "log /var/log/x"]
    rows = {row["line"]: row for row in replaced_lines(yours, new)}
    assert rows[2]["new"] == "listen 8094" and rows[2]["new_line"] == 2
    assert rows[3]["new"] == "workers 2"
    assert rows[4]["new"] is None  # the new version has nothing like it
    assert 1 not in rows and 5 not in rows


def test_a_kept_conffile_line_the_daemon_rejects_gets_the_new_version_s_line_as_its_fix() -> None:
    tx = Transaction([Change("rh-conf", "amd64", "1.0", "2.0", "upgrade")], root="/nonexistent")
    failed = Finding(
        "service",
        ["Service-Failed"],
        "rh-conf.service",
        "rh-conf.service ran before and has failed after the upgrade",
        {"journal": ["rh-conf: /etc/rh-conf.conf:2: unknown directive listen_old"]},
    )
    prompt = Finding(
        "conffile",
        ["Conffile-Prompt"],
        "rh-conf",
        "/etc/rh-conf.conf: changed locally and by the new rh-conf; dpkg will ask which to keep",
        {
            "path": "/etc/rh-conf.conf",
            "package": "rh-conf",
            "leftover": "/etc/rh-conf.conf.dpkg-dist",
            "replaced_lines": [
                {"line": 2, "yours": "listen_old 8094", "new": "listen 8094", "new_line": 2},
                {"line": 3, "yours": "workers 4", "new": "workers 2", "new_line": 3},
            ],
        },
    )
    apply_policy([failed, prompt], lambda key, default: default)
    [problem] = problem_checks.problems_of([failed, prompt], tx)
    assert problem.key == "service:rh-conf.service" and problem.findings == [failed, prompt]
    assert (problem.cause.file, problem.cause.line) == ("/etc/rh-conf.conf", 2)
    assert "has 'listen 8094' there instead (/etc/rh-conf.conf.dpkg-dist line 2)" in problem.cause.text
    [change] = problem.fix.diffs
    assert (change["old"], change["new"], change["unit"]) == ("listen_old 8094", "listen 8094", "rh-conf.service")
    assert change["diff"].splitlines()[-2:] == ["-listen_old 8094", "+listen 8094"]
    # A line the new version dropped is commented out; one of yours it does not name stays yours.
    prompt.details["replaced_lines"][0]["new"] = None
    [problem] = problem_checks.problems_of([failed, prompt], tx)
    assert problem.fix.diffs[0]["new"] == "#listen_old 8094" and "no longer has this line" in problem.cause.text
