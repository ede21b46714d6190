"""Where a batch's uint8 views come from: the host path or the device-resident one.

- :class:`HostImages`: a ``DataLoader`` (0 or more worker processes) regenerates each view with its
  recipe, one image at a time (:class:`~kdcache.views.SeededViews`), hashes every view, and the
  batch is copied to the device. Any recipe, any dataset.
- :class:`DeviceImages`: the dataset's uint8 images live on the device
  (:class:`~kdcache.stream.device_views.DeviceViews`) and each batch's views are cut from them by
  batched tensor ops; the same bytes as the host path (the tests prove it per recipe), hashed only
  where the replay check looks. In-memory datasets of one image size and the geometric recipes.

``choose_images`` picks one for ``stream="auto" | "host" | "device"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdcache.augment import Recipe
from kdcache.data import SourceDataset
from kdcache.errors import ConfigError
from kdcache.stream.plan import EpochPlan
from kdcache.views import SeededViews

log = logging.getLogger(__name__)

StreamKind = Literal["auto", "host", "device"]
STREAM_KINDS: tuple[str, ...] = ("auto", "host", "device")
# "auto" keeps the resident data within this share of the device's memory (the rest is the
# student's); on the CPU within this share of the machine's.
RESIDENT_SHARE = 0.4


@dataclass(frozen=True)
class ImageBatch:
    """One batch of uint8 views, before any model's conversion."""

    views: Tensor  # uint8 [B, C, H, W] on the device
    labels: Tensor  # int64 [B] on the device
    view: Tensor  # int64 [B] on the host
    index: Tensor  # int64 [B] on the host
    input_hash: Tensor | None  # int64 [B] on the host: every row's (host path); None (device)
    partner_labels: Tensor | None = None  # mixed recipes: on the device
    lam: Tensor | None = None


class _BoundsSampler:
    """Batch sampler over ``bounds`` [steps + 1]: batch k is positions bounds[k]..bounds[k+1]-1."""

    def __init__(self, bounds: np.ndarray) -> None:
        self.bounds = bounds.tolist()

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in zip(self.bounds[:-1], self.bounds[1:], strict=True):
            yield list(range(start, stop))


class HostImages:
    """The host path: ``workers`` DataLoader processes (0: this one) make the views."""

    kind = "host"

    def __init__(
        self, train: SourceDataset, recipe: Recipe, cache_seed: int, *, workers: int,
        device: torch.device,
    ) -> None:  # fmt: skip
        self.train, self.recipe, self.cache_seed = train, recipe, cache_seed
        self.workers, self.device = workers, device

    def batches(self, plan: EpochPlan) -> Iterator[ImageBatch]:
        loader = DataLoader(
            SeededViews(self.train, self.recipe, self.cache_seed, plan.items),
            batch_sampler=_BoundsSampler(plan.bounds),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers > 0 else None,
        )
        for batch in loader:
            partner_labels = lam = None
            if "lam" in batch:  # a mixed recipe
                partner_labels = batch["partner_label"].to(self.device, non_blocking=True)
                lam = batch["lam"].to(self.device, non_blocking=True)
            yield ImageBatch(
                batch["image"].to(self.device, non_blocking=True),
                batch["label"].to(self.device, non_blocking=True),
                batch["view"],
                batch["index"],
                batch["input_hash"],
                partner_labels,
                lam,
            )


class DeviceImages:
    """The device-resident path: views cut from the dataset's images held on ``device``."""

    kind = "device"

    def __init__(
        self, train: SourceDataset, recipe: Recipe, cache_seed: int, *, device: torch.device
    ) -> None:
        from kdcache.stream.device_views import DeviceViews

        self.views = DeviceViews(train, recipe, cache_seed, device)
        self.device = device

    def batches(self, plan: EpochPlan) -> Iterator[ImageBatch]:
        # The epoch's rows and their geometry go to the device once; each batch is a slice.
        packed = self.views.pack(plan.items)  # [M, 1 + 2S]
        labels = self.views.labels_at(packed[:, 0])  # [M]
        items = torch.from_numpy(plan.items)
        for part in plan.batch_slices():
            yield ImageBatch(self.views.cut(packed[part]), labels[part], items[part, 0],
                             items[part, 1], None)  # fmt: skip


def device_memory(device: torch.device) -> int:
    """Bytes of memory the device has (the machine's for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def device_stream_refusal(
    train: SourceDataset, recipe: Recipe, device: torch.device, extra_bytes: int = 0
) -> str | None:
    """Why the device-resident stream cannot serve this data here (None: it can).

    ``extra_bytes``: what else the stream keeps resident (a cache's logits)."""
    from kdcache.stream.device_views import DeviceViews

    reason = DeviceViews.unsupported_reason(train, recipe)
    if reason is not None:
        return reason
    need = DeviceViews.nbytes(train, recipe) + extra_bytes
    have = device_memory(device)
    if need > RESIDENT_SHARE * have:
        return (
            f"the resident data needs {need / 2**30:.2f} GiB, over {RESIDENT_SHARE:.0%} of the "
            f"{device.type} memory ({have / 2**30:.1f} GiB)"
        )
    return None


def choose_images(
    kind: StreamKind, train: SourceDataset, recipe: Recipe, cache_seed: int, *, workers: int,
    device: torch.device, extra_bytes: int = 0,
) -> HostImages | DeviceImages:  # fmt: skip
    """The image source ``kind`` asks for; ``auto``: the device-resident one where it can serve
    the data and fits, else the host path.

    Raises:
        ConfigError: ``device`` asked for data the device-resident stream cannot serve.
    """
    if kind not in STREAM_KINDS:
        raise ConfigError(f"stream must be one of {', '.join(STREAM_KINDS)}, got {kind!r}")
    if kind == "host":
        return HostImages(train, recipe, cache_seed, workers=workers, device=device)
    refusal = device_stream_refusal(train, recipe, device, extra_bytes)
    if refusal is None:
        return DeviceImages(train, recipe, cache_seed, device=device)
    if kind == "device":
        raise ConfigError(
            f"the device-resident stream cannot serve {train.spec.name} with recipe "
            f"{recipe.name!r}: {refusal}. Use `stream` host (or auto, which falls back to it)"
        )
    log.info("stream: host path (%s)", refusal)
    return HostImages(train, recipe, cache_seed, workers=workers, device=device)
