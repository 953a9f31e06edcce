#!/usr/bin/python3
"""apt-rehearse real-world corpus (issue #20): the real bookworm -> trixie
upgrade of real server stacks against the rehearsal's prediction.

    sudo /usr/bin/python3 bench/corpus.py [--stacks a,b,...] [--json FILE] [--table]

For each stack (STACKS below):

1. tree: a bookworm tree made with mmdebstrap (the tests' cache,
   tests/lib/trees.py) with the stack's packages, its configuration files
   and the probes (/etc/apt-rehearse/probes.d/corpus.probe); then booted once
   with systemd to set up the data that needs running daemons (a table, a
   directory, a mailbox, ...), powered off and cached as a tarball keyed by
   the stack's definition;
2. prediction: on one copy, `apt-rehearse --root COPY dist-upgrade --release
   trixie --json` (which downloads the .debs into its archive cache);
3. ground truth: on another copy, the sources switched to trixie, apt-get
   update and `apt-get -d dist-upgrade` in a chroot with the network (the
   rehearsal's .debs linked in first, so each .deb is downloaded once); then
   the copy booted with systemd, the baseline probes run, the real
   non-interactive `apt-get dist-upgrade` run inside with the services live,
   powered off, booted again: the probes, the units' states, the daemons'
   config tests;
4. comparison: every real breakage must be predicted by a blocking problem
   naming that service, and nothing may be blocked that worked for real.

Results are merged into bench/corpus.json (one entry per stack) and the
README's table between its corpus markers is rewritten. Everything lives
under /var/tmp/rh-corpus-*, removed at the end (also on SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from lib import trees  # noqa: E402
from lib.booted import BootedMachine  # noqa: E402
from run import APT_REAL, PATH, chroot, link_debs, log  # noqa: E402

CLI = ["/usr/bin/python3", "-m", "apt_rehearse"]
RESULTS = REPO / "bench" / "corpus.json"
README = REPO / "README.md"
TABLE_BEGIN = "<!-- corpus-table:begin -->"
TABLE_END = "<!-- corpus-table:end -->"
PROBE_FILE = "etc/apt-rehearse/probes.d/corpus.probe"

# What every stack's tree has besides its own packages: systemd to boot, curl
# and the shell for the probes; logind masked (no seat: apt would wait 25 s for
# an inhibitor).
BASE_INCLUDE = ("systemd", "systemd-sysv", "dbus", "iproute2", "curl", "procps")
BASE_CUSTOMIZE = (
    'echo rehearsal > "$1/etc/hostname"',
    "printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\trehearsal\\n\\n"
    '::1\\tlocalhost ip6-localhost ip6-loopback\\n\' > "$1/etc/hosts"',
    'ln -sf /dev/null "$1/etc/systemd/system/systemd-logind.service"',
)

# A stack: packages, files written into the tree before its set-up boot,
# a set-up script run inside that boot, probes (deb822 fields, plus "Unit":
# the service the probe judges), the units that must be active, the config
# tests (command -> unit), and the twist (what should really break, if any).
STACKS: dict[str, dict[str, Any]] = {
    "postgresql": {
        "include": ("postgresql",),
        "setup": (
            'su postgres -c "psql -q -c \\"create role shop login password \'shop\'\\""\n'
            "su postgres -c 'createdb -O shop shop'\n"
            "PGPASSWORD=shop psql -q -h 127.0.0.1 -U shop shop -c"
            " \"create table orders (id int primary key, item text); insert into orders values (1, 'lamp'), (2, 'desk')\"\n"
        ),
        "probes": (
            {
                "Name": "orders",
                "Type": "command",
                "Command": "env PGPASSWORD=shop psql -h 127.0.0.1 -p 5432 -U shop -tAc 'select item from orders where id = 2' shop",
                "Expect-Output": "desk",
                "Unit": "postgresql@15-main.service",
            },
            {"Name": "postgres-port", "Type": "tcp", "Port": "5432", "Unit": "postgresql@15-main.service"},
        ),
        "units": ("postgresql.service",),
        "config_tests": {},
    },
    "redis": {
        "include": ("redis-server",),
        "files": {
            "etc/redis/redis.conf.append": "appendonly yes\nrequirepass s3cret\n",
        },
        "setup": "redis-cli -a s3cret --no-auth-warning set greeting hello && redis-cli -a s3cret --no-auth-warning save",
        "probes": (
            {
                "Name": "greeting",
                "Type": "command",
                "Command": "redis-cli -a s3cret --no-auth-warning get greeting",
                "Expect-Output": "hello",
                "Unit": "redis-server.service",
            },
            {"Name": "redis-port", "Type": "tcp", "Port": "6379", "Unit": "redis-server.service"},
        ),
        "units": ("redis-server.service",),
        "config_tests": {},
    },
    "bind9": {
        # Twist: `auto-dnssec` in a zone, accepted (deprecated) by 9.18,
        # removed in 9.20 (trixie); the sysadmin's named.conf.local is kept.
        "twist": "auto-dnssec in a zone statement (removed in BIND 9.20)",
        "include": ("bind9", "bind9-dnsutils"),
        "files": {
            "etc/bind/named.conf.local": (
                'zone "example.test" {\n\ttype primary;\n\tfile "/etc/bind/db.example.test";\n'
                "\tauto-dnssec off;\n};\n"
            ),
            "etc/bind/db.example.test": (
                "$TTL 3600\n@ IN SOA ns1.example.test. hostmaster.example.test. (1 3600 600 86400 3600)\n"
                "@ IN NS ns1.example.test.\nns1 IN A 192.0.2.1\nwww IN A 192.0.2.80\n"
            ),
        },
        "setup": "",
        "probes": (
            {
                "Name": "zone-www",
                "Type": "command",
                "Command": "dig +short +time=2 +tries=1 @127.0.0.1 www.example.test A",
                "Expect-Output": "192.0.2.80",
                "Unit": "named.service",
            },
            {"Name": "dns-port", "Type": "tcp", "Port": "53", "Unit": "named.service"},
        ),
        "units": ("named.service",),
        "config_tests": {"named-checkconf -z": "named.service"},
    },
    "lamp": {
        # Twist: libapache2-mod-php8.2 and php8.2-* go, nothing replaces them.
        "twist": "mod_php 8.2 removed by the release (no replacement in the transaction)",
        "include": ("apache2", "libapache2-mod-php8.2", "php8.2-mysql", "mariadb-server"),
        "files": {"var/www/html/index.php": '<?php echo "sum=" . (40 + 2); ?>\n'},
        "setup": (
            'mysql -e "create database shop; create table shop.orders (id int, item text);'
            " insert into shop.orders values (1, 'desk')\"\n"
        ),
        "probes": (
            {
                "Name": "php-page",
                "Type": "http",
                "URL": "http://127.0.0.1/index.php",
                "Expect-Body": "sum=42",
                "Unit": "apache2.service",
            },
            {
                "Name": "orders",
                "Type": "command",
                "Command": "mysql -N -e 'select item from shop.orders'",
                "Expect-Output": "desk",
                "Unit": "mariadb.service",
            },
        ),
        "units": ("apache2.service", "mariadb.service"),
        "config_tests": {"apache2ctl configtest": "apache2.service"},
    },
    "nginx-php-fpm": {
        # Twist: the site's fastcgi_pass names php8.2-fpm's socket; trixie's
        # php-fpm is 8.4 (another socket), php8.2-fpm goes.
        "twist": "fastcgi_pass to php8.2-fpm's socket; trixie brings php8.4-fpm",
        "include": ("nginx", "php-fpm"),
        "files": {
            "etc/nginx/sites-available/default": (
                "server {\n\tlisten 80 default_server;\n\troot /var/www/html;\n\tindex index.php;\n"
                "\tlocation ~ \\.php$ {\n\t\tinclude snippets/fastcgi-php.conf;\n"
                "\t\tfastcgi_pass unix:/run/php/php8.2-fpm.sock;\n\t}\n}\n"
            ),
            "var/www/html/index.php": '<?php echo "sum=" . (40 + 2); ?>\n',
        },
        "setup": "",
        "probes": (
            {
                "Name": "php-page",
                "Type": "http",
                "URL": "http://127.0.0.1/index.php",
                "Expect-Body": "sum=42",
                "Unit": "nginx.service",
            },
        ),
        "units": ("nginx.service", "php8.2-fpm.service"),
        "config_tests": {"nginx -t": "nginx.service"},
    },
    "postfix-dovecot": {
        # Twist: a local change in conf.d/10-auth.conf keeps the 2.3 file
        # (confold); Dovecot 2.4 refuses 2.3 settings.
        "twist": "a kept Dovecot 2.3 conf.d file (disable_plaintext_auth) under Dovecot 2.4",
        "include": ("postfix", "dovecot-imapd", "bsd-mailx"),
        "files": {"etc/dovecot/conf.d/10-auth.conf.append": "disable_plaintext_auth = no\n"},
        "setup": (
            "useradd -m -s /bin/sh alice\necho alice:secret | chpasswd\n"
            "printf 'Subject: hello\\n\\nhello alice\\n' | /usr/sbin/sendmail alice\n"
            "for i in $(seq 30); do [ -s /var/mail/alice ] && exit 0; sleep 1; done; exit 1\n"
        ),
        "probes": (
            {
                "Name": "smtp-banner",
                "Type": "command",
                "Command": "bash -c 'exec 3<>/dev/tcp/127.0.0.1/25; head -n 1 <&3; printf \"QUIT\\r\\n\" >&3'",
                "Expect-Output": "220 ",
                "Unit": "postfix.service",
            },
            {
                "Name": "imap-inbox",
                "Type": "command",
                "Command": (
                    "bash -c 'exec 3<>/dev/tcp/127.0.0.1/143; printf \"a LOGIN alice secret\\r\\n"
                    "b SELECT INBOX\\r\\nc LOGOUT\\r\\n\" >&3; timeout 10 cat <&3'"
                ),
                "Expect-Output": "b OK",
                "Unit": "dovecot.service",
            },
        ),
        # postfix.service: bookworm runs the daemon in postfix@-.service
        # under it, trixie in postfix.service itself.
        "units": ("postfix.service", "dovecot.service"),
        "config_tests": {"doveconf -n": "dovecot.service", "postfix check": "postfix.service"},
    },
    "haproxy": {
        "include": ("haproxy", "nginx"),
        "files": {
            "etc/nginx/conf.d/backends.conf": (
                'server {\n\tlisten 8081;\n\tlocation / { return 200 "backend one\\n"; }\n}\n'
                'server {\n\tlisten 8082;\n\tlocation / { return 200 "backend two\\n"; }\n}\n'
            ),
            "etc/haproxy/haproxy.cfg.append": (
                "\nfrontend www\n\tbind 127.0.0.1:8000\n\tdefault_backend pool\n\n"
                "backend pool\n\tbalance roundrobin\n\tserver one 127.0.0.1:8081 check\n"
                "\tserver two 127.0.0.1:8082 check\n"
            ),
        },
        "setup": "",
        "probes": (
            {
                "Name": "balanced",
                "Type": "http",
                "URL": "http://127.0.0.1:8000/",
                "Expect-Body": "backend",
                "Unit": "haproxy.service",
            },
        ),
        "units": ("haproxy.service", "nginx.service"),
        "config_tests": {"haproxy -c -f /etc/haproxy/haproxy.cfg": "haproxy.service", "nginx -t": "nginx.service"},
    },
    "samba": {
        "include": ("samba", "smbclient"),
        "files": {
            "etc/samba/smb.conf.append": "\n[data]\n   path = /srv/share\n   guest ok = yes\n   read only = yes\n",
            "srv/share/hello.txt": "hello from the share\n",
        },
        "setup": "",
        "probes": (
            {
                "Name": "share-file",
                "Type": "command",
                "Command": "smbclient -N //127.0.0.1/data -c 'get hello.txt /dev/stdout'",
                "Expect-Output": "hello from the share",
                "Unit": "smbd.service",
            },
        ),
        "units": ("smbd.service",),
        "config_tests": {"testparm -s": "smbd.service"},
    },
    "prometheus": {
        "include": ("prometheus", "prometheus-node-exporter"),
        "setup": "for i in $(seq 90); do curl -sf http://127.0.0.1:9090/-/ready && exit 0; sleep 1; done; exit 1\n",
        "probes": (
            {
                "Name": "prometheus-ready",
                "Type": "http",
                "URL": "http://127.0.0.1:9090/-/ready",
                "Expect-Body": "Ready",
                "Unit": "prometheus.service",
            },
            {
                "Name": "node-metrics",
                "Type": "http",
                "URL": "http://127.0.0.1:9100/metrics",
                "Expect-Body": "#",
                "Unit": "prometheus-node-exporter.service",
            },
        ),
        "units": ("prometheus.service", "prometheus-node-exporter.service"),
        "config_tests": {"promtool check config /etc/prometheus/prometheus.yml": "prometheus.service"},
    },
    "openldap": {
        "include": ("slapd", "ldap-utils"),
        "files": {
            "root/people.ldif": (
                "dn: ou=people,dc=nodomain\nobjectClass: organizationalUnit\nou: people\n\n"
                "dn: uid=alice,ou=people,dc=nodomain\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\nsn: Liddell\n"
            ),
        },
        # Loaded offline, as a directory is restored (root's EXTERNAL identity may not write the data).
        "setup": (
            "systemctl stop slapd\nslapadd -l /root/people.ldif\nchown -R openldap:openldap /var/lib/ldap\n"
            "systemctl start slapd\n"
            "for i in $(seq 30); do ldapsearch -x -LLL -H ldap://127.0.0.1 -b dc=nodomain uid=alice cn && exit 0; sleep 1; done\n"
            "exit 1\n"
        ),
        "probes": (
            {
                "Name": "directory-alice",
                "Type": "command",
                "Command": "ldapsearch -x -LLL -H ldap://127.0.0.1 -b dc=nodomain uid=alice cn",
                "Expect-Output": "cn: Alice",
                "Unit": "slapd.service",
            },
        ),
        "units": ("slapd.service",),
        "config_tests": {"slaptest -u -F /etc/ldap/slapd.d": "slapd.service"},
    },
    "squid": {
        "include": ("squid",),
        "setup": "",
        "probes": (
            {
                "Name": "proxy-icon",
                "Type": "http",
                "URL": "http://127.0.0.1:3128/squid-internal-static/icons/SN.png",
                "Unit": "squid.service",
            },
            {"Name": "proxy-port", "Type": "tcp", "Port": "3128", "Unit": "squid.service"},
        ),
        "units": ("squid.service",),
        "config_tests": {"squid -k parse": "squid.service"},
    },
    "tomcat10": {
        "include": ("tomcat10",),
        "files": {"var/lib/tomcat10/webapps/hello.war": "@war"},
        "setup": "for i in $(seq 90); do curl -sf http://127.0.0.1:8080/hello/ && exit 0; sleep 2; done; exit 1\n",
        "probes": (
            {
                "Name": "war-page",
                "Type": "http",
                "URL": "http://127.0.0.1:8080/hello/",
                "Expect-Body": "sum=42",
                "Unit": "tomcat10.service",
            },
        ),
        "units": ("tomcat10.service",),
        "config_tests": {},
    },
    "nfs": {
        # The NFS server is the kernel's (nfsd): where the kernel has none,
        # neither side can run it, and the stack is recorded as not measured.
        "kernel_filesystem": "nfsd",
        "include": ("nfs-kernel-server",),
        "files": {
            "etc/exports": "/srv/nfs 127.0.0.1(ro,no_subtree_check)\n",
            "srv/nfs/hello.txt": "hello over nfs\n",
        },
        "setup": "exportfs -ra\n",
        "probes": (
            {
                "Name": "exports",
                "Type": "command",
                "Command": "showmount -e 127.0.0.1",
                "Expect-Output": "/srv/nfs",
                "Unit": "nfs-server.service",
            },
            {"Name": "nfs-port", "Type": "tcp", "Port": "2049", "Unit": "nfs-server.service"},
        ),
        "units": ("nfs-server.service",),
        "config_tests": {"exportfs -s": "nfs-server.service"},
    },
    "docker": {
        # An image made from busybox-static, saved as a tarball and loaded
        # (no registry); host networking, and dockerd kept off iptables (no
        # module may be loaded into the host's kernel from the machine).
        "include": ("docker.io", "busybox-static"),
        "files": {"etc/docker/daemon.json": '{"iptables": false, "ip6tables": false, "bridge": "none"}\n'},
        "setup": (
            "mkdir -p /tmp/img/bin /tmp/img/www /tmp/load\n"
            "cp /bin/busybox /tmp/img/bin/busybox\n"
            "echo 'hello from a container' > /tmp/img/www/index.html\n"
            "tar -C /tmp/img -cf /tmp/load/layer.tar bin www\n"
            "cd /tmp/load\n"
            "diff=$(sha256sum layer.tar | cut -d' ' -f1)\n"
            'printf \'{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/busybox","httpd","-f","-p","8088",'
            '"-h","/www"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}\' "$diff" > config.json\n'
            'printf \'[{"Config":"config.json","RepoTags":["corpus/web:1"],"Layers":["layer.tar"]}]\' > manifest.json\n'
            "tar -cf /root/web-image.tar manifest.json config.json layer.tar\n"
            "docker load -i /root/web-image.tar\n"
            "docker run -d --restart=always --network host --name web corpus/web:1\n"
            "for i in $(seq 30); do curl -sf http://127.0.0.1:8088/ && exit 0; sleep 1; done; exit 1\n"
        ),
        "probes": (
            {
                "Name": "container-page",
                "Type": "http",
                "URL": "http://127.0.0.1:8088/",
                "Expect-Body": "hello from a container",
                "Unit": "docker.service",
            },
        ),
        "units": ("docker.service", "containerd.service"),
        "config_tests": {},
    },
}

# Service names a problem may use for a unit (package and daemon names).
ALIASES = {
    "postgresql@15-main.service": ("postgresql",),
    "postgresql.service": ("postgresql",),
    "named.service": ("named", "bind9"),
    "redis-server.service": ("redis",),
    "apache2.service": ("apache2", "php"),
    "mariadb.service": ("mariadb", "mysql"),
    "nginx.service": ("nginx", "php"),
    "php8.2-fpm.service": ("php8.2-fpm", "php"),
    "postfix@-.service": ("postfix",),
    "dovecot.service": ("dovecot",),
    "smbd.service": ("smbd", "samba"),
    "slapd.service": ("slapd",),
    "squid.service": ("squid",),
    "tomcat10.service": ("tomcat",),
    "prometheus-node-exporter.service": ("node-exporter", "node_exporter"),
    "nfs-server.service": ("nfs",),
}


def stack_variant(name: str) -> str:
    """The stack's mmdebstrap recipe as a tests' tree variant (cached the same way)."""
    variant = f"corpus-{name}"
    stack = STACKS[name]
    trees.VARIANTS[variant] = {
        "include": tuple(sorted(set(BASE_INCLUDE) | set(stack["include"]))),
        "customize": BASE_CUSTOMIZE,
    }
    return variant


def probe_text(stack: dict[str, Any]) -> str:
    stanzas = []
    for probe in stack["probes"]:
        stanzas.append("".join(f"{k}: {v}\n" for k, v in probe.items() if k != "Unit"))
    return "\n".join(stanzas)


def stack_tarball(name: str) -> Path:
    variant = stack_variant(name)
    base = trees.cache_path(variant)
    definition = json.dumps({"base": base.name, "stack": STACKS[name]}, sort_keys=True, default=list)
    digest = hashlib.sha256(definition.encode()).hexdigest()[:12]
    return trees.CACHE_DIR / f"corpus-{name}-{digest}.tar"


def hello_war() -> bytes:
    """A web application a Tomcat deploys: one JSP (compiled by Tomcat's own Jasper)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as war:
        for name, text in (
            ("index.jsp", '<%@ page contentType="text/plain" %>sum=<%= 40 + 2 %>\n'),
            ("WEB-INF/web.xml", '<?xml version="1.0"?>\n<web-app version="5.0"/>\n'),
        ):
            war.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


def write_files(root: Path, stack: dict[str, Any]) -> None:
    for rel, content in stack.get("files", {}).items():
        if rel.endswith(".append"):
            path = root / rel[: -len(".append")]
            path.write_text(path.read_text() + content)
        else:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if content == "@war":
                path.write_bytes(hello_war())
            else:
                path.write_text(content)
    probe = root / PROBE_FILE
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(probe_text(stack))


def build_stack(name: str, work: Path) -> Path:
    """The stack's tree with its data, cached as a tarball."""
    tarball = stack_tarball(name)
    if tarball.is_file():
        return tarball
    stack = STACKS[name]
    root = work / "setup"
    log(f"{name}: building the tree (mmdebstrap, cached)")
    trees.bookworm_tree(root, variant=stack_variant(name))
    write_files(root, stack)
    with BootedMachine(root, f"corpus-setup-{name}") as machine:
        machine.run("systemctl restart " + " ".join(stack["units"]), timeout=120)
        wait_active(machine, stack["units"])
        if stack.get("setup"):
            (root / "root/rh-setup.sh").write_text("set -e\n" + stack["setup"] + "\n")
            proc = machine.run("sh /root/rh-setup.sh", timeout=600)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: set-up failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        for probe in stack["probes"]:
            ok, detail = run_probe(machine, probe)
            if not ok:
                raise SystemExit(f"{name}: probe {probe['Name']} fails on the fresh tree: {detail}")
    for sub in ("var/cache/apt/archives",):
        for deb in (root / sub).glob("*.deb"):
            deb.unlink()
    tmp = tarball.with_name(f".{tarball.name}.tmp")
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-cf", str(tmp), "-C", str(root), "."],
        check=True,
    )
    os.replace(tmp, tarball)
    shutil.rmtree(root)
    return tarball


