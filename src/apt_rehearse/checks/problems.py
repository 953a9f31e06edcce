"""From findings to problems: the findings one cause explains, grouped.

A removal, the module it took, the page that now serves PHP source and the
service that no longer starts because of it are one problem; a daemon whose
configuration no longer parses, the port it no longer listens on and the
page behind it are another. Each problem names its cause as far as the
rehearsal saw it (a file and a line when a daemon or a configuration says
one) and carries the fix the rehearsal can propose; problems are ordered by
what they cost the sysadmin (model/problem.AREAS).

Pure functions: findings (severities applied) and the baseline observation
in, problems out. Info findings make no problem.
"""

from __future__ import annotations

import os
import re

from apt_rehearse.checks.removals import PAGE_KINDS, apache_modules, php_extensions, replacement_in
from apt_rehearse.model.observation import Observation
from apt_rehearse.model.policy import SEVERITIES, Finding
from apt_rehearse.model.problem import AREAS, Cause, Fix, Problem, line_change
from apt_rehearse.model.transaction import INSTALLING_ACTIONS, Transaction

# A daemon's config test -> the unit that runs the daemon.
TEST_UNITS = {
    "apache2ctl": "apache2.service",
    "nginx": "nginx.service",
    "sshd": "ssh.service",
    "postfix": "postfix.service",
    "named-checkconf": "named.service",
}
REMOTE_ACCESS = re.compile(
    r"\b(ssh|sshd|openssh-server|dropbear|networking|systemd-networkd|NetworkManager|network-manager|ifupdown"
    r"|netplan|wpasupplicant|wpa_supplicant|isc-dhcp-client|dhcpcd|systemd-resolved|wireguard|openvpn|tailscaled?)\b"
)
DATA = re.compile(
    r"(mariadb|mysql|postgres|redis|mongo|memcache|elasticsearch|opensearch|influxdb|couchdb|cassandra|rabbitmq"
    r"|etcd|zookeeper|clickhouse|minio|ceph|nfs-server|nfs-kernel-server|smbd|samba|slapd|dovecot|postfix|exim4)"
)
SITE = re.compile(r"(apache|nginx|php|httpd|lighttpd|haproxy|caddy|tomcat|varnish|uwsgi|gunicorn|http://|Http-)")
# Where a daemon names the file and line it rejects.
FILE_LINE = (
    re.compile(r"on line (?P<line>\d+) of (?P<file>/[^\s:]+)"),  # apache2: AH00526: Syntax error on line 3 of /etc/...
    re.compile(r"\bin (?P<file>/[^\s:]+):(?P<line>\d+)"),  # nginx: [emerg] ... in /etc/nginx/sites-enabled/x:12
    re.compile(r"\[(?P<file>/[^\s:\]]+):(?P<line>\d+)\]"),  # php-fpm: ERROR: [/etc/php/8.4/fpm/pool.d/www.conf:12]
    re.compile(r"(?P<file>/[^\s:]+): line (?P<line>\d+)"),  # sshd: /etc/ssh/sshd_config: line 12: Bad ...
    re.compile(r"configuration file (?P<file>/[^\s:]+) line (?P<line>\d+)"),  # doveconf: ... file /etc/x.conf line 128:
    re.compile(r"(?P<file>/etc/[^\s:]+):(?P<line>\d+)"),
)


def file_and_line(lines: list[str]) -> tuple[str | None, int | None, str]:
    """The first file:line a daemon's output names, and that output line."""
    for text in lines:
        for pattern in FILE_LINE:
            match = pattern.search(text)
            if match:
                return match.group("file").rstrip(".,;"), int(match.group("line")), text.strip()
    return None, None, ""


# A language's binding to a database (php8.2-mysql, python3-psycopg2,
# libdbd-mysql-perl) is part of the site or program using it, not the data service.
CLIENT_OF = re.compile(r"^(removal:|package:)?(php|python|lib|ruby|node|golang|perl)")


def area_of(problem: Problem) -> str:
    words = [problem.key, problem.title] + [f.subject for f in problem.findings]
    kinds = " ".join(kind for f in problem.findings for kind in f.kinds)
    text = " ".join(words) + " " + kinds
    if "Sshd-Config" in kinds or REMOTE_ACCESS.search(text):
        return "remote-access"
    if any(DATA.search(word) and not CLIENT_OF.match(word) for word in words):
        return "data"
    if SITE.search(text):
        return "site"
    return "system"


