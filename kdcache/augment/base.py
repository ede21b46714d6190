"""The recipe interface and the registry of base recipes (``list_recipes``).

A recipe maps an original uint8 image and a per-sample seed to one augmented uint8 image. It is the
augmentation half of the determinism contract (docs/design.md §Determinism): all randomness comes
from a ``torch.Generator`` seeded with ``sample_seed`` (or, for third-party transforms that only
use global RNGs, from :func:`kdcache.seeding.forked_global_rng`), so a call is a pure function of
``(image, sample_seed, view)`` and never disturbs the caller's RNG state.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import torch

from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError, UnknownNameError


class Recipe(ABC):
    """A seeded, replayable augmentation for the images of one dataset.

    Every recipe outputs ``[spec.in_chans, spec.image_size, spec.image_size]`` uint8 images, so the
    default collate can batch them. ``params()`` holds every parameter, so
    ``create_recipe(r.name, spec, **r.params())`` rebuilds ``r``.
    """

    name: ClassVar[str]
    #: Whether the recipe can enumerate its views (``exhaustive=True``).
    finite: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Every parameter, JSON-serialisable."""

    def num_distinct_views(self) -> int | None:
        """How many different outputs one image can have; None when unbounded."""
        return None

    @abstractmethod
    def __call__(self, image: torch.Tensor, *, sample_seed: int, view: int) -> torch.Tensor:
        """uint8 ``[C, H, W]`` original -> uint8 ``[C, S, S]`` augmented (a new tensor)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({self.spec.name!r}, {args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipe):
            return NotImplemented
        return (self.name, self.spec, self.params()) == (other.name, other.spec, other.params())

    def __hash__(self) -> int:
        return hash((self.name, self.spec))


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: recipes never draw from torch's global RNG."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def check_uint8_image(image: torch.Tensor, spec: DatasetSpec, recipe: str) -> None:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != spec.in_chans:
        raise TypeError(
            f"recipe {recipe!r} expects a uint8 [{spec.in_chans}, H, W] image, "
            f"got {image.dtype} {tuple(image.shape)}"
        )


R = TypeVar("R", bound=type[Recipe])
_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: R) -> R:
    """Class decorator: make ``cls`` available to :func:`create_recipe` under ``cls.name``."""
    if cls.name in _RECIPES:
        raise ValueError(f"recipe {cls.name!r} registered twice")
    _RECIPES[cls.name] = cls
    return cls


def list_recipes() -> list[str]:
    """Names accepted by :func:`create_recipe`."""
    return sorted(_RECIPES)


def views_to_store(recipe: Recipe, requested: int | None) -> int:
    """How many views a cache of ``recipe`` holds when the user asked for ``requested``.

    ``None`` means "the default": every distinct view for an exhaustive recipe (162 for ``cifar``
    with padding 4), one otherwise. An exhaustive recipe cannot have more views than it enumerates.
    """
    exhaustive = bool(recipe.params().get("exhaustive"))
    distinct = recipe.num_distinct_views() if exhaustive else None
    if requested is None:
        return distinct if distinct is not None else 1
    if requested < 1:
        raise ConfigError(f"`views` must be >= 1, got {requested}")
    if distinct is not None and requested > distinct:
        raise ConfigError(
            f"`views` {requested} exceeds the {distinct} distinct views the exhaustive "
            f"{recipe.name!r} recipe has; leave `views` unset to store all {distinct}, or ask "
            "for fewer"
        )
    return requested


def create_base_recipe(name: str, spec: DatasetSpec, **params: Any) -> Recipe:
    """Build the registered (unmixed) recipe ``name``; unknown names or parameters are user errors.

    :func:`kdcache.augment.create_recipe` is the public way in (it also builds mixed recipes).
    """
    cls = _RECIPES.get(name)
    if cls is None:
        raise UnknownNameError(
            f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())} "
            "(each optionally followed by +mixup, +cutmix or +mixup-cutmix)"
        )
    if "exhaustive" in params and not cls.finite:
        if params.pop("exhaustive"):
            finite = ", ".join(n for n in list_recipes() if _RECIPES[n].finite)
            raise ConfigError(
                f"recipe {name!r} has no finite set of views, so exhaustive=True is impossible; "
                f"recipes that can enumerate their views: {finite}"
            )
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "spec")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"recipe {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    return cls(spec, **params)