def extract(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-xpf", str(tarball), "-C", str(dest)],
        check=True,
    )


# ---------------------------------------------------------------------------
# probes, units, config tests inside a booted machine


def run_probe(machine: BootedMachine, probe: dict[str, str]) -> tuple[bool, str]:
    kind = probe.get("Type", "command")
    if kind == "tcp":
        host, port = probe.get("Host", "127.0.0.1"), probe["Port"]
        proc = machine.run(f"timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}'", timeout=30)
        return proc.returncode == 0, f"tcp {host}:{port}: exit {proc.returncode}"
    if kind == "http":
        url = shlex.quote(probe["URL"])
        proc = machine.run(
            f"curl -ks --max-time 10 -o /tmp/rh-probe -w '%{{http_code}}' {url}; echo; head -c 300 /tmp/rh-probe | tr -cd '[:print:][:space:]'",
            timeout=30,
        )
        status, _, body = proc.stdout.partition("\n")
        ok = status.strip() == probe.get("Expect-Status", "200") and probe.get("Expect-Body", "") in body
        return ok, f"http {probe['URL']}: {status.strip()} {body[:120]!r}"
    timeout = probe.get("Timeout", "60")
    proc = machine.run(f"timeout {timeout} {probe['Command']} 2>&1", timeout=int(timeout) + 30)
    ok = proc.returncode == int(probe.get("Expect-Exit", "0")) and probe.get("Expect-Output", "") in proc.stdout
    return ok, f"exit {proc.returncode}: {proc.stdout.strip()[-200:]}"


