"""Hyper-parameter validation shared by the losses: one message style, naming the allowed range."""

from __future__ import annotations

import math

from kdcache.errors import ConfigError


def check_positive(name: str, value: float) -> float:
    """Raise :class:`ConfigError` unless ``value`` is a finite number > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """Raise :class:`ConfigError` unless ``value`` is a finite number >= 0 (loss weights)."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_bool(name: str, value: bool) -> bool:
    """Raise :class:`ConfigError` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