class _Grouping:
    """The problems being built; each add_* places one finding, in a new
    problem or in the one its cause already opened."""

    def __init__(self, transaction: Transaction, baseline: Observation | None) -> None:
        self.problems: dict[str, Problem] = {}
        self.root = transaction.root
        self.installing = {c.package for c in transaction.by_action(*INSTALLING_ACTIONS)}
        self.unit_of_port = {s["port"]: s.get("unit") or "" for s in (baseline.sockets if baseline else [])}
        # What each removal took: its units, and its modules and extensions.
        self.took: dict[str, dict[str, set[str]]] = {}

    def open(self, key: str, title: str, cause: Cause, finding: Finding) -> Problem:
        problem = self.problems.get(key)
        if problem is None:
            problem = self.problems[key] = Problem(key, title, "system", cause, [])
        problem.findings.append(finding)
        return problem

    def attach(self, key: str | None, finding: Finding) -> bool:
        problem = self.problems.get(key) if key else None
        if problem is None:
            return False
        problem.findings.append(finding)
        return True

    def removal_taking(self, kind: str, names: set[str]) -> str | None:
        return next((f"removal:{package}" for package, what in self.took.items() if what[kind] & names), None)

    def unit_problem(self, unit: str) -> str | None:
        if not unit:
            return None
        if f"service:{unit}" in self.problems:
            return f"service:{unit}"
        return self.removal_taking("units", {unit})

    def add_removal(self, finding: Finding) -> None:
        package, modules = finding.subject, finding.details.get("web_modules") or []
        if finding.kinds == ["Remove", "Remove-Renamed"]:
            # Renamed, not lost (libssl3 -> libssl3t64): one problem for them all.
            self.open("renamed:", "", Cause(RENAMED_CAUSE), finding)
            return
        self.took[package] = {
            "units": set(finding.details.get("enabled_services") or []),
            "modules": apache_modules(self.root, [m.split(": ", 1)[-1] for m in modules if m.startswith("apache")])
            | php_extensions([m.split(": ", 1)[-1] for m in modules if m.startswith("php")]),
        }
        replacement, present = finding.details.get("replacement"), replacement_in(finding, self.installing)
        problem = self.open(f"removal:{package}", f"{package} is removed", Cause(_removal_cause(finding)), finding)
        if present:
            problem.fix = Fix(why=f"{present} is in the transaction already")
        elif replacement:
            problem.fix = Fix([replacement], why=f"{replacement} is the target release's package in place of {package}")

    def add_service(self, finding: Finding) -> None:
        if not self.attach(self.unit_problem(finding.subject), finding):
            self.open(f"service:{finding.subject}", _service_title(finding), _journal_cause(finding), finding)

    def add_config_test(self, finding: Finding) -> None:
        unit = TEST_UNITS.get(finding.subject, f"{finding.subject}.service")
        key, cause = self.unit_problem(unit), _test_cause(finding)
        if self.attach(key, finding):
            problem = self.problems[key]
            if cause.file and not problem.cause.file:
                problem.cause = cause
        else:
            self.open(f"service:{unit}", f"{finding.subject}'s configuration no longer passes its test", cause, finding)

    def add_module(self, finding: Finding) -> None:
        if not self.attach(self.removal_taking("modules", set(finding.details.get("lost") or [])), finding):
            self.open(f"module:{finding.subject}", finding.message, Cause(finding.message), finding)

    def add_site(self, finding: Finding) -> None:
        key = self.site_problem(finding)
        if not self.attach(key, finding):
            self.open(key, finding.message, Cause(finding.message), finding)
        if "Dangling-Socket" in finding.kinds:
            _take_socket_cause(self.problems[key], finding)

    def add_socket(self, finding: Finding) -> None:
        if not self.attach(self.unit_problem(finding.subject), finding):
            self.open(f"socket:{finding.subject}", finding.message, Cause(finding.message), finding)

    def add_library(self, finding: Finding) -> None:
        owner = finding.details.get("package")
        if not (owner and self.attach(f"removal:{owner}", finding)):
            soname = finding.details.get("soname", finding.subject)
            cause = Cause(finding.message.split("; ", 1)[-1] if "; " in finding.message else finding.message)
            self.open(f"library:{soname}", f"{finding.subject} no longer finds {soname}", cause, finding)

    def add_other(self, finding: Finding) -> None:
        if finding.check == "conffile":
            self.add_conffile(finding)
        elif finding.check in ("script-failure", "package-state"):
            what = "a maintainer script fails" if finding.check == "script-failure" else "left broken"
            self.open(f"package:{finding.subject}", f"{finding.subject}: {what}", Cause(finding.message), finding)
        else:
            self.open(f"{finding.check}:{finding.subject}", finding.message, Cause(finding.message), finding)

    def add_conffile(self, finding: Finding) -> None:
        """A conffile prompt: with nobody to answer it, the run stops there."""
        path = finding.details.get("path") or finding.subject
        unattended = "Conffile-Prompt-Unattended" in finding.kinds
        cause = f"{path} was changed here and in the new {finding.details.get('package') or 'package'}: dpkg asks which to keep"
        problem = self.open(
            f"conffile:{path}",
            f"{path}: dpkg will ask" + (", and nobody is there to answer" if unattended else ""),
            Cause(cause + (" and waits, in a run with nobody to answer" if unattended else ""), path),
            finding,
        )
        problem.fix = Fix(
            why="answer it beforehand: -o Dpkg::Options::=--force-confold keeps yours, --force-confnew takes the new "
            "one (the diff is in the saved report)"
        )

    def site_problem(self, finding: Finding) -> str:
        """The problem a page or a web server's socket reference belongs to:
        the PHP removal when the page serves PHP source, the removal whose
        socket a configuration still names, else that of the unit serving
        it (one problem per web server)."""
        details = finding.details
        if (details.get("after") or {}).get("php_source"):
            for key, problem in self.problems.items():
                if key.startswith("removal:") and any(
                    "php" in m for f in problem.findings for m in f.details.get("web_modules") or []
                ):
                    return key
        if "Dangling-Socket" in finding.kinds:
            # The socket a removed package's service held (php8.2-fpm.sock, php8.2-fpm).
            socket_name = os.path.basename(details.get("path") or "")
            for key in self.problems:
                if key.startswith("removal:") and key.split(":", 1)[1] in socket_name:
                    return key
        unit = details.get("unit") or self.unit_of_port.get(details.get("port"), "")
        return self.unit_problem(unit) or (f"site:{unit}" if unit else f"site:{finding.subject}")


