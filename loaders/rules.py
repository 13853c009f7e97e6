"""Named rules for settings: a broken one is a ConfigError naming the key, the value and the rule.

Lives in `loaders`, the lowest layer with settings of its own; `fastssl.config` builds on it, so a rule
reads and fails the same way in every section.
"""
from __future__ import annotations

import math
import typing
from typing import Any

MAX_SHOWN = 200          # characters of a value an error message echoes
# Temperatures divide similarities in [-1, 1] into logits: published ones are 0.01 to 1. Outside
# [1e-4, 1e4] nothing trains, and at 1e-308 the scale 1 / temperature is not even a float.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 1e4


class ConfigError(ValueError):
    """A config value breaks a rule; the message names the key, the value and the rule."""


def cut(text: str) -> str:
    """`text` cut to MAX_SHOWN characters, saying how long it was: one hostile value must not make a
    megabyte error message."""
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """repr(value) for an error message, cut to MAX_SHOWN characters."""
    return cut(repr(value))


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a Literal type: the one place a list of choices is written."""
    return typing.get_args(literal)


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={shown(value)}: {rule}")


def int_in(key: str, value: int, low: int, high: int, why: str = "") -> None:
    require(value >= low, key, value, f"must be >= {low}")
    require(value <= high, key, value, f"must be <= {high}{why}")


def finite_in(key: str, value: float, low: float, high: float) -> None:
    require(math.isfinite(value) and low <= value <= high, key, value, f"must be a finite number in [{low}, {high}]")


def finite_positive(key: str, value: float) -> None:
    require(math.isfinite(value) and value > 0, key, value, "must be a finite number > 0")


def probability(key: str, value: float) -> None:
    require(0.0 <= value <= 1.0, key, value, "must be a probability in [0, 1]")


def check_temperature(key: str, value: float) -> None:
    finite_in(key, value, MIN_TEMPERATURE, MAX_TEMPERATURE)
