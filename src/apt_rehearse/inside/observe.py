"""Inside the booted sandbox: what the services look like right now.

An observation is plain data (JSON): every unit's state, the sockets each
unit listens on, what every HTTP port answers, the daemons' own config
tests, and the sysadmin's probes. The checks compare observations taken
before the upgrade, after it, and after a reboot into it.

Runs in a process that joined the sandbox's namespaces, so it reads the
sandbox's /proc and reaches the services on the sandbox's loopback only.
"""

from __future__ import annotations

import encodings.idna
import glob
import hashlib
import http.client
import os
import re
import shlex
import socket
import ssl
import stat
import subprocess
import time
from typing import Any

from debian.deb822 import Deb822

from apt_rehearse.inside.commands import run_command
from apt_rehearse.model.observation import kernel_picked

PROBES_DIR = "/etc/apt-rehearse/probes.d"
HTTP_TIMEOUT = 5.0
BODY_LIMIT = 256 << 10

CONFIG_TESTS = (
    # name, command, file that must exist
    ("apache2ctl -t", ["apache2ctl", "-t"], "/usr/sbin/apache2ctl"),
    ("apache2ctl -M", ["apache2ctl", "-M"], "/usr/sbin/apache2ctl"),
    ("nginx -t", ["nginx", "-t"], "/usr/sbin/nginx"),
    ("sshd -t", ["/usr/sbin/sshd", "-t"], "/usr/sbin/sshd"),
    ("php -m", ["php", "-m"], "/usr/bin/php"),
    ("postfix check", ["postfix", "check"], "/usr/sbin/postfix"),
    # bind9-utils ships it in /usr/bin (bookworm and trixie), older ones in /usr/sbin.
    ("named-checkconf", ["named-checkconf"], ("/usr/bin/named-checkconf", "/usr/sbin/named-checkconf")),
    ("visudo -c", ["visudo", "-c"], "/usr/sbin/visudo"),
)
TCP_STATES = {"0A": "listen"}


# What `systemctl is-system-running` answers once the boot is over.
SETTLED_STATES = ("running", "degraded", "maintenance", "stopping")
UNIT_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState")


def settle(timeout: float) -> dict[str, Any]:
    """Wait until systemd says the boot is over (running or degraded).

    systemd waits itself (--wait); asked again only while its manager does
    not answer yet (early in the boot there is no bus to ask)."""
    started = time.monotonic()
    state = ""
    while (left := timeout - (time.monotonic() - started)) > 0:
        code, output = run_command(["systemctl", "is-system-running", "--wait"], timeout=left)
        state = output.strip().splitlines()[-1] if output.strip() else ""
        if state in SETTLED_STATES or code in (124, 127):
            break
        time.sleep(0.1)
    if state not in SETTLED_STATES:
        # Timed out: what the boot is still doing, in systemd's own word.
        _, output = run_command(["systemctl", "is-system-running"], timeout=10)
        state = output.strip().splitlines()[-1] if output.strip() else state
    _, jobs = run_command(["systemctl", "list-jobs", "--no-legend", "--no-pager"], timeout=10)
    return {
        "state": state or "unknown",
        "seconds": round(time.monotonic() - started, 3),
        "jobs": [line for line in jobs.splitlines() if line.strip()][:20],
    }


def units() -> dict[str, dict[str, str]]:
    """Every service and socket systemd knows (loaded, or only named by
    another unit), with its load, active and sub states."""
    _, output = run_command(
        ["systemctl", "show", "--all", f"--property={','.join(UNIT_PROPERTIES)}", "*.service", "*.socket"], timeout=30
    )
    result = {}
    # One block of KEY=value lines per unit, blank lines between.
    for block in output.split("\n\n"):
        fields = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if fields.get("Id") and all(fields.get(key) for key in UNIT_PROPERTIES):
            result[fields["Id"]] = {
                "load": fields["LoadState"],
                "active": fields["ActiveState"],
                "sub": fields["SubState"],
            }
    return result


def journal(unit: str, lines: int = 15) -> list[str]:
    _, output = run_command(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit], timeout=20)
    return [line for line in output.splitlines() if line.strip() and not line.startswith("-- ")][-lines:]


def _socket_inodes() -> dict[str, str]:
    """socket inode -> the systemd unit of the process holding it."""
    owners: dict[str, str] = {}
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        pid = fd_dir.split("/")[2]
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
                cgroup = handle.read().strip().rsplit("/", 1)[-1]
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owners.setdefault(target[8:-1], cgroup)
        except OSError:
            continue
    return owners


def _parse_address(text: str, v6: bool) -> tuple[str, int]:
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    if v6:
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(socket.AF_INET6, raw)
    else:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    return host, int(port, 16)


