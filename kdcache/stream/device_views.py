"""Seeded views made on the device: an in-memory dataset's uint8 images held as one tensor, and each
batch's crops and flips cut from it by batched tensor ops.

Row ``k`` of :meth:`DeviceViews.views` is bit-identical to item ``k`` of
:class:`kdcache.views.SeededViews` over the same (view, index) pairs: the geometry of each row comes
from the recipe's own :meth:`~kdcache.augment.PadCropFlip.geometry` on the host, seeded by
:func:`kdcache.seeding.sample_seed` (torch's RNG is never re-implemented), and the crop reads the
same pixels of the same zero-padded image. Only the cutting moves to the device. The replay check
hashes rows of :meth:`DeviceViews.views` with :func:`kdcache.seeding.input_hashes` (on the host).

The host work per row is one ``geometry`` call (a sha256 and three draws, tens of microseconds) the
first time a (view, index) pair is asked for; a table keeps the answer, so later epochs look it up.
Exhaustive recipes need no table: the geometry is a function of the view alone.

Supported: recipes ``none`` where it is the identity (images already S x S, no resize) and
``cifar`` (seeded or exhaustive, any padding), over sources that hold every image in memory with
one shape ``[C, S, S]`` (:meth:`~kdcache.data.SourceDataset.images_array`). Mixed recipes,
``imagenet`` and ``randaugment`` stay on the host stream (:meth:`DeviceViews.unsupported_reason`).
"""

from __future__ import annotations

import numpy as np
import torch

from kdcache.augment.base import Recipe
from kdcache.augment.geometric import EvalTransform, PadCropFlip
from kdcache.augment.mix import MixedRecipe
from kdcache.data.source import SourceDataset
from kdcache.errors import ConfigError
from kdcache.seeding import sample_seed

_COPY_ROWS = 8192  # images copied to the device per step: bounds the host's transient copy


def _padding(recipe: Recipe) -> int:
    return recipe.padding if isinstance(recipe, PadCropFlip) else 0


