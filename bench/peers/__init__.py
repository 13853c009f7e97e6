"""`fastssl bench peers`: fastssl beside the trainers a user would pick instead, on one recipe.

One module per trainer, `<name>_runner.py`, found by its NAME (adding a peer is adding a file):
NAME, METHODS, version(), substitutions(spec) (what it cannot express and what it did instead) and
train(spec, device) -> the trained backbone; or, for a trainer that cannot run here, unavailable()
-> the reason. Every run is its own process (child.py), timed by the same optimizer-step hook
(clock.py); every backbone is scored by the same evaluator (evaluate.py); peers_bench.py orchestrates.
The peers' packages are imported only inside their runners' train(): `pip install 'fastssl[peers]'`.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType


def runners() -> dict[str, ModuleType]:
    """NAME -> runner module, for every `*_runner` module of this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith("_runner"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            found[module.NAME] = module
    return found


def runner(name: str) -> ModuleType:
    table = runners()
    if name not in table:
        raise ValueError(f"peer {name!r}: must be one of {', '.join(sorted(table))}")
    return table[name]


def installed_version(distribution: str) -> str:
    """The installed version of a peer's package, or 'not installed'."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def not_installed(distribution: str) -> str | None:
    """Why a peer cannot run when its package is missing (None when it is there)."""
    if installed_version(distribution) == "not installed":
        return f"{distribution} is not installed: pip install 'fastssl[peers]'"
    return None
