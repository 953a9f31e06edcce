"""Tiny real .deb packages and a local flat apt repository for tests.

Integration tests rehearse real upgrades ("rh-app 1.0 -> 2.0" with a changed
conffile, a failing postinst, a conflict...). Building the packages with
dpkg-deb and serving them from a file: repository keeps apt, dpkg and the
maintainer scripts fully real, with no network and no fixtures checked in.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

from debian.deb822 import Deb822

MAINTAINER = "apt-rehearse tests <apt-rehearse-tests@localhost>"
_SCRIPTS = ("preinst", "postinst", "prerm", "postrm")


def deb_filename(name: str, version: str, arch: str) -> str:
    """The file name dpkg gives a package: no epoch (dpkg drops it)."""
    _, _, upstream = version.rpartition(":")
    return f"{name}_{upstream}_{arch}.deb"


def build_deb(
    outdir: Path,
    name: str,
    version: str,
    *,
    arch: str = "all",
    depends: str | None = None,
    conflicts: str | None = None,
    replaces: str | None = None,
    provides: str | None = None,
    files: dict[str, str | bytes] | None = None,
    conffiles: dict[str, str] | None = None,
    postinst: str | None = None,
    preinst: str | None = None,
    prerm: str | None = None,
    postrm: str | None = None,
    extra_control: dict[str, str] | None = None,
) -> Path:
    """Build a real .deb with dpkg-deb and return its path in outdir.

    files and conffiles map absolute install paths to content; conffiles must
    be under /etc and are listed in DEBIAN/conffiles. A file whose content
    starts with "#!" is installed 0755, any other 0644. Maintainer scripts
    without a shebang get "#!/bin/sh" and "set -e" put in front. extra_control
    adds or overrides control fields (e.g. {"Pre-Depends": "..."}).
    """
    files = dict(files or {})
    conffiles = dict(conffiles or {})
    for path in [*files, *conffiles]:
        if not path.startswith("/") or path.endswith("/") or "/../" in path + "/":
            raise ValueError(f"{name}: install path must be an absolute file path: {path!r}")
    for path in conffiles:
        if not path.startswith("/etc/"):
            raise ValueError(f"{name}: conffile {path!r} is not under /etc")
        if path in files:
            raise ValueError(f"{name}: {path!r} is in both files and conffiles")

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    deb = outdir / deb_filename(name, version, arch)
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as tmp:
        stage = Path(tmp) / "root"
        debian = stage / "DEBIAN"
        debian.mkdir(parents=True)
        installed_bytes = 0
        for path, content in {**files, **conffiles}.items():
            data = content.encode() if isinstance(content, str) else content
            target = stage / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o755 if data.startswith(b"#!") else 0o644)
            installed_bytes += len(data)
        if conffiles:
            (debian / "conffiles").write_text("".join(f"{p}\n" for p in conffiles))
        scripts = {"preinst": preinst, "postinst": postinst, "prerm": prerm, "postrm": postrm}
        for script, body in scripts.items():
            if body is None:
                continue
            if not body.startswith("#!"):
                body = "#!/bin/sh\nset -e\n" + body
            if not body.endswith("\n"):
                body += "\n"
            (debian / script).write_text(body)
            (debian / script).chmod(0o755)

        control = Deb822()
        control["Package"] = name
        control["Version"] = version
        control["Architecture"] = arch
        control["Maintainer"] = MAINTAINER
        control["Installed-Size"] = str(max(1, -(-installed_bytes // 1024)))
        for field, value in (
            ("Depends", depends),
            ("Conflicts", conflicts),
            ("Replaces", replaces),
            ("Provides", provides),
        ):
            if value:
                control[field] = value
        control["Section"] = "misc"
        control["Priority"] = "optional"
        control["Description"] = f"apt-rehearse test package {name}\n built by tests/lib/localrepo.py"
        for field, value in (extra_control or {}).items():
            control[field] = value
        (debian / "control").write_bytes(control.dump().encode())

        # The umask must not leak into the package (dpkg-deb checks DEBIAN/).
        for dirpath, _, _ in os.walk(stage):
            os.chmod(dirpath, 0o755)
        proc = subprocess.run(
            ["dpkg-deb", "--build", "--root-owner-group", str(stage), str(deb)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg-deb failed for {name} {version}:\n{proc.stderr.strip()}")
    return deb


class LocalRepo:
    """A flat apt repository in a directory, served as file: with [trusted=yes].

    Add debs, publish, point apt at sources_line(); add newer versions and
    publish again to offer an upgrade. Old versions stay in the pool and in
    the index (like a real archive with several suites merged), so a test can
    still install a specific older version.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.pool = self.root / "pool"
        self.pool.mkdir(parents=True, exist_ok=True)
        # World-readable, so apt's _apt sandbox user can read it when the
        # parent directories allow.
        for d in (self.root, self.pool):
            os.chmod(d, 0o755)
        self._last_date: datetime | None = None

    def add(self, deb_path: Path) -> Path:
        """Copy a .deb into the pool; it is offered from the next publish()."""
        deb_path = Path(deb_path)
        if deb_path.suffix not in (".deb", ".udeb"):
            raise ValueError(f"not a .deb: {deb_path}")
        target = self.pool / deb_path.name
        shutil.copyfile(deb_path, target)
        os.chmod(target, 0o644)
        return target

    def publish(self, *, contents: bool = False) -> None:
        """Write Packages, Packages.gz and Release for what is in the pool;
        with ``contents``, also the archive's Contents-amd64 (what apt-file
        and plan/contents read)."""
        proc = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg-scanpackages failed:\n{proc.stderr.decode(errors='replace').strip()}")
        packages = proc.stdout
        self._write("Packages", packages)
        self._write("Packages.gz", gzip.compress(packages, mtime=0))
        indexes = ["Packages", "Packages.gz"]
        if contents:
            self._write("Contents-amd64", self._contents())
            indexes.append("Contents-amd64")

        # apt rejects a Release older than the one it has: never go backwards.
        now = datetime.now(timezone.utc).replace(microsecond=0)
        if self._last_date is not None and now < self._last_date:
            now = self._last_date
        self._last_date = now
        release = Deb822()
        release["Origin"] = "apt-rehearse-tests"
        release["Label"] = "apt-rehearse-tests"
        release["Date"] = format_datetime(now, usegmt=True)
        for field, algo in (("MD5Sum", "md5"), ("SHA256", "sha256")):
            lines = [""]
            for index in indexes:
                data = (self.root / index).read_bytes()
                lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data)} {index}")
            release[field] = "\n".join(lines)
        self._write("Release", release.dump().encode())

    def _contents(self) -> bytes:
        """As the archive writes it: each file, and the section/package shipping it."""
        from debian.debfile import DebFile

        rows: dict[str, set[str]] = {}
        for deb in sorted(self.pool.glob("*.deb")):
            package = DebFile(str(deb))
            control = package.debcontrol()
            where = f"{control.get('Section', 'misc')}/{control['Package']}"
            for member in package.data.tgz().getmembers():
                if member.isfile() or member.issym():
                    rows.setdefault(member.name.lstrip("./"), set()).add(where)
        return "".join(f"{path:<60} {','.join(sorted(wheres))}\n" for path, wheres in sorted(rows.items())).encode()

    def sources_line(self) -> str:
        """The one-line sources.list entry for this repository."""
        return f"deb [trusted=yes] file:{self.root} ./"

    def _write(self, name: str, data: bytes) -> None:
        # Atomic, so an apt reading the repository never sees half a file.
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.root / name)


