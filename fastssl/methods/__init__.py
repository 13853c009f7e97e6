"""Self-supervised methods behind one contract (base.Method), found by name.

A method is one module in this package that defines a Method subclass decorated with `register`;
every module here is imported on first use of the registry, so adding a method is adding a file.
A method registered elsewhere (a test, a user's package) joins the same way.
"""
from __future__ import annotations

import importlib
import pkgutil

from fastssl.loaders.rules import ConfigError, shown

from .base import Method, MethodContext

__all__ = ["Method", "MethodContext", "build_method", "check", "method_class", "methods", "register"]

_REGISTRY: dict[str, type[Method]] = {}
_discovered = False


def register(name: str):
    """Class decorator: the Method subclass answers to `name`."""
    def add(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r}: already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def methods() -> dict[str, type[Method]]:
    """Every registered method by name (in name order), this package's modules imported first."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True
    return dict(sorted(_REGISTRY.items()))


def method_class(name: str) -> type[Method]:
    """The method registered as `name`; a ConfigError naming method.head and the choices otherwise."""
    known = methods()
    if name not in known:
        raise ConfigError(f"method.head={shown(name)}: must be one of {', '.join(known)} (the registered methods)")
    return known[name]


def check(cfg, world: int = 1) -> None:
    """The method's own rules on the run config (after config.validate): before any work is done."""
    method_class(cfg.method.head).check(cfg, world)


def build_method(cfg, ctx: MethodContext) -> Method:
    """The method `cfg.head` names, built from the method config `cfg` and the run's context."""
    return method_class(cfg.head).build(cfg, ctx)
