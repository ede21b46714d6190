"""Seeded augmented views of a source dataset: item ``k`` of a list of (view, index) pairs.

Item ``(v, i)`` is ``recipe(source.image(i), sample_seed=sample_seed(cache_seed, v, i), view=v)``,
a pure function of ``(cache_seed, v, i)``: the same bytes whatever the batch size, worker count,
order or process (docs/design.md §Determinism). Each item carries the
:func:`kdcache.seeding.input_hash` of its uint8 image, which the cache stores and ``train`` /
``verify`` compare.

With a mixed recipe (``cifar+mixup`` ...) item ``(v, i)`` is the base view of i mixed with the base
view of its partner j (same v), as :mod:`kdcache.augment.mix` draws from ``(cache_seed, v, i)``;
the hash covers the mixed image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

# The layers: kdcache.data (images) <- kdcache.augment (recipes) <- this module (views of both).
from kdcache.augment.base import Recipe
from kdcache.augment.mix import MixedRecipe, apply_mix
from kdcache.data.source import SourceDataset
from kdcache.errors import ConfigError
from kdcache.seeding import input_hash, sample_seed


def view_items(views: Iterable[int], indices: Iterable[int] | int) -> np.ndarray:
    """All (view, index) pairs, view-major: ``[[v0, i0], [v0, i1], ..., [v1, i0], ...]``.

    ``indices`` is an iterable of sample indices or N for ``range(N)``. Returns int64 ``[M, 2]``.
    """
    if isinstance(indices, int | np.integer):
        idx = np.arange(int(indices), dtype=np.int64)
    else:
        idx = np.fromiter(indices, dtype=np.int64)
    v = np.fromiter(views, dtype=np.int64)
    grid = np.stack(np.meshgrid(v, idx, indexing="ij"), axis=-1)  # [V, N, 2]
    return grid.reshape(-1, 2).astype(np.int64)


class SeededViews(torch.utils.data.Dataset):
    """A map-style dataset of augmented views; picklable for fork and spawn DataLoader workers.

    ``self[k]`` is ``{"image": uint8 [C, S, S], "label": int, "view": int, "index": int,
    "input_hash": int}`` for the pair ``items[k] = (view, index)``; the default collate turns the
    ints into int64 tensors ``[B]``. With a mixed recipe the item also has ``"partner": int``,
    ``"partner_label": int`` and ``"lam"``: a float32 0-d tensor, the weight of ``label`` in the
    mixed target (float32 ``[B]`` once collated).
    """

    def __init__(
        self, source: SourceDataset, recipe: Recipe, cache_seed: int, items: np.ndarray
    ) -> None:
        items = np.asarray(items)
        if items.ndim != 2 or items.shape[1] != 2 or not np.issubdtype(items.dtype, np.integer):
            raise ValueError(f"items must be integer (view, index) pairs [M, 2], got {items.shape}")
        if len(items) and (items.min() < 0 or items[:, 1].max() >= len(source)):
            raise ConfigError(
                f"items hold indices outside [0, {len(source)}) or negative views for {source!r}"
            )
        limit = recipe.num_distinct_views() if recipe.params().get("exhaustive") else None
        if limit is not None and len(items) and items[:, 0].max() >= limit:
            raise ConfigError(
                f"recipe {recipe.name!r} enumerates views 0..{limit - 1}; "
                f"got view {int(items[:, 0].max())}"
            )
        if not 0 <= cache_seed < 2**64:
            raise ConfigError(f"the cache seed must be in [0, 2**64), got {cache_seed}")
        self.source = source
        self.recipe = recipe
        self.cache_seed = int(cache_seed)
        self.items = np.ascontiguousarray(items, dtype=np.int64)  # [M, 2]

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def _view(self, view: int, index: int) -> torch.Tensor:
        """The recipe's (for a mixed recipe: the base's, unmixed) view, uint8 [C, S, S]."""
        return self.recipe(
            self.source.image(index),
            sample_seed=sample_seed(self.cache_seed, view, index),
            view=view,
        )

    def __getitem__(self, k: int) -> dict[str, Any]:
        view, index = (int(x) for x in self.items[k])
        image = self._view(view, index)  # [C, S, S] uint8
        extra: dict[str, Any] = {}
        if isinstance(self.recipe, MixedRecipe):
            draw = self.recipe.draw(self.cache_seed, view, index, len(self.source))
            if draw.kind != "none" and draw.partner != index:  # j == i: the view is unchanged
                image = apply_mix(image, self._view(view, draw.partner), draw)
            extra = {
                "partner": draw.partner,
                "partner_label": int(self.source.labels[draw.partner]),
                "lam": torch.tensor(float(draw.lam), dtype=torch.float32),
            }
        return {
            "image": image,
            "label": int(self.source.labels[index]),
            "view": view,
            "index": index,
            "input_hash": input_hash(image),
            **extra,
        }
