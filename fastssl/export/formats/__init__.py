"""Export formats, found by name: each module here is one format, named as `--format` names it.

A format module defines `SUFFIX` (the default file name's ending) and `write(exported, path) -> lines`:
it writes the network atomically, checks the file before it replaces `path`, and returns the lines to
report. Modules are listed without being imported, so the names cost no torch import.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def names() -> tuple[str, ...]:
    return tuple(sorted(module.name for module in pkgutil.iter_modules(__path__)))


def get(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")
