"""``create_recipe``: a recipe by name, base (``cifar``) or mixed (``cifar+mixup``)."""

from __future__ import annotations

from typing import Any

from kdcache.augment.base import Recipe, create_base_recipe
from kdcache.augment.mix import create_mixed_recipe
from kdcache.data.spec import DatasetSpec


def create_recipe(name: str, spec: DatasetSpec, **params: Any) -> Recipe:
    """Build the recipe ``name`` for a dataset; unknown names or parameters are user errors.

    ``"<base>+mixup"``, ``"<base>+cutmix"`` and ``"<base>+mixup-cutmix"`` mix each view of the base
    recipe with a partner's (:mod:`kdcache.augment.mix`). ``params()`` of the result rebuild it:
    ``create_recipe(r.name, spec, **r.params())``.
    """
    if "+" in name:
        return create_mixed_recipe(name, spec, dict(params))
    return create_base_recipe(name, spec, **params)
