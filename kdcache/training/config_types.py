"""Type checks for settings that arrive untyped (YAML files, Python dicts) before a TrainConfig.

The command line's options are typed by click; a YAML file's values are whatever YAML made of them,
so ``epochs: ten`` (a string) or ``epochs: true`` (a bool, which Python counts as the int 1) must be
refused here, by the field's annotation, rather than fail deep in a comparison or run one epoch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from kdcache.errors import ConfigError


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a fine float (lr: 1), a bool is not
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict)
    if origin is tuple:
        return isinstance(value, tuple) and all(
            _matches(v, typing.get_args(hint)[0]) for v in value
        )
    return True  # a type this check does not know: the dataclass validates it


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(hint: Any) -> str:
    """``int | None`` -> "an integer"; ``Literal['a', 'b']`` -> "one of 'a', 'b'"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [h for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(_describe(h) for h in args)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return "a mapping"
    if typing.get_origin(hint) is tuple:
        return "a list"
    return _NAMES.get(hint, str(hint))


def check_types(cls: type, settings: dict[str, Any]) -> None:
    """Raise ConfigError naming the first setting whose value does not fit its field's type."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in settings and not _matches(settings[field.name], hints[field.name]):
            value = settings[field.name]
            raise ConfigError(
                f"{field.name.replace('_', '-')} must be {_describe(hints[field.name])}, got "
                f"{value!r} ({type(value).__name__})"
            )


def parse_views(value: Any) -> tuple[int, ...]:
    """Views as YAML or Python give them: ``[0, 1]`` or ``"0,1"`` -> ``(0, 1)``, ``2`` -> (2,)."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    bad = ConfigError(f"views must be view numbers such as [0, 1] or '0,1', got {value!r}")
    parsed = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):  # true is not a view
            raise bad
        try:
            parsed.append(int(item))
        except ValueError:
            raise bad from None
    return tuple(parsed)