class DeviceViews:
    """The views of ``recipe`` over ``source``, made on ``device`` from one resident image tensor.

    Holds the images zero-padded once (``[N, C, S + 2p, S + 2p]`` uint8, p the recipe's padding)
    and the labels (int64 ``[N]``) on the device. Not thread-safe: one consumer at a time.
    """

    def __init__(
        self, source: SourceDataset, recipe: Recipe, cache_seed: int, device: torch.device
    ) -> None:
        reason = self.unsupported_reason(source, recipe)
        if reason is not None:
            raise ConfigError(f"the device-resident views cannot serve this data: {reason}")
        if not 0 <= cache_seed < 2**64:
            raise ConfigError(f"the cache seed must be in [0, 2**64), got {cache_seed}")
        images = source.images_array()
        assert images is not None  # unsupported_reason checked it
        self.source = source
        self.recipe = recipe
        self.cache_seed = int(cache_seed)
        self.device = torch.device(device)
        self.num_samples = len(source)
        n, c, s = images.shape[0], images.shape[1], images.shape[2]
        self.size = s
        self.padding = pad = _padding(recipe)
        self.exhaustive = isinstance(recipe, PadCropFlip) and recipe.exhaustive
        self._num_views = recipe.num_distinct_views() if self.exhaustive else None
        side = s + 2 * pad
        # Padded once here, so a crop is a gather with no bounds tests: the padding's zeros are
        # the same zeros the recipe's canvas has.
        self._padded = torch.zeros((n, c, side, side), dtype=torch.uint8, device=self.device)
        for start in range(0, n, _COPY_ROWS):
            block = torch.tensor(images[start : start + _COPY_ROWS])  # a copy: the source is r/o
            self._padded[start : start + len(block), :, pad : pad + s, pad : pad + s] = block.to(
                self.device
            )
        self._labels = torch.from_numpy(source.labels.copy()).to(self.device)  # int64 [N]
        # The seeded geometry per (view, index) as its exhaustive view code
        # (dy * positions + dx) * 2 + flip, -1 until a batch asks for it: [V, N], grown by view.
        self._positions = 2 * pad + 1
        self._code_dtype = np.int32 if self._positions**2 * 2 < 2**31 else np.int64
        self._codes = np.full((0, n), -1, self._code_dtype)
        self._columns = np.arange(s, dtype=np.int64)  # [S]
        #: How many rows' geometry was drawn from the recipe (each once; tests and benchmarks).
        self.geometry_calls = 0
        # `none` without padding: the view is the image itself.
        self._identity = pad == 0 and isinstance(recipe, EvalTransform)

    @staticmethod
    def unsupported_reason(source: SourceDataset, recipe: Recipe) -> str | None:
        """None when these views can be made on the device; otherwise why not, in one line."""
        if isinstance(recipe, MixedRecipe):
            return (
                f"recipe {recipe.name!r} mixes images (mixup/cutmix): its views are made on the "
                "host stream"
            )
        if not isinstance(recipe, EvalTransform | PadCropFlip):
            return (
                f"recipe {recipe.name!r} is made on the host stream; only 'none' and 'cifar' "
                "(seeded or exhaustive) run on the device"
            )
        images = source.images_array()
        if images is None:
            return (
                f"{source!r} reads its images on access (files, possibly of varying size); only "
                "datasets held in memory with one image size (CIFAR, digits) fit on the device"
            )
        size, chans = recipe.spec.image_size, source.spec.in_chans
        if tuple(images.shape[1:]) != (chans, size, size):
            return (
                f"{source!r} has images of shape {tuple(images.shape[1:])}, recipe {recipe.name!r} "
                f"makes [{chans}, {size}, {size}]: a resize is needed, which the host stream does"
            )
        if isinstance(recipe, EvalTransform) and round(size / recipe.crop_pct) != size:
            return (
                f"recipe 'none' with crop_pct {recipe.crop_pct} resizes the {size}x{size} images "
                "before its centre crop; only the identity (no resize) runs on the device"
            )
        return None

    @staticmethod
    def nbytes(source: SourceDataset, recipe: Recipe) -> int:
        """Bytes the views would hold on the device: the padded uint8 images and int64 labels."""
        side = recipe.spec.image_size + 2 * _padding(recipe)
        return len(source) * (source.spec.in_chans * side * side + 8)

    @property
    def device_bytes(self) -> int:
        """Bytes held on the device now (what :meth:`nbytes` predicts)."""
        return self._padded.nbytes + self._labels.nbytes

    def _check(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items)
        if items.ndim != 2 or items.shape[1] != 2 or items.dtype.kind not in "iu":
            raise ValueError(f"items must be integer (view, index) pairs [B, 2], got {items.shape}")
        items = items.astype(np.int64, copy=False)
        if len(items) and (items.min() < 0 or items[:, 1].max() >= self.num_samples):
            raise ConfigError(
                f"items hold indices outside [0, {self.num_samples}) or negative views for "
                f"{self.source!r}"
            )
        if self._num_views is not None and len(items) and items[:, 0].max() >= self._num_views:
            raise ConfigError(
                f"recipe {self.recipe.name!r} enumerates views 0..{self._num_views - 1}; "
                f"got view {int(items[:, 0].max())}"
            )
        return items

    def _geometry_codes(self, items: np.ndarray) -> np.ndarray:
        """int64 [B]: each checked row's geometry as its exhaustive view code."""
        views, index = items[:, 0], items[:, 1]
        if self.exhaustive or not isinstance(self.recipe, PadCropFlip):
            return views if self.exhaustive else np.zeros(len(items), np.int64)
        if len(items) and views.max() >= len(self._codes):
            grown = np.full((int(views.max()) + 1, self.num_samples), -1, self._code_dtype)
            grown[: len(self._codes)] = self._codes
            self._codes = grown
        codes = self._codes[views, index].astype(np.int64)
        missing = codes < 0
        if missing.any():
            for v, i in np.unique(items[missing], axis=0).tolist():
                dy, dx, flip = self.recipe.geometry(
                    sample_seed=sample_seed(self.cache_seed, v, i), view=v
                )
                self._codes[v, i] = (dy * self._positions + dx) * 2 + int(flip)
                self.geometry_calls += 1
            codes = self._codes[views, index].astype(np.int64)
        return codes

    def geometry(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dy, dx, flip), int64 / int64 / bool ``[B]``: each row's crop offset in the padded
        image and whether it is mirrored, as the recipe draws them for (view, index) ``items``.

        Seeded ``cifar``: drawn once per pair by the recipe's ``geometry`` and kept (calling this
        on an epoch's items ahead of its batches draws them all at once); ``none``: zeros;
        exhaustive: computed from the view.
        """
        codes = self._geometry_codes(self._check(items))
        return codes // 2 // self._positions, codes // 2 % self._positions, codes % 2 == 1

    def views(self, items: np.ndarray) -> torch.Tensor:
        """uint8 ``[B, C, S, S]`` on the device: the views of (view, index) ``items`` [B, 2],
        bit-identical to ``SeededViews(source, recipe, cache_seed, items)[k]["image"]``."""
        return self.cut(self.pack(items))

    def pack(self, items: np.ndarray) -> torch.Tensor:
        """int64 ``[B, 1 + 2S]`` on the device, one host-to-device copy: each row's sample index
        and the flat offsets of its crop's rows (dy + y) and columns (dx + (S - 1 - x if flipped
        else x)) in its padded P x P plane. Pack a whole epoch's items once and :meth:`cut`
        slices of it: no copy per batch."""
        items = self._check(items)
        s, j = self.size, self._columns
        side = s + 2 * self.padding
        # A few small numpy ops per row, on the host (a device would pay a launch for each).
        packed = np.zeros((len(items), 1 + 2 * s), np.int64)
        packed[:, 0] = items[:, 1]
        if not self._identity:
            codes = self._geometry_codes(items)
            dy, dx, flip = codes // 2 // self._positions, codes // 2 % self._positions, codes % 2
            packed[:, 1 : 1 + s] = (dy[:, None] + j) * side
            packed[:, 1 + s :] = dx[:, None] + np.where(flip[:, None] == 1, s - 1 - j, j)
        return torch.from_numpy(packed).to(self.device)

    def cut(self, packed: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, S, S]``: the views of the rows ``packed`` (a slice of :meth:`pack`),
        by tensor ops on the device alone."""
        rows = self._padded.index_select(0, packed[:, 0])  # [B, C, P, P]
        if self._identity:  # `none` on images of the right size: the view is the image
            return rows
        s = self.size
        side = s + 2 * self.padding
        b, c = rows.shape[0], rows.shape[1]
        offsets = packed[:, 1 : 1 + s, None] + packed[:, None, 1 + s :]  # [B, S, S]
        # A gather per row's plane: measured 4x faster on CPU than one flat gather of B*C*S*S.
        planes = rows.view(b, c, side * side)
        return planes.gather(2, offsets.view(b, 1, s * s).expand(b, c, s * s)).view(b, c, s, s)

    def labels_at(self, index: torch.Tensor) -> torch.Tensor:
        """int64 ``[B]`` on the device: the labels of the sample ``index`` (a device tensor, e.g.
        ``pack(items)[:, 0]``)."""
        return self._labels.index_select(0, index)

    def labels(self, items: np.ndarray) -> torch.Tensor:
        """int64 ``[B]`` on the device: the label of each (view, index) row of ``items``."""
        index = self._check(items)[:, 1]
        return self._labels.index_select(0, torch.from_numpy(index.copy()).to(self.device))