def sockets() -> list[dict[str, Any]]:
    owners = _socket_inodes()
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{proto}", encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10:
                continue
            state = fields[3]
            if proto.startswith("tcp") and state != "0A":
                continue
            if proto.startswith("udp") and state != "07":
                continue
            host, port = _parse_address(fields[1], proto.endswith("6"))
            found.append(
                {
                    "proto": proto.rstrip("6"),
                    "family": 6 if proto.endswith("6") else 4,
                    "address": host,
                    "port": port,
                    "unit": owners.get(fields[9], ""),
                }
            )
    unique = {(s["proto"], s["family"], s["address"], s["port"]): s for s in found}
    return sorted(unique.values(), key=lambda s: (s["proto"], s["port"], s["family"], s["address"]))


def http_get(
    host: str, port: int, path: str = "/", tls: bool = False, timeout: float = HTTP_TIMEOUT
) -> dict[str, Any] | None:
    """One GET on the sandbox's loopback; None when the port does not speak HTTP."""
    connection_class = http.client.HTTPSConnection if tls else http.client.HTTPConnection
    kwargs: dict[str, Any] = {"timeout": timeout}
    if tls:
        kwargs["context"] = ssl._create_unverified_context()  # the sandbox's own self-signed certificates
    try:
        connection = connection_class(host, port, **kwargs)
        connection.request("GET", path, headers={"Host": "localhost", "User-Agent": "apt-rehearse"})
        response = connection.getresponse()
        body = response.read(BODY_LIMIT)
        connection.close()
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return {
        "status": response.status,
        "content_type": (response.getheader("Content-Type") or "").split(";")[0].strip(),
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
        "snippet": body[:300].decode("utf-8", "replace"),
        "php_source": b"<?php" in body,
        "_body": body.decode("utf-8", "replace"),  # for probes only; dropped from observations
    }


SITE_CONFIGS = ("/etc/apache2/sites-enabled/*", "/etc/nginx/sites-enabled/*", "/etc/nginx/conf.d/*.conf")
INDEX_NAMES = ("index.php", "index.html", "index.htm")


def site_index_paths() -> list[str]:
    """The sites' own index files: a page that breaks (PHP source instead of
    the page) hides behind a default index.html at "/"."""
    roots = set()
    for pattern in SITE_CONFIGS:
        for path in glob.glob(pattern):
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            roots.update(
                m.group(1).strip('"') for m in re.finditer(r"^\s*(?:DocumentRoot|root)\s+([^;\s]+)", text, re.M)
            )
    found = []
    for root in sorted(roots):
        for name in INDEX_NAMES:
            if os.path.isfile(os.path.join(root, name)):
                found.append("/" + name)
    return sorted(set(found))


def _local_host(sock: dict[str, Any]) -> str:
    """Where a listening socket is reached from inside."""
    if sock["address"] not in ("0.0.0.0", "::", "127.0.0.1", "::1"):
        return sock["address"]
    return "127.0.0.1" if sock["family"] == 4 else "::1"


def http_pages(listening: list[dict[str, Any]], extra_urls: list[str]) -> dict[str, Any]:
    """GET / on every TCP port that answers HTTP, twice: a page that changes
    by itself (a clock, a session) is not compared by its body."""
    pages: dict[str, Any] = {}
    targets = []
    index_paths = site_index_paths()
    for sock in listening:
        if sock["proto"] != "tcp":
            continue
        host = _local_host(sock)
        targets.append((host, sock["port"], "/"))
        if sock["port"] in (80, 443, 8080):
            targets += [(host, sock["port"], path) for path in index_paths]
    for url in extra_urls:
        match = re.match(r"^(https?)://([^/:]+)(?::(\d+))?(/.*)?$", url)
        if match:
            port = int(match.group(3) or (443 if match.group(1) == "https" else 80))
            targets.append((match.group(2), port, match.group(4) or "/"))
    for host, port, path in dict.fromkeys(targets):
        first = http_get(host, port, path)
        tls = False
        if first is None and port in (443, 8443):
            first, tls = http_get(host, port, path, tls=True), True
        if first is None:
            continue
        second = http_get(host, port, path, tls=tls)
        first["tls"] = tls
        first["stable"] = second is not None and second["sha256"] == first["sha256"]
        first.pop("_body", None)
        pages[f"{port}{path}"] = first
    return pages


def config_tests() -> dict[str, dict[str, Any]]:
    results = {}
    for name, argv, needed in CONFIG_TESTS:
        if not any(os.path.exists(path) for path in ((needed,) if isinstance(needed, str) else needed)):
            continue
        code, output = run_command(argv, timeout=60)
        entry: dict[str, Any] = {"exit_status": code, "output": output.strip().splitlines()[-10:]}
        if name == "apache2ctl -M":
            entry["modules"] = sorted(m.group(1) for m in re.finditer(r"^\s*(\w+_module)\b", output, re.M))
            entry.pop("output")
        if name == "php -m":
            entry["modules"] = sorted(
                line.strip() for line in output.splitlines() if line.strip() and not line.startswith("[")
            )
            entry.pop("output")
        results[name] = entry
    return results


