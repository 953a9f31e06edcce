"""Replacement suggestions (by name, Replaces, Provides): right answers, and no scan of the whole cache per removed package.

A release's cache has some 60,000 names; making a Package object of each,
for every one of the 26 removals of the LAMP release upgrade, was most of its
planning time (issue 7).
"""

from __future__ import annotations

import dataclasses

from apt_rehearse.plan.planner import suggest_replacements


@dataclasses.dataclass
class FakeVersion:
    provides: list[str]
    downloadable: bool = True
    # apt_pkg's side, as planner._replacing reads it.
    _cand: "FakeId" = dataclasses.field(default_factory=lambda: FakeId(id(object())))


@dataclasses.dataclass
class FakeId:
    id: int


@dataclasses.dataclass
class FakeDependency:
    """apt_pkg.Dependency: ``parent_ver`` of ``parent_pkg`` Replaces the package whose list holds it."""

    dep_type_untranslated: str
    parent_pkg: "FakeAptPkg"
    parent_ver: FakeId


@dataclasses.dataclass
class FakeAptPkg:
    name: str
    rev_depends_list: list[FakeDependency] = dataclasses.field(default_factory=list)

    def get_fullname(self, pretty: bool = False) -> str:
        return self.name


@dataclasses.dataclass
class FakePackage:
    name: str
    candidate: FakeVersion | None
    installed: FakeVersion | None = None
    marked_delete: bool = False
    _pkg: FakeAptPkg = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._pkg = FakeAptPkg(self.name)


class FakeCache:
    def __init__(self, packages: list[FakePackage]) -> None:
        self.packages = {pkg.name: pkg for pkg in packages}
        self.full_scans = 0
        self.lookups = 0

    def keys(self) -> list[str]:
        return sorted(self.packages)

    def __iter__(self):  # noqa: ANN204
        self.full_scans += 1
        for name in self.keys():
            yield self.packages[name]

    def __contains__(self, name: object) -> bool:
        return name in self.packages

    def __getitem__(self, name: str) -> FakePackage:
        self.lookups += 1
        return self.packages[name]


def _cache(extra: int = 2000) -> FakeCache:
    packages = [
        FakePackage("php8.2-mysql", None, FakeVersion([]), marked_delete=True),
        FakePackage("php8.2-cli", None, FakeVersion(["php-cli"]), marked_delete=True),
        FakePackage("libapache2-mod-php8.2", None, FakeVersion(["phpapi-20220829"]), marked_delete=True),
        FakePackage("libfoo1", None, FakeVersion(["foo-abi-1"]), marked_delete=True),
        FakePackage("php8.4-mysql", FakeVersion([])),
        FakePackage("php8.3-mysql", FakeVersion([])),
        FakePackage("php8.4-cli", FakeVersion(["php-cli"])),
        FakePackage("php8.9-cli", FakeVersion([], downloadable=False)),
        FakePackage("libapache2-mod-php8.4", FakeVersion(["phpapi-20240924"])),
        FakePackage("libbar-compat", FakeVersion(["foo-abi-1"])),
        FakePackage("nothing-here", None),
    ]
    packages += [FakePackage(f"filler{i}", FakeVersion([])) for i in range(extra)]
    # rh-legacyd-ng's candidate Replaces rh-legacyd; an older version of rh-other did.
    legacy, successor, other = (
        FakePackage("rh-legacyd", None, FakeVersion([]), marked_delete=True),
        FakePackage("rh-legacyd-ng", FakeVersion([])),
        FakePackage("rh-other", FakeVersion([])),
    )
    legacy._pkg.rev_depends_list = [
        FakeDependency("Replaces", successor._pkg, successor.candidate._cand),
        FakeDependency("Replaces", other._pkg, FakeId(-1)),
        FakeDependency("Depends", other._pkg, other.candidate._cand),
    ]
    packages += [legacy, successor, other]
    return FakeCache(packages)


def test_suggestions_by_name_then_by_provides() -> None:
    cache = _cache()
    removed = ["php8.2-mysql", "php8.2-cli", "libapache2-mod-php8.2", "libfoo1", "adduser", "rh-legacyd"]
    assert suggest_replacements(cache, removed) == {  # type: ignore[arg-type]
        "php8.2-mysql": "php8.4-mysql",
        "php8.2-cli": "php8.4-cli",  # php8.9-cli is not downloadable
        "libapache2-mod-php8.2": "libapache2-mod-php8.4",
        "libfoo1": "libbar-compat",  # no libfoo2: what provides foo-abi-1
        "rh-legacyd": "rh-legacyd-ng",  # no number in its name: what Replaces it
    }


def test_at_most_one_scan_of_the_cache() -> None:
    cache = _cache()
    suggest_replacements(cache, ["php8.2-mysql", "php8.2-cli", "libapache2-mod-php8.2", "libfoo1"])  # type: ignore[arg-type]
    assert cache.full_scans <= 1  # the one "provides" scan, for libfoo1
    assert cache.lookups < 100  # packages made only for names that match, not for the 2,000 others
