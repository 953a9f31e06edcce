"""What the target system says about the packages a transaction touches, as
the checks read it (inside.facts finds it)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RemovalFacts:
    """What a package that would be removed ships that the system uses."""

    enabled_services: list[str]
    web_modules: list[str]


@dataclasses.dataclass(frozen=True)
class ConffilePrompt:
    """A conffile dpkg would ask about."""

    package: str
    path: str