def read_probes(directory: str = PROBES_DIR) -> list[dict[str, str]]:
    """/etc/apt-rehearse/probes.d/*.probe: deb822 stanzas (Type: http, tcp or command).

    Field names are case-insensitive (kept lower-case here); a continuation
    line joins its field's value on a new line, stripped."""
    probes = []
    for path in sorted(glob.glob(os.path.join(directory, "*.probe"))):
        with open(path, encoding="utf-8") as handle:
            stanzas = list(Deb822.iter_paragraphs(handle))
        for index, stanza in enumerate(stanzas):
            fields = {
                key.lower(): "\n".join(line.strip() for line in value.splitlines()).strip()
                for key, value in stanza.items()
            }
            if fields:
                fields.setdefault("name", f"{os.path.basename(path)}#{index + 1}")
                probes.append(fields)
    return probes


def run_probe(probe: dict[str, str]) -> dict[str, Any]:
    kind = probe.get("type", "command").lower()
    if kind == "http":
        match = re.match(r"^(https?)://([^/:]+)(?::(\d+))?(/.*)?$", probe.get("url", ""))
        if not match:
            return {"ok": False, "detail": "bad URL"}
        port = int(match.group(3) or (443 if match.group(1) == "https" else 80))
        page = http_get(match.group(2), port, match.group(4) or "/", tls=match.group(1) == "https")
        if page is None:
            return {"ok": False, "detail": "no HTTP answer"}
        want = int(probe.get("expect-status", "200"))
        contains = probe.get("expect-body", "")
        ok = page["status"] == want and (not contains or contains in page["_body"])
        return {"ok": ok, "detail": f"HTTP {page['status']} {page['content_type']}"}
    if kind == "tcp":
        try:
            with socket.create_connection((probe.get("host", "127.0.0.1"), int(probe.get("port", "0"))), timeout=5):
                return {"ok": True, "detail": "connected"}
        except OSError as error:
            return {"ok": False, "detail": str(error)}
    command = probe.get("command", "")
    try:
        argv = shlex.split(command)
    except ValueError:
        return {"ok": False, "detail": "bad command"}
    if not argv:
        return {"ok": False, "detail": "no command"}
    code, output = run_command(argv, timeout=float(probe.get("timeout", "60")))
    want = int(probe.get("expect-exit", "0"))
    contains = probe.get("expect-output", "")
    ok = code == want and (not contains or contains in output)
    return {"ok": ok, "detail": f"exit {code}: {output.strip()[-200:]}"}


# The web servers' configurations, whose unix: sockets (PHP-FPM's, an
# application server's) are read: what is enabled only (not *-available).
WEB_SERVER_CONFIGS = ("/etc/nginx", "/etc/apache2", "/etc/lighttpd", "/etc/haproxy")
UNIX_SOCKET_REFERENCE = re.compile(r"unix:(/[^\s;|\"',)]+)")
MAX_SOCKET_REFERENCES = 200


def socket_references(tops: tuple[str, ...] = WEB_SERVER_CONFIGS) -> list[dict[str, Any]]:
    """Every unix: socket the web servers' enabled configuration names, with
    whether it exists now and the sockets beside it (what a renamed one is
    called now: php8.2-fpm.sock -> php8.4-fpm.sock)."""
    found: list[dict[str, Any]] = []
    listed: dict[str, list[str]] = {}

    def beside(directory: str) -> list[str]:
        if directory not in listed:
            listed[directory] = _sockets_in(directory)
        return listed[directory]

    for top in tops:
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not d.endswith("-available"))
            for name in sorted(files):
                path = os.path.join(directory, name)
                try:
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        lines = handle.read(1 << 20).splitlines()
                except OSError:
                    continue
                for number, line in enumerate(lines, 1):
                    if line.lstrip().startswith("#"):
                        continue
                    for match in UNIX_SOCKET_REFERENCE.finditer(line):
                        target = match.group(1)
                        found.append(
                            {
                                "file": path,
                                "line": number,
                                "text": line.strip()[:300],
                                "path": target,
                                "exists": os.path.exists(target),
                                "beside": beside(os.path.dirname(target)),
                            }
                        )
                        if len(found) >= MAX_SOCKET_REFERENCES:
                            return found
    return found


