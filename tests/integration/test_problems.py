"""Problems, causes and verified fixes, on a real bookworm tree with the
tests' own packages (issue #16).

- rh-app1's service serves a page; rh-site 2.0 moves to rh-app2, whose
  service serves the same page (a working replacement), rh-site 3.0 to
  rh-app3, whose service fails (a broken one).
- rh-sshd and rh-mysql 2.0 no longer start; rh-fpm1's socket, named by the
  sysadmin's /etc/nginx site, is rh-fpm2.sock once rh-fpm2 replaces it.
- rh-breaker conflicts with rh-legacyd, whose unit rh-legacyd-ng ships:
  the archive's Contents index (apt-file's index target) finds it.
- rh-conf 2.0 rejects a line of the conffile the sysadmin kept; its new
  conffile (.dpkg-dist) has the line as it should read.
- /opt/vendor/bin/tool-qux needs libqux.so.1; libqux 2.0 ships libqux.so.2
  only, and libqux1 ships libqux.so.1 (found by Debian's naming, proved by
  its .deb, verified by --fix).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import assert_host_clean, host_snapshot, run_json
from lib.elf import compile_library, compile_program
from lib.localrepo import LocalRepo, build_deb, serve_to_tree
from lib.trees import bookworm_tree, dpkg_status_digest, install_into, tree_hash

pytestmark = pytest.mark.integration

LIBDIR = "/usr/lib/x86_64-linux-gnu"
# As dh_installsystemd writes them: enabled and started on configure, stopped on removal.
POSTINST = """\
if [ "$1" = configure ]; then
    systemctl enable {name}.service >/dev/null 2>&1 || true
    deb-systemd-invoke restart {name}.service >/dev/null 2>&1 || true
fi
"""
PRERM = """\
if [ "$1" = remove ]; then
    deb-systemd-invoke stop {name}.service >/dev/null 2>&1 || true
fi
"""
PAGE = "<h1>the same page</h1>\n"
UNIX_SERVER = (
    "/usr/bin/python3 -c \"import os, socket, time; os.makedirs('/run/rh-fpm', exist_ok=True); "
    "s = socket.socket(socket.AF_UNIX); s.bind('/run/rh-fpm/{name}.sock'); s.listen(); time.sleep(86400)\""
)


def _service(debs: Path, name: str, version: str, exec_start: str, **fields) -> Path:
    unit = f"[Unit]\nDescription={name}\n\n[Service]\nExecStart={exec_start}\n\n[Install]\nWantedBy=multi-user.target\n"
    files = {f"/lib/systemd/system/{name}.service": unit, **fields.pop("files", {})}
    return build_deb(
        debs, name, version, files=files, postinst=POSTINST.format(name=name), prerm=PRERM.format(name=name), **fields
    )


def _http(port: int, directory: str = "/usr/share/rh-app") -> str:
    return f"/usr/bin/python3 -m http.server {port} --bind 127.0.0.1 --directory {directory}"


def _failing(name: str, why: str) -> str:
    return f"/bin/sh -c 'echo \"{name}: {why}\" >&2; exit 1'"


# rh-conf 2.0 renames its directive listen_old to listen and rejects the old
# one, naming the file and line as daemons do; the sysadmin changed workers.
RH_CONF_V1 = "# rh-conf\nlisten_old 8094\nworkers 2\n"
RH_CONF_V2 = "# rh-conf\nlisten 8094\nworkers 2\n"
RH_CONF_DAEMON = """#!/bin/sh
line=$(grep -n '^listen_old' /etc/rh-conf.conf | cut -d: -f1)
if [ -n "$line" ]; then
    echo "rh-conf: /etc/rh-conf.conf:$line: unknown directive listen_old" >&2
    exit 1
