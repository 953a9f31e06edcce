"""What unattended-upgrades is about to install, computed by its own code.

unattended-upgrades commits in minimal steps, one apt run each, so the hook
would fire once per step. ``apt-rehearse gate`` asks unattended-upgrades'
own functions (its allowed origins, black- and whitelists, pins, sanity
checks) for the whole set, so it can be rehearsed once and approved in the
verdict cache; each step is then a cache hit.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
from types import ModuleType
from typing import Any

from apt_rehearse.model.errors import RehearsalError, UsageError

UNATTENDED_UPGRADE = "/usr/bin/unattended-upgrade"


def load_unattended_upgrade(path: str = UNATTENDED_UPGRADE) -> ModuleType:
    if not os.path.exists(path):
        raise UsageError(
            "unattended-upgrades is not installed: there is nothing to gate (apt-get install unattended-upgrades)"
        )
    loader = importlib.machinery.SourceFileLoader("apt_rehearse_unattended_upgrade", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    if spec is None:
        raise RehearsalError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - their code, our one-line error
        raise RehearsalError(f"cannot load unattended-upgrades' code from {path}: {error}") from error
    for name in ("UnattendedUpgradesCache", "calculate_upgradable_pkgs", "mark_pkgs_to_upgrade", "Options"):
        if not hasattr(module, name):
            raise RehearsalError(
                f"this unattended-upgrades has no {name}(); apt-rehearse gate cannot ask it what it would install"
            )
    return module


def open_and_mark(module: ModuleType, root: str) -> Any:
    """unattended-upgrades' cache, marked with everything it would upgrade."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # its progress chatter is not ours to print
    try:
        cache = module.UnattendedUpgradesCache(rootdir=None if root == "/" else root)
        options = module.Options()
        packages = module.calculate_upgradable_pkgs(cache, options)
        names = sorted(pkg.name for pkg in packages)
        module.mark_pkgs_to_upgrade(cache, names)
    except SystemError as error:
        raise RehearsalError(f"unattended-upgrades cannot compute its set: {str(error).strip()}") from error
    finally:
        root_logger.setLevel(level)
    return cache
