"""Self-supervised methods behind one contract (base.Method), found by name.

A method is one module in this package that defines a Method subclass decorated with `register`,
with its settings as a dataclass (`Method.Settings`, read from the config section `method.<name>`);
every module here is imported on first use of the registry, so adding a method is adding a file.
A method registered elsewhere (a test, a user's package) joins the same way.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from fastssl import config as config_mod
from fastssl.loaders.rules import ConfigError, shown

from .base import Method, MethodContext

__all__ = ["Method", "MethodContext", "build_method", "check", "method_class", "methods", "per_view_bn", "register",
           "typed_sections"]

_REGISTRY: dict[str, type[Method]] = {}
_DEFAULT: list[str] = []        # the method a config that names none runs
_ALIASES: dict[str, str] = {}   # another name a method answers to (the literature's) -> its registered name
_discovered = False


def register(name: str, default: bool = False, aliases: tuple[str, ...] = ()):
    """Class decorator: the Method subclass answers to `name` (and `aliases`, which a config's method.name
    may use and which read as `name`); `default`: a config naming no method runs it."""
    def add(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r}: already registered by {_REGISTRY[name].__module__}")
        if default and _DEFAULT and _DEFAULT[0] != name:
            raise ValueError(f"method {name!r}: {_DEFAULT[0]!r} is already the default method")
        cls.name = name
        _REGISTRY[name] = cls
        _ALIASES.update({alias: name for alias in aliases})
        if default:
            _DEFAULT[:] = [name]
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
    """The method registered as `name`; a ConfigError naming method.name and the choices otherwise."""
    known = methods()
    name = _ALIASES.get(name, name)
    if name not in known:
        aliases = "".join(f", {alias} (= {method})" for alias, method in sorted(_ALIASES.items()))
        raise ConfigError(f"method.name={shown(name)}: must be one of {', '.join(known)}{aliases} (the registered "
                          "methods)")
    return known[name]


def _moved(key: str) -> str | None:
    """Where a flat key of an older config (method.svm_c) lives now, if a method renamed it."""
    field = key.removeprefix("method.")
    for name, cls in methods().items():
        if field in cls.RENAMED:
            return f"method.{name}.{cls.RENAMED[field]}"
    return None


def typed_sections(method_cfg) -> None:
    """Every `method.<name>` section read from the config becomes that method's Settings, filled with
    the config's own coercion; the selected method's section is added with its defaults if absent,
    and a config naming no method gets the default one."""
    known = methods()
    if not method_cfg.name and _DEFAULT:
        method_cfg.name = _DEFAULT[0]
    method_cfg.name = _ALIASES.get(method_cfg.name, method_cfg.name)
    for alias in set(method_cfg.sections) & set(_ALIASES):
        config_mod.fill(method_cfg, {_ALIASES[alias]: method_cfg.sections.pop(alias)}, "method.")
    for name, values in list(method_cfg.sections.items()):
        key = f"method.{name}"
        if name not in known:
            moved = _moved(key)
            if moved:
                raise ConfigError(f"{key}: moved to {moved}; this config was written for an older fastssl")
            raise ConfigError(f"unknown key {shown(key)} (known in method: name, loss_impl, loss_dtype, and a "
                              f"section per registered method: {', '.join(known)})")
        if dataclasses.is_dataclass(values):
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{key}={shown(values)}: must be a mapping of the method's settings")
        settings = known[name].Settings()
        config_mod.fill(settings, values, key + ".")
        method_cfg.sections[name] = settings
    if method_cfg.name in known and method_cfg.name not in method_cfg.sections:
        method_cfg.sections[method_cfg.name] = known[method_cfg.name].Settings()


def check(cfg, world: int = 1) -> None:
    """The selected method's rules on its settings and the run config (after config.validate), before
    any work is done; every other section present is typed too, so a misspelt key there is caught."""
    typed_sections(cfg.method)
    cls = method_class(cfg.method.name)
    cls.check(cfg.method.settings, cfg, world)


def build_method(method_cfg, ctx: MethodContext) -> Method:
    """The method `method_cfg.name` names, from its settings and the run's context (with the config's
    loss_impl, which every method's loss shares)."""
    typed_sections(method_cfg)
    cls = method_class(method_cfg.name)
    return cls.build(method_cfg.settings, dataclasses.replace(ctx, impl=method_cfg.loss_impl))


def per_view_bn(cfg) -> bool:
    """model.per_view_bn, or where it is null the selected method's original choice (Method.per_view_bn)."""
    if cfg.model.per_view_bn is not None:
        return cfg.model.per_view_bn
    return method_class(cfg.method.name).per_view_bn