def wait_active(machine: BootedMachine, units: tuple[str, ...], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {u: machine.run(f"systemctl is-active {u}", timeout=30).stdout.strip() for u in units}
        settled = all(s not in ("activating", "reloading", "deactivating") for s in states.values())
        if (settled and all(s == "active" for s in states.values())) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def observe(machine: BootedMachine, stack: dict[str, Any]) -> dict[str, Any]:
    units = wait_active(machine, stack["units"])
    time.sleep(2)
    probes = {}
    for probe in stack["probes"]:
        # A service that answers some time after systemd calls it started
        # (Tomcat deploying its WAR) works: asked again for up to a minute.
        deadline = time.monotonic() + 60
        while True:
            ok, detail = run_probe(machine, probe)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(2)
        probes[probe["Name"]] = {"ok": ok, "detail": detail, "unit": probe["Unit"]}
    tests = {}
    for command, unit in stack.get("config_tests", {}).items():
        proc = machine.run(f"{command} 2>&1", timeout=60)
        tests[command] = {"ok": proc.returncode == 0, "detail": proc.stdout.strip()[-300:], "unit": unit}
    failed = machine.run("systemctl --failed --plain --no-legend", timeout=30).stdout.split()
    return {
        "units": units,
        "probes": probes,
        "config_tests": tests,
        "failed_units": sorted(w for w in failed if "." in w and not w.startswith("●")),
    }


# ---------------------------------------------------------------------------
# the two sides


def predict(name: str, copy: Path, work: Path) -> dict[str, Any]:
    env = {"PATH": PATH, "LANG": "C.UTF-8", "PYTHONPATH": str(REPO / "src"), "HOME": "/root"}
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "--root", str(copy), "-o", f"APT::Rehearse::Log-Dir={work}/log", "dist-upgrade"]
        + ["--release", "trixie", "--json"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.monotonic() - started
    (work / f"{name}.rehearsal.stderr").write_text(proc.stderr)
    try:
        document = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"rc": proc.returncode, "seconds": round(seconds, 1), "error": proc.stderr[-1500:]}
    (work / f"{name}.rehearsal.json").write_text(proc.stdout)
    return {"rc": proc.returncode, "seconds": round(seconds, 1), **summarize(document, STACKS[name])}