fi
exec /usr/bin/python3 -m http.server 8094 --bind 127.0.0.1 --directory /usr/share/rh-conf
"""
RH_CONF_PAGE = {"/usr/share/rh-conf/index.html": PAGE}


LEGACYD_UNIT = (
    f"[Unit]\nDescription=rh-legacyd\n\n[Service]\nExecStart={_http(8095)}\n\n[Install]\nWantedBy=multi-user.target\n"
)


def _libraries(work: Path) -> dict[str, bytes]:
    built = {version: compile_library(work, f"libqux.so.{version}") for version in ("2", "1")}
    built["tool"] = compile_program(work, "tool-qux", "libqux.so.1")
    return built


@pytest.fixture(scope="module")
def problems_tree(sandbox_capable: None):
    base = Path(tempfile.mkdtemp(prefix="rh-problems-", dir="/var/tmp"))
    try:
        tree = bookworm_tree(base / "tree", variant="frontends")
        debs = base / "debs"
        built = _libraries(base / "cc")
        page = {"/usr/share/rh-app/index.html": PAGE}
        v1 = [
            _service(debs, "rh-app1", "1.0", _http(8090), files=page),
            build_deb(debs, "rh-site", "1.0", depends="rh-app1"),
            _service(debs, "rh-sshd", "1.0", _http(8091)),
            _service(debs, "rh-mysql", "1.0", _http(8092)),
            _service(debs, "rh-fpm1", "1.0", UNIX_SERVER.format(name="rh-fpm1")),
            build_deb(debs, "libqux", "1.0", files={f"{LIBDIR}/libqux.so.1": built["1"]}),
            _service(debs, "rh-legacyd", "1.0", _http(8095)),
            _service(
                debs,
                "rh-conf",
                "1.0",
                _http(8094, "/usr/share/rh-conf"),
                files=RH_CONF_PAGE,
                conffiles={"/etc/rh-conf.conf": RH_CONF_V1},
            ),
        ]
        v2 = [
            build_deb(debs, "rh-site", "2.0", depends="rh-app2"),
            build_deb(debs, "rh-site", "3.0", depends="rh-app3"),
            _service(debs, "rh-app2", "1.0", _http(8090), files=page, conflicts="rh-app1", replaces="rh-app1"),
            _service(
                debs,
                "rh-app3",
                "1.0",
                _failing("rh-app3", "no port"),
                files=page,
                conflicts="rh-app1",
                replaces="rh-app1",
            ),
            _service(
                debs,
                "rh-sshd",
                "2.0",
                _failing("rh-sshd", "/etc/rh-sshd.conf: line 3: Bad configuration option: Protocol1"),
            ),
            _service(debs, "rh-mysql", "2.0", _failing("rh-mysql", "unknown variable query_cache_typo=1")),
            _service(
                debs, "rh-fpm2", "1.0", UNIX_SERVER.format(name="rh-fpm2"), conflicts="rh-fpm1", replaces="rh-fpm1"
            ),
            build_deb(debs, "libqux", "2.0", files={f"{LIBDIR}/libqux.so.2": built["2"]}),
            build_deb(debs, "libqux1", "2.0", files={f"{LIBDIR}/libqux.so.1": built["1"]}),
            # Ships rh-legacyd's unit, without saying it replaces rh-legacyd: only the archive's Contents tells.
            build_deb(
                debs,
                "rh-legacyd-ng",
                "2.0",
                files={"/lib/systemd/system/rh-legacyd.service": LEGACYD_UNIT},
                postinst=POSTINST.format(name="rh-legacyd"),
                conflicts="rh-legacyd",
            ),
            build_deb(debs, "rh-breaker", "1.0", conflicts="rh-legacyd"),
            _service(
                debs,
                "rh-conf",
                "2.0",
                "/usr/sbin/rh-conf",
                files={**RH_CONF_PAGE, "/usr/sbin/rh-conf": RH_CONF_DAEMON},
                conffiles={"/etc/rh-conf.conf": RH_CONF_V2},
            ),
        ]
        install_into(tree, v1)
        (tree / "etc/rh-conf.conf").write_text(RH_CONF_V1.replace("workers 2", "workers 4"))
        tool = tree / "opt/vendor/bin/tool-qux"
        tool.parent.mkdir(parents=True)
        tool.write_bytes(built["tool"])
        tool.chmod(0o755)
        site = tree / "etc/nginx/sites-enabled/rh-site"
        site.parent.mkdir(parents=True)
        site.write_text(
            "server {\n    listen 8093;\n    location ~ \\.php$ {\n        fastcgi_pass unix:/run/rh-fpm/rh-fpm1.sock;\n    }\n}\n"
        )
        repo = LocalRepo(base / "repo")
        for deb in v1 + v2:
            repo.add(deb)
        repo.publish(contents=True)
        serve_to_tree(tree, repo, contents=True)
        yield {"tree": tree, "base": base}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def rehearse(info: dict, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    before_tree, before_status, host = tree_hash(info["tree"]), dpkg_status_digest(info["tree"]), host_snapshot()
    proc, document = run_json("--root", str(info["tree"]), "-o", f"APT::Rehearse::Log-Dir={info['base']}/log", *args)
    assert tree_hash(info["tree"]) == before_tree
    assert dpkg_status_digest(info["tree"]) == before_status
    assert_host_clean(host)
    return proc, document


def _removal(document: dict, package: str) -> dict:
    return next(f for f in document["findings"] if f["check"] == "removal" and f["subject"] == package)


def test_a_removal_whose_replacement_works_is_a_warning(problems_tree: dict) -> None:
    proc, document = rehearse(problems_tree, "install", "rh-site=2.0")
    removal = _removal(document, "rh-app1")
    assert removal["severity"] == "warn" and removal["kinds"] == ["Remove", "Remove-Replaced"], removal
    assert removal["message"].endswith(
        "(replaced by rh-app2: rh-app2.service runs in place of rh-app1.service, the site answers the same)"
    )
    assert proc.returncode == 0 and document["verdict"] == "warn", [f["message"] for f in document["findings"]]
    assert {p["severity"] for p in document["problems"]} == {"warn"}


def test_the_same_removal_with_the_replacement_broken_blocks_as_one_problem(problems_tree: dict) -> None:
    proc, document = rehearse(problems_tree, "install", "rh-site=3.0")
    assert proc.returncode == 10
    removal = _removal(document, "rh-app1")
    assert removal["severity"] == "block" and "Remove-Service" in removal["kinds"]
    assert removal["message"].endswith(
        "rh-app3 is in the transaction, but rh-app3.service does not run in place of rh-app1.service"
    )
    # The service gone, its port and its page are the removal's, not problems of their own.
    [problem] = [p for p in document["problems"] if p["severity"] == "block"]
    assert problem["key"] == "removal:rh-app1"
    kinds = {kind for place in problem["findings"] for kind in document["findings"][place]["kinds"]}
    assert {"Service-Failed", "Lost-Socket", "Http-Changed"} <= kinds


def test_unrelated_breakages_are_problems_the_costliest_first_with_their_causes(problems_tree: dict) -> None:
    proc, document = rehearse(problems_tree, "install", "rh-mysql=2.0", "rh-fpm2", "rh-sshd=2.0")
    assert proc.returncode == 10
    problems = document["problems"]
    assert [(p["key"], p["area"]) for p in problems] == [
        ("service:rh-sshd.service", "remote-access"),
        ("service:rh-mysql.service", "data"),
        ("removal:rh-fpm1", "site"),
    ], [p["title"] for p in problems]
    sshd, mysql, fpm = problems
    assert (sshd["cause"]["file"], sshd["cause"]["line"]) == ("/etc/rh-sshd.conf", 3)
    assert mysql["cause"]["text"] == "rh-mysql: unknown variable query_cache_typo=1"
    # The site's configuration still names the removed package's socket: that line is the cause, and its change the fix.
    assert (fpm["cause"]["file"], fpm["cause"]["line"]) == ("/etc/nginx/sites-enabled/rh-site", 4)
    [diff] = fpm["fix"]["diffs"]
    assert diff["diff"].splitlines()[-2:] == [
        "-fastcgi_pass unix:/run/rh-fpm/rh-fpm1.sock;",
        "+fastcgi_pass unix:/run/rh-fpm/rh-fpm2.sock;",
    ]
    assert not fpm["fix"]["packages"]  # rh-fpm2 is in the transaction already
    # The text leads with the problems, in that order.
    text = (problems_tree["base"] / "log" / Path(document["report_path"]).with_suffix(".txt").name).read_text()
    assert text.index("1. rh-sshd.service") < text.index("2. rh-mysql.service") < text.index("3. rh-fpm1 is removed")


def test_a_lost_soname_gets_the_package_that_ships_it_and_fix_proves_it(problems_tree: dict) -> None:
    proc, document = rehearse(problems_tree, "--no-services", "install", "libqux")
    assert proc.returncode == 10
    [problem] = document["problems"]
    assert problem["key"] == "library:libqux.so.1"
    assert problem["fix"]["packages"] == ["libqux1"] and "libqux1 ships libqux.so.1" in problem["fix"]["why"]
    assert document["suggestion"] is None  # 'install' is no upgrade: the fix is --fix's
    # The .deb that proved it was read and dropped: nothing of it stays in apt-rehearse's caches.
    cache = Path("/var/cache/apt-rehearse")
    assert not list(cache.glob("fix-proofs-*")) and not list(cache.glob("archives/libqux1_*"))
    proc, document = rehearse(problems_tree, "--no-services", "install", "libqux", "--fix")
    assert proc.returncode == 0, [p["title"] for p in document["problems"]]
    fix_of = document["fix_of"]
    assert fix_of["verdict"] == "block" and fix_of["added"] == ["libqux1"]
    [verified] = fix_of["problems"]
    assert verified["verified"] is True and "libqux1 added" in verified["verified_detail"]
    assert fix_of["real_run"] == "apt-get install libqux libqux1"
    assert {(c["package"], c["action"]) for c in document["transaction"]["changes"]} == {
        ("libqux", "upgrade"),
        ("libqux1", "install"),
    }
    assert document["verdict"] == "pass" and not document["problems"]


def test_fix_makes_a_configuration_change_in_the_copy_only_and_verifies_it(problems_tree: dict) -> None:
    site = problems_tree["tree"] / "etc/nginx/sites-enabled/rh-site"
    before = site.read_text()
    proc, document = rehearse(problems_tree, "install", "rh-fpm2", "--fix")
    fix_of = document["fix_of"]
    assert fix_of["added"] == [] and fix_of["changed"] == ["/etc/nginx/sites-enabled/rh-site line 4"]
    [problem] = [p for p in fix_of["problems"] if p["key"] == "removal:rh-fpm1"]
    assert problem["verified"] is True, problem
    assert (
        fix_of["real_run"] == "change /etc/nginx/sites-enabled/rh-site line 4 as the diff shows, then run the request"
    )
    # With the line changed, nothing of rh-fpm1 is lost: the removal is a replaced one.
    removal = _removal(document, "rh-fpm1")
    assert removal["kinds"] == ["Remove", "Remove-Replaced"], removal
    assert proc.returncode == 0 and document["verdict"] == "warn", [p["title"] for p in document["problems"]]
    assert site.read_text() == before  # the sysadmin's file: never changed


def test_a_kept_conffile_line_the_new_daemon_rejects_is_the_cause_and_the_new_line_the_verified_fix(
    problems_tree: dict,
) -> None:
    conf = problems_tree["tree"] / "etc/rh-conf.conf"
    before = conf.read_text()
    proc, document = rehearse(problems_tree, "install", "rh-conf=2.0")
    assert proc.returncode == 10
    [problem] = [p for p in document["problems"] if p["severity"] == "block"]
    assert problem["key"] == "service:rh-conf.service", [p["title"] for p in document["problems"]]
    # The prompt and the failure are one problem: yours was kept, and the new daemon rejects its line 2.
    kinds = {kind for place in problem["findings"] for kind in document["findings"][place]["kinds"]}
    assert {"Service-Failed", "Conffile-Prompt"} <= kinds
    assert (problem["cause"]["file"], problem["cause"]["line"]) == ("/etc/rh-conf.conf", 2)
    assert "has 'listen 8094' there instead (/etc/rh-conf.conf.dpkg-dist line 2)" in problem["cause"]["text"]
    [diff] = problem["fix"]["diffs"]
    assert diff["diff"].splitlines()[-2:] == ["-listen_old 8094", "+listen 8094"]
    proc, document = rehearse(problems_tree, "install", "rh-conf=2.0", "--fix")
    fix_of = document["fix_of"]
    assert fix_of["changed"] == ["/etc/rh-conf.conf line 2"]
    [verified] = [p for p in fix_of["problems"] if p["key"] == "service:rh-conf.service"]
    assert verified["verified"] is True, verified
    assert not [p for p in document["problems"] if p["key"] == "service:rh-conf.service"]
    assert conf.read_text() == before  # the sysadmin's file, workers 4 and all: never changed


def test_a_removed_service_gets_the_package_that_ships_its_unit_from_the_archive_contents(problems_tree: dict) -> None:
    lists = problems_tree["tree"] / "var/lib/apt/lists"
    assert list(lists.glob("*Contents-amd64*")), "apt fetched no Contents index"
    proc, document = rehearse(problems_tree, "install", "rh-breaker")
    assert proc.returncode == 10
    [problem] = [p for p in document["problems"] if p["severity"] == "block"]
    assert problem["key"] == "removal:rh-legacyd"
    assert problem["fix"]["packages"] == ["rh-legacyd-ng"], problem
    assert "rh-legacyd-ng ships rh-legacyd.service" in problem["fix"]["why"]
    proc, document = rehearse(problems_tree, "install", "rh-breaker", "--fix")
    [verified] = document["fix_of"]["problems"]
    assert verified["verified"] is True, verified
    removal = _removal(document, "rh-legacyd")
    assert removal["kinds"] == ["Remove", "Remove-Replaced"], removal
    assert "rh-legacyd.service runs in place of rh-legacyd.service" in removal["message"]
    assert proc.returncode == 0 and document["verdict"] == "warn", [p["title"] for p in document["problems"]]