# Which finding goes where, in this order: a finding joins the problem an
# earlier pass opened (a page joins its service's, a service its removal's).
PASSES = (
    (lambda f: f.check == "removal", _Grouping.add_removal),
    (lambda f: "Service-Failed" in f.kinds, _Grouping.add_service),
    (lambda f: "Config-Test" in f.kinds, _Grouping.add_config_test),
    (lambda f: "Module-Lost" in f.kinds, _Grouping.add_module),
    (lambda f: bool(set(f.kinds) & set(PAGE_KINDS)), _Grouping.add_site),
    (lambda f: "Lost-Socket" in f.kinds, _Grouping.add_socket),
    (lambda f: "Lost-Library" in f.kinds, _Grouping.add_library),
    (lambda f: True, _Grouping.add_other),
)


def problems_of(
    findings: list[Finding], transaction: Transaction, baseline: Observation | None = None
) -> list[Problem]:
    """The problems of a rehearsal, most costly first."""
    grouping = _Grouping(transaction, baseline)
    waiting = [f for f in findings if f.severity != "info"]
    for accepts, add in PASSES:
        taken = [f for f in waiting if accepts(f)]
        for finding in taken:
            add(grouping, finding)
        waiting = [f for f in waiting if not any(f is t for t in taken)]
    join_kept_conffiles(grouping.problems)
    problems = list(grouping.problems.values())
    for problem in problems:
        problem.area = area_of(problem)
        problem.title = _renamed_title(problem) if problem.key == "renamed:" else _title(problem)
        if problem.key == "renamed:":
            successors = sorted({f.details.get("successor") for f in problem.findings if f.details.get("successor")})
            problem.fix = Fix(
                why="after the real run, 'apt-mark manual " + " ".join(successors) + "' keeps them as you had them"
            )
    problems.sort(key=lambda p: (AREAS.index(p.area), -SEVERITIES.index(p.severity), p.key))
    return problems


RENAMED_CAUSE = (
    "the target release renames them (as trixie's 64-bit time transition does); what needs the old names "
    "still has them, but the new names are not marked manually installed"
)


def _renamed_title(problem: Problem) -> str:
    pairs = [f"{f.subject} -> {f.details.get('successor')}" for f in problem.findings]
    shown = ", ".join(pairs[:4]) + (f" (+{len(pairs) - 4} more)" if len(pairs) > 4 else "")
    return f"{len(pairs)} manually installed package(s) renamed: {shown}"


def _removal_cause(finding: Finding) -> str:
    marks = finding.message.split(" (", 1)[1].rstrip(")") if " (" in finding.message else ""
    return f"the upgrade removes {finding.subject}" + (f" ({marks})" if marks else "")


def _service_title(finding: Finding) -> str:
    return f"{finding.subject} no longer runs" + (f" {finding.details['when']}" if finding.details.get("when") else "")