def summarize(document: dict[str, Any], stack: dict[str, Any]) -> dict[str, Any]:
    """The rehearsal's report, as the comparison needs it: the verdict, the
    problems, and what of the stack was not working in the rehearsal's own
    baseline (not judged: only what works before can break)."""
    findings = document.get("findings", [])
    problems = []
    for problem in document.get("problems", []):
        subjects = [findings[i]["subject"] for i in problem["findings"] if i < len(findings)]
        checks = sorted({findings[i]["check"] for i in problem["findings"] if i < len(findings)})
        problems.append(
            {
                "key": problem["key"],
                "severity": problem["severity"],
                "title": problem["title"],
                "cause": problem["cause"]["text"],
                "fix": (problem.get("fix") or {}).get("why"),
                "fix_packages": (problem.get("fix") or {}).get("packages", []),
                "fix_diffs": [d["diff"] for d in (problem.get("fix") or {}).get("diffs", [])],
                "checks": checks,
                "subjects": subjects,
            }
        )
    baseline = (document.get("observations") or {}).get("baseline") or {}
    units = baseline.get("units") or {}
    probes = baseline.get("probes") or {}
    failing = [u for u in stack["units"] if (units.get(u) or {}).get("active") != "active"]
    failing += [f"probe {p['Name']}" for p in stack["probes"] if not (probes.get(p["Name"]) or {}).get("ok")]
    return {
        "verdict": document.get("verdict"),
        "changes": len(document.get("transaction", {}).get("changes", [])),
        "problems": problems,
        "baseline_failing": failing if baseline else ["no booted baseline"],
    }


