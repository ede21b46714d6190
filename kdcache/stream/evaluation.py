"""The evaluation stream: every sample of a split once, in index order, no augmentation.

The one definition both the training loop's evaluation and :meth:`kdcache.Cache.eval_loader`
iterate. The views are the ``none`` recipe's (the identity for CIFAR-sized images), made by the
host path or, with ``resident=True`` where the data allows, cut from images held on the device
once for the whole run (so a run, or an array of students, decodes the test set once).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from kdcache.augment import create_recipe
from kdcache.data import SourceDataset
from kdcache.errors import ConfigError
from kdcache.models.preprocess import Preprocessing
from kdcache.stream.batch import Batch
from kdcache.stream.images import DeviceImages, HostImages, choose_images
from kdcache.stream.plan import EpochPlan


class EvaluationBatches:
    """``len()`` batches of at most ``batch_size``; iterate as often as you like."""

    def __init__(
        self, source: SourceDataset, *, batch_size: int, workers: int = 0,
        device: torch.device, channels_last: bool = False,
        student_input: Preprocessing | None = None, resident: bool = False,
    ) -> None:  # fmt: skip
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
        self.source = source
        self.batch_size = batch_size
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.convert = student_input or Preprocessing.from_dataset(source.spec)
        n = len(source)
        items = np.stack([np.zeros(n, np.int64), np.arange(n, dtype=np.int64)], axis=1)
        bounds = np.minimum(np.arange(-(-n // batch_size) + 1, dtype=np.int64) * batch_size, n)
        self.plan = EpochPlan(items=items, bounds=bounds, batch_size=batch_size)
        recipe = create_recipe("none", source.spec)
        self.images: HostImages | DeviceImages = choose_images(
            "auto" if resident else "host", source, recipe, 0, workers=workers, device=device
        )

    def __len__(self) -> int:
        return self.plan.steps

    def with_input(self, student_input: Preprocessing | None) -> EvaluationBatches:
        """The same batches (the same resident images) converted by another model's
        preprocessing: an array's students share one decode of the test set."""
        other = copy.copy(self)
        other.convert = student_input or Preprocessing.from_dataset(self.source.spec)
        return other

    def __iter__(self) -> Iterator[Batch]:
        for images in self.images.batches(self.plan):
            x = self.convert(images.views).contiguous(memory_format=self.memory_format)
            yield Batch(x, images.labels, None, images.view, images.index)