# systemd's own lines in a unit's journal: what happened, not why.
SYSTEMD_WORDS = re.compile(
    r"^(Started|Starting|Stopped|Stopping|Failed to start|Dependency failed|[\w@.-]+\.(service|socket): )"
)


def _journal_cause(finding: Finding) -> Cause:
    lines = [entry for entry in finding.details.get("journal") or [] if entry.strip()]
    own = [entry for entry in lines if not SYSTEMD_WORDS.match(entry)]
    file, line, text = file_and_line(own or lines)
    if file:
        return Cause(text, file, line)
    return Cause((own or lines or [finding.message])[-1].strip())


def _test_cause(finding: Finding) -> Cause:
    output = finding.details.get("output_tail") or []
    file, line, text = file_and_line(output)
    if file:
        return Cause(f"'{finding.details.get('test')}' rejects {file} line {line}: {text}", file, line)
    return Cause(finding.message + (f": {output[-1]}" if output else ""))


def _take_socket_cause(problem: Problem, finding: Finding) -> None:
    details = finding.details
    problem.cause = Cause(finding.message, details.get("file"), details.get("line"))
    if details.get("diff"):
        new = details["text"].replace(details["path"], details["instead"])
        problem.fix = Fix(
            problem.fix.packages,
            [line_change(details["file"], details["line"], details["text"], new, details.get("unit") or "")],
            problem.fix.why or f"{details.get('instead')} is the socket that exists after the upgrade",
        )


def join_kept_conffiles(problems: dict[str, Problem]) -> None:
    """A daemon that rejects a line of a conffile the sysadmin kept: the
    prompt and the failure are one problem, and the new version's line
    (dpkg's .dpkg-dist, ucf's .ucf-dist beside the kept file) is the fix."""
    for key, problem in list(problems.items()):
        cause = problem.cause
        prompt = problems.get(f"conffile:{cause.file}") if cause.file and cause.line else None
        if prompt is None or key == f"conffile:{cause.file}":
            continue
        del problems[f"conffile:{cause.file}"]
        problem.findings += prompt.findings
        details = prompt.findings[0].details
        leftover = details.get("leftover") or f"{cause.file}.dpkg-dist"
        package = details.get("package") or "package"
        entry = next((row for row in details.get("replaced_lines") or [] if row.get("line") == cause.line), None)
        if entry is None:
            cause.text += f" (a conffile you kept: the new {package}'s version is {leftover})"
            continue
        yours, unit = entry["yours"], key.split(":", 1)[1] if key.startswith("service:") else ""
        if entry.get("new") is None:
            cause.text += f"; the new {package}'s version ({leftover}) no longer has this line"
            instead, why = "#" + yours.lstrip(), f"the new {package}'s {os.path.basename(leftover)} has no such line"
        else:
            instead = entry["new"]
            cause.text += (
                f"; the new {package} has '{instead.strip()}' there instead ({leftover} line {entry['new_line']})"
            )
            why = (
                f"the line as the new {package} ships it ({leftover} line {entry['new_line']}); the rest of yours stays"
            )
        problem.fix = Fix(problem.fix.packages, [line_change(cause.file, cause.line, yours, instead, unit)], why)


def _title(problem: Problem) -> str:
    """Short, apt-style: what breaks, and what follows from it."""
    head = problem.title
    consequences = []
    for finding in problem.findings[1:]:
        kinds = set(finding.kinds)
        if "Module-Lost" in kinds:
            owner = "Apache" if finding.subject == "apache" else "PHP"
            consequences.append(f"{owner} loses {', '.join(finding.details.get('lost') or [])}")
        elif (finding.details.get("after") or {}).get("php_source"):
            consequences.append(f"{finding.subject} serves PHP source")
        elif "Http-Changed" in kinds:
            after = finding.details.get("after")
            consequences.append(f"{finding.subject} answers {('HTTP ' + str(after['status'])) if after else 'nothing'}")
        elif "Service-Failed" in kinds:
            consequences.append(f"{finding.subject} stops")
        elif "Lost-Library" in kinds:
            consequences.append(f"{finding.subject} loses {finding.details.get('soname')}")
        elif "Lost-Socket" in kinds:
            port = (finding.details.get("before") or {}).get("port")
            consequences.append(f"port {port} closes")
    unique = list(dict.fromkeys(consequences))
    if problem.key.startswith("removal:") and unique:
        return f"{head}: " + "; ".join(unique[:4]) + (f" (+{len(unique) - 4} more)" if len(unique) > 4 else "")
    if unique:
        return f"{head}; " + "; ".join(unique[:3])
    return head