def ground_truth(name: str, copy: Path, work: Path) -> dict[str, Any]:
    stack = STACKS[name]
    started = time.monotonic()
    sources = copy / "etc/apt/sources.list"
    sources.write_text(sources.read_text().replace("bookworm", "trixie"))
    link_debs(copy)
    for argv in (["apt-get", "-q", "update"], ["apt-get", "-q", "-y", "-d", "dist-upgrade"]):
        proc = subprocess.run([*chroot(copy, network=True), *argv], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: {' '.join(argv)} failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}")
    download_s = time.monotonic() - started
    with BootedMachine(copy, f"corpus-real-{name}") as machine:
        baseline = observe(machine, stack)
        started_apt = time.monotonic()
        env = "DEBIAN_FRONTEND=noninteractive APT_LISTCHANGES_FRONTEND=none"
        proc = machine.run(f"{env} {shlex.join(APT_REAL)} dist-upgrade > /root/rh-upgrade.log 2>&1", timeout=3600)
        apt_s = time.monotonic() - started_apt
        apt_rc = proc.returncode
        if machine.process.poll() is not None:
            # The machine's PID 1 ended under apt (seen once, at systemd's
            # re-exec into the new version): not the upgrade's outcome.
            journal = subprocess.run(
                ["journalctl", f"--directory={copy}/var/log/journal", "--no-pager", "-n", "60"],
                capture_output=True,
                text=True,
                check=False,
            )
            (work / f"{name}.died.journal").write_text(journal.stdout)
            raise MachineDied(f"{name}: the booted machine ended during the upgrade (apt rc {apt_rc})")
        after_upgrade = observe(machine, stack)
    log_text = (copy / "root/rh-upgrade.log").read_text(errors="replace")
    (work / f"{name}.upgrade.log").write_text(log_text)
    with BootedMachine(copy, f"corpus-reboot-{name}") as machine:
        after_reboot = observe(machine, stack)
    broken = breakage(baseline, after_upgrade) | breakage(baseline, after_reboot)
    summary = [line.strip() for line in log_text.splitlines() if " upgraded, " in line]
    return {
        "apt_rc": apt_rc,
        "apt_summary": summary[0] if summary else "",
        "apt_tail": log_text.strip().splitlines()[-8:] if apt_rc else [],
        "download_s": round(download_s, 1),
        "apt_s": round(apt_s, 1),
        "seconds": round(time.monotonic() - started, 1),
        "baseline": baseline,
        "after_upgrade": after_upgrade,
        "after_reboot": after_reboot,
        "broken": sorted(broken),
    }