# apt-file's index target (/etc/apt/apt.conf.d/50apt-file.conf), for a flat repository.
CONTENTS_TARGET = "Acquire::IndexTargets::deb::Contents-deb::"
CONTENTS_OPTIONS = [
    f"{CONTENTS_TARGET}MetaKey=$(COMPONENT)/Contents-$(ARCHITECTURE)",
    f"{CONTENTS_TARGET}flatMetaKey=Contents-$(ARCHITECTURE)",
    f"{CONTENTS_TARGET}ShortDescription=Contents-$(ARCHITECTURE)",
    f"{CONTENTS_TARGET}Description=$(RELEASE)/$(COMPONENT) $(ARCHITECTURE) Contents (deb)",
    f"{CONTENTS_TARGET}flatDescription=$(RELEASE) Contents (deb)",
]


def serve_to_tree(tree: Path, repo: "LocalRepo", *, contents: bool = False) -> None:
    """Make the repository the tree's only source, and update the tree's lists
    (with the host's apt, Dir pointing at the tree); with ``contents``, its
    Contents index too, as apt does with apt-file installed."""
    (tree / "etc/apt/sources.list").write_text(repo.sources_line() + "\n")
    for extra in (tree / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    options = [argument for option in (CONTENTS_OPTIONS if contents else []) for argument in ("-o", option)]
    subprocess.run(["apt-get", "-q", "-o", f"Dir={tree}/", *options, "update"], check=True, capture_output=True)
