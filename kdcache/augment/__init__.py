"""Seeded, replayable augmentation recipes (docs/design.md §Determinism).

======================  ========================================================  ===========
name                    what                                                      views
======================  ========================================================  ===========
``none``                evaluation transform (identity on CIFAR / digits)        1
``cifar``               zero-pad 4, random S x S crop, flip p=0.5                 162 (finite)
``imagenet``            RandomResizedCrop(S, (0.08, 1), (3/4, 4/3)) + flip        unbounded
``randaugment``         ``cifar`` or ``imagenet`` base + timm rand-m9-mstd0.5    unbounded
======================  ========================================================  ===========

    recipe = create_recipe("cifar", spec)
    image = recipe(source.image(i), sample_seed=sample_seed(cache_seed, v, i), view=v)
"""

from kdcache.augment import geometric, randaugment  # noqa: F401  (registers the recipes)
from kdcache.augment.base import Recipe, list_recipes, register_recipe, views_to_store
from kdcache.augment.factory import create_recipe
from kdcache.augment.geometric import EvalTransform, PadCropFlip, RandomResizedCropFlip
from kdcache.augment.randaugment import RandAugmentRecipe

__all__ = [
    "EvalTransform",
    "PadCropFlip",
    "RandAugmentRecipe",
    "RandomResizedCropFlip",
    "Recipe",
    "create_recipe",
    "list_recipes",
    "register_recipe",
    "views_to_store",
]