def _sockets_in(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    beside = []
    for name in names[:100]:
        try:
            if stat.S_ISSOCK(os.stat(os.path.join(directory, name)).st_mode):
                beside.append(os.path.join(directory, name))
        except OSError:
            continue
    return beside


# The booted system's services, as its own systemd groups them.
SERVICES_CPU_STAT = "/sys/fs/cgroup/system.slice/cpu.stat"
# Busier than this (of one CPU) is still starting; idle this many rounds in a row, nothing more is coming.
BUSY_SHARE = 0.05
IDLE_ROUNDS = 3


def wait_ready(timeout: float, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Once systemd has settled, wait for what should answer to answer:
    systemd calls a simple service started when its process runs, and an
    application server (Tomcat deploying its WARs, a JVM) listens, or serves
    its page, some seconds later. Without ``baseline``: every probe passes.
    With it (after the upgrade, after the reboot): also every port that
    listened then listens again (not those the kernel picks at each start)
    and every page it answered answers with the same status.

    Asked again every second, for at most ``timeout`` seconds (a probe's own
    Wait field bounds that probe), and only while the services still work:
    once they have been idle for three seconds in a row, what is missing is
    not coming, and a real breakage costs that, not the timeout.

    Returns how long it waited and what still did not answer."""
    if timeout <= 0:
        return {"seconds": 0.0, "missing": []}  # observed at once, as asked
    started = time.monotonic()
    probes = read_probes()
    ports: set[tuple[str, int]] = set()
    pages: dict[tuple[str, int, str], tuple[int, bool]] = {}
    if baseline is not None:
        passed = {name for name, result in (baseline.get("probes") or {}).items() if result.get("ok")}
        probes = [probe for probe in probes if probe["name"] in passed]
        listening = [s for s in baseline.get("sockets") or [] if not kernel_picked(s["port"])]
        ports = {(s["proto"], s["port"]) for s in listening}
        hosts = {s["port"]: _local_host(s) for s in listening if s["proto"] == "tcp"}
        for key, page in (baseline.get("http") or {}).items():
            port, _, path = key.partition("/")
            if port.isdigit() and int(port) in hosts:
                pages[(hosts[int(port)], int(port), "/" + path)] = (page["status"], bool(page.get("tls")))
    pending = {probe["name"]: probe for probe in probes}
    idle = 0
    used, used_at = _services_cpu_usec(), time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        missing = _missing(ports, pages, pending, elapsed, timeout)
        if not missing or elapsed >= timeout or idle >= IDLE_ROUNDS:
            result: dict[str, Any] = {"seconds": round(elapsed, 3), "missing": missing}
            if idle >= IDLE_ROUNDS:
                result["idle"] = True
            return result
        time.sleep(1.0)
        now_used, now_at = _services_cpu_usec(), time.monotonic()
        if used is not None and now_used is not None:
            busy = (now_used - used) / 1e6 / max(now_at - used_at, 1e-3) > BUSY_SHARE
            idle = 0 if busy else idle + 1
        used, used_at = now_used, now_at


def _missing(
    ports: set[tuple[str, int]],
    pages: dict[tuple[str, int, str], tuple[int, bool]],
    pending: dict[str, dict[str, str]],
    elapsed: float,
    timeout: float,
) -> list[str]:
    """What of the expected does not answer now (a probe that passes leaves ``pending``)."""
    now = {(s["proto"], s["port"]) for s in sockets()} if ports or pages else set()
    missing = [f"{proto} port {port}" for proto, port in sorted(ports - now)]
    for (host, port, path), (status, tls) in sorted(pages.items()):
        if ("tcp", port) in now:
            page = http_get(host, port, path, tls=tls)
            if page is None or page["status"] != status:
                missing.append(f"http://{host}:{port}{path}")
    for name, probe in list(pending.items()):
        if elapsed > _seconds(probe.get("wait"), timeout) or run_probe(probe)["ok"]:
            del pending[name]  # passed, or waited for as long as it may be
        else:
            missing.append(f"probe {name}")
    return missing


def _services_cpu_usec() -> int | None:
    """CPU time the booted system's services have used so far (cgroup v2's
    cpu.stat, there with or without the cpu controller); None where unknown:
    then only the timeout ends the wait."""
    try:
        with open(SERVICES_CPU_STAT, encoding="ascii") as handle:
            for line in handle:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None


def _seconds(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def observe(extra_urls: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    unit_states = units()
    listening = sockets()
    observation = {
        "units": unit_states,
        "sockets": listening,
        "http": http_pages(listening, extra_urls),
        "config_tests": config_tests(),
        "probes": {probe["name"]: {**run_probe(probe), "probe": probe} for probe in read_probes()},
        "socket_references": socket_references(),
    }
    failed = [name for name, state in unit_states.items() if state["active"] == "failed"]
    observation["journal"] = {name: journal(name) for name in failed[:20]}
    observation["seconds"] = round(time.monotonic() - started, 3)
    return observation


# Imported here, before any process joins the sandbox: a module imported
# later would come from the rehearsed system's Python, not ours.
_PRELOADED = (subprocess, ssl, encodings.idna)  # idna: http.client encodes host names with it