class MachineDied(RuntimeError):
    pass


def breakage(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """What worked in the baseline and does not: 'unit' (its state), 'probe NAME' and 'test CMD', each with its unit."""
    broken = set()
    for unit, state in before["units"].items():
        if state == "active" and after["units"].get(unit) != "active":
            broken.add(f"{unit}: {after['units'].get(unit)}")
    for name, probe in before["probes"].items():
        if probe["ok"] and not after["probes"][name]["ok"]:
            broken.add(f"{probe['unit']}: probe {name}")
    for command, test in before["config_tests"].items():
        if test["ok"] and not after["config_tests"][command]["ok"]:
            broken.add(f"{test['unit']}: config test {command}")
    for unit in after["failed_units"]:
        if unit not in before["failed_units"]:
            broken.add(f"{unit}: failed")
    return broken


def aliases(unit: str) -> tuple[str, ...]:
    base = unit.split("@")[0].removesuffix(".service")
    return (unit, base, *ALIASES.get(unit, ()))


def compare(real: dict[str, Any], predicted: dict[str, Any], stack: dict[str, Any] | None = None) -> dict[str, Any]:
    blocking = [p for p in predicted.get("problems", []) if p["severity"] == "block"]
    text = [json.dumps(p).lower() for p in blocking]
    broken_units = sorted({item.split(": ")[0] for item in real["broken"]})
    if real["apt_rc"]:
        broken_units.append("apt-get")
    missed = []
    for unit in broken_units:
        names = ("apt", "dpkg", "package:") if unit == "apt-get" else aliases(unit)
        if predicted.get("verdict") != "block" or not any(any(n.lower() in t for n in names) for t in text):
            missed.append(unit)
    false_blocks = []
    if not broken_units and predicted.get("verdict") == "block":
        false_blocks = [p["key"] for p in blocking]
    # A blocking problem that names one of the stack's services which kept
    # working for real: a false alarm inside a stack that is rightly blocked.
    false_alarms = []
    if stack is not None:
        units = set(stack["units"]) | {probe["Unit"] for probe in stack["probes"]}
        probe_units = {f"probe:{probe['Name']}": probe["Unit"] for probe in stack["probes"]}
        for problem in blocking:
            key = problem["key"]
            if key in probe_units:
                named = [probe_units[key]]
            elif key.startswith(("service:", "socket:", "config:", "site:")):
                named = [u for u in units if u in key or key.split(":", 1)[1] in aliases(u)]
            else:
                continue
            if named and not any(u in broken_units or aliases(u)[1] in " ".join(broken_units) for u in named):
                false_alarms.append(problem["key"])
    # What worked for real but not in the rehearsal's baseline: the verdict
    # could say nothing about it (a limit of the sandbox, see the man page).
    working = {u for u, state in real["baseline"]["units"].items() if state == "active"}
    working |= {f"probe {n}" for n, probe in real["baseline"]["probes"].items() if probe["ok"]}
    not_judged = [item for item in predicted.get("baseline_failing", []) if item in working]
    if "error" in predicted:
        outcome = "rehearsal failed"
    elif missed:
        outcome = "miss"
    elif false_blocks:
        outcome = "false block"
    else:
        outcome = "agree"
    return {
        "agree": outcome == "agree",
        "outcome": outcome,
        "missed": missed,
        "false_blocks": false_blocks,
        "false_alarms": false_alarms,
        "not_judged": not_judged,
    }


# ---------------------------------------------------------------------------
# results


def load_results(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads(path.read_text())
    return {"schema": "apt-rehearse-corpus/1", "stacks": {}}


def table(results: dict[str, Any]) -> str:
    rows = [
        "| stack | packages | twist | real outcome | prediction | agree | real s | rehearsal s |",
        "| --- | --- | --- | --- | --- | --- | ---: | ---: |",
    ]
    measured = {name: entry for name, entry in results["stacks"].items() if "not_measured" not in entry}
    for name, entry in sorted(results["stacks"].items()):
        if name not in measured:
            rows.append(
                f"| {name} | {' '.join(entry['packages'])} | - | not measured: {entry['not_measured']} | - | - | - | - |"
            )
            continue
        real, pred, cmp = entry["real"], entry["prediction"], entry["comparison"]
        outcome = f"apt rc {real['apt_rc']}; " + (
            "broken: " + ", ".join(real["broken"]) if real["broken"] else "all working"
        )
        blocking = [p["key"] for p in pred.get("problems", []) if p["severity"] == "block"]
        prediction = f"{pred.get('verdict', 'error')}" + (": " + ", ".join(blocking) if blocking else "")
        rows.append(
            f"| {name} | {' '.join(entry['packages'])} | {entry.get('twist') or '-'} | {outcome} | {prediction} "
            f"| {cmp['outcome']}{' (false alarm: ' + ', '.join(cmp['false_alarms']) + ')' if cmp.get('false_alarms') else ''}"
            f"{' (not judged, failing in the sandbox: ' + ', '.join(cmp['not_judged']) + ')' if cmp.get('not_judged') else ''} "
            f"| {real['seconds']} | {pred['seconds']} |"
        )
    totals = [
        entry.get("total_s") or entry["build_s"] + entry["real"]["seconds"] + entry["prediction"]["seconds"]
        for entry in measured.values()
    ]
    if totals:
        agree = sum(entry["comparison"]["agree"] for entry in measured.values())
        rows.append("")
        rows.append(
            f"{agree} of {len(totals)} measured stacks agree"
            + (
                f" ({', '.join(sorted(set(results['stacks']) - set(measured)))} not measurable here)"
                if len(measured) < len(results["stacks"])
                else ""
            )
            + ". The stacks' runs (tree from the cache, rehearsal, real run) "
            f"add up to {round(sum(totals) / 60, 1)} min on this VM (2 cores, one stack at a time)."
        )
    return "\n".join(rows)


def write_readme(results: dict[str, Any]) -> None:
    text = README.read_text()
    if TABLE_BEGIN not in text:
        return
    head, _, rest = text.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    README.write_text(f"{head}{TABLE_BEGIN}\n{table(results)}\n{TABLE_END}{tail}")


def missing_kernel_part(stack: dict[str, Any]) -> str | None:
    """Why this kernel cannot run the stack at all, or None. Only a file
    system it knows now or has as a module counts: the corpus loads no
    module into the host's kernel."""
    wanted = stack.get("kernel_filesystem")
    if not wanted:
        return None
    known = {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    if wanted in known:
        return None
    release = os.uname().release
    if any(Path(f"/lib/modules/{release}").glob(f"kernel/fs/{wanted}/*")):
        return f"{wanted} is a module of this kernel ({release}), not loaded; the corpus loads no module"
    return f"this kernel ({release}) has no {wanted}: the server cannot run here, for real or in the rehearsal"


def run_stack(name: str, work: Path) -> dict[str, Any]:
    stack = STACKS[name]
    why = missing_kernel_part(stack)
    if why:
        log(f"{name}: not measured: {why}")
        return {"packages": list(stack["include"]), "twist": stack.get("twist"), "not_measured": why}
    started = time.monotonic()
    tarball = build_stack(name, work)
    build_s = time.monotonic() - started
    predicted_copy = work / "predict"
    extract(tarball, predicted_copy)
    log(f"{name}: rehearsing (apt-rehearse --root COPY dist-upgrade --release trixie)")
    predicted = predict(name, predicted_copy, work)
    shutil.rmtree(predicted_copy)
    log(f"{name}: prediction {predicted.get('verdict')} in {predicted['seconds']} s")
    real_copy = work / "real"
    for attempt in (1, 2):
        extract(tarball, real_copy)
        log(f"{name}: the real upgrade, booted")
        try:
            real = ground_truth(name, real_copy, work)
            break
        except MachineDied as error:
            if attempt == 2:
                raise
            log(f"{error}; once more on a fresh copy")
        finally:
            shutil.rmtree(real_copy)
    result = {
        "packages": list(stack["include"]),
        "twist": stack.get("twist"),
        "build_s": round(build_s, 1),
        "real": real,
        "prediction": predicted,
        "comparison": compare(real, predicted, stack),
        "total_s": round(time.monotonic() - started, 1),
    }
    log(f"{name}: real broken {real['broken']} apt rc {real['apt_rc']}; {result['comparison']['outcome']}")
    return result


def descendants(pid: int) -> list[int]:
    """Every process below pid (by /proc's parent links), parents first; not
    below a booted machine (unshare: powered off by BootedMachine) nor a
    rehearsal (apt-rehearse tears its sandbox down itself on SIGTERM)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"unshare"):
                    continue
                found.append(child)
                if b"apt_rehearse" not in argv:
                    stack.append(child)
    return found


def stop_descendants() -> None:
    """On SIGINT/SIGTERM: what the run started and left (mmdebstrap's own
    children outlive the kill of mmdebstrap), each by its pid."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", default="", help="comma-separated stacks (default: all)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="copy the logs and reports of the run into this directory")
    parser.add_argument("--table", action="store_true", help="print the table of the saved results and exit")
    parser.add_argument(
        "--recompare",
        type=Path,
        metavar="DIR",
        help="judge the saved results again from the reports kept in DIR (--keep), after a change to the comparison",
    )
    args = parser.parse_args()
    results = load_results(args.json)
    if args.table:
        print(table(results))
        return 0
    if args.recompare:
        for name, entry in results["stacks"].items():
            kept = args.recompare / f"{name}.rehearsal.json"
            if "not_measured" in entry or name not in STACKS or not kept.is_file():
                continue
            seconds, rc = entry["prediction"]["seconds"], entry["prediction"]["rc"]
            entry["prediction"] = {
                "rc": rc,
                "seconds": seconds,
                **summarize(json.loads(kept.read_text()), STACKS[name]),
            }
            entry["comparison"] = compare(entry["real"], entry["prediction"], STACKS[name])
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        write_readme(results)
        print(table(results))
        return 0
    names = [s for s in args.stacks.replace(" ", ",").split(",") if s] or list(STACKS)
    unknown = [n for n in names if n not in STACKS]
    if unknown:
        parser.error(f"unknown stacks {unknown}; known: {', '.join(STACKS)}")
    if os.geteuid() != 0:
        parser.error("needs root")
    work = Path(tempfile.mkdtemp(prefix="rh-corpus-", dir="/var/tmp"))

    def stop(signum: int, _frame: object) -> None:
        # Now, while they still hang below this process (mmdebstrap's forks
        # outlive the kill of mmdebstrap itself).
        stop_descendants()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    failed: list[str] = []
    try:
        for name in names:
            try:
                results["stacks"][name] = run_stack(name, work)
            except (Exception, SystemExit) as error:  # one stack's harness failure: the others still run
                log(f"{name}: not measured: {error}")
                failed.append(name)
                continue
            finally:
                for sub in ("predict", "real", "setup"):
                    if (work / sub).exists():
                        shutil.rmtree(work / sub)
            args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            write_readme(results)
        results["whole_run_s"] = round(time.monotonic() - started, 1)
        results["last_run_stacks"] = ",".join(names)
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        write_readme(results)
        print(table(results))
        if failed:
            print(f"not measured: {', '.join(failed)}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        stop_descendants()
        raise
    finally:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for item in work.glob("*.*"):
                if item.is_file():
                    shutil.copy(item, args.keep / item.name)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
