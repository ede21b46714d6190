"""The distillation stream: one epoch of batches of (student images, labels, teacher logits).

This is the one stream both :meth:`kdcache.Cache.loader` and ``kdcache train`` iterate. Per epoch:

- :func:`~kdcache.stream.plan.plan_epoch` fixes each sample's view (a function of seed, epoch and
  sample), this rank's chunks and the chunk-aware order, and the batches;
- the image source (:mod:`kdcache.stream.images`: the host DataLoader, or the device-resident
  views) makes each batch's seeded uint8 views;
- the teacher source (:mod:`kdcache.stream.teacher_source`: the cache's rows, streamed or resident,
  or the live teacher) gives each batch's teacher input;
- the uint8 views are normalised on the device (4x fewer bytes to copy than float32) and compared
  with the cache's input hashes (the replay check, :mod:`kdcache.stream.replay`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from kdcache.augment import Recipe
from kdcache.data import SourceDataset
from kdcache.errors import ConfigError
from kdcache.models.preprocess import Preprocessing
from kdcache.stream.batch import Batch
from kdcache.stream.images import DeviceImages, HostImages
from kdcache.stream.plan import EpochPlan, plan_epoch
from kdcache.stream.replay import DeferredReplay, ReplayMode, check_replay
from kdcache.stream.teacher_source import TeacherSource


@dataclass(frozen=True)
class EpochSource:
    """What the stream draws from, fixed for a run: seeded views of a dataset, the image source
    that makes them, and the teacher source (None: no teacher, cross-entropy)."""

    train: SourceDataset
    recipe: Recipe
    cache_seed: int  # the views' seed: view v of sample i is drawn from (cache_seed, v, i)
    allowed_views: np.ndarray  # int64 [V']
    block_rows: int  # the cache's chunk rows: the unit of order and of reading
    num_samples: int
    images: HostImages | DeviceImages
    teacher: TeacherSource | None
    # How the student converts the uint8 views (None: the dataset's mean/std, no resize)
    student_input: Preprocessing | None = None


class EpochBatches:
    """One epoch of this rank's :class:`Batch` es; ``len()`` is the number of batches (steps).

    Iterating again replays the same epoch (same order, same views, same batches).
    """

    def __init__(
        self, source: EpochSource, plan: EpochPlan, *, verify_replay: ReplayMode,
        channels_last: bool,
    ) -> None:  # fmt: skip
        self.source = source
        self.plan = plan
        self.verify_replay = verify_replay
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def device(self) -> torch.device:
        return self.source.images.device

    @property
    def block_rows(self) -> int:
        """Rows per cache chunk (the unit of order and of reading)."""
        return self.source.block_rows

    @property
    def items(self) -> np.ndarray:
        """int64 [M, 2]: this rank's (view, index) pairs in the order the batches serve them."""
        return self.plan.items

    def skip(self, served: int) -> EpochBatches:
        """The epoch's batches after its first ``served`` ones (nothing of those is read)."""
        if served == 0:
            return self
        plan = self.plan
        start = int(plan.bounds[served])
        rest = replace(plan, items=plan.items[start:], bounds=plan.bounds[served:] - start)
        return EpochBatches(self.source, rest, verify_replay=self.verify_replay,
                            channels_last=self.channels_last)  # fmt: skip

    def __iter__(self) -> Iterator[Batch]:
        source = self.source
        teacher = source.teacher
        feed = teacher.feed(self.plan, self.device) if teacher is not None else None
        convert = source.student_input or Preprocessing.from_dataset(source.train.spec)
        deferred = DeferredReplay(self.verify_replay, teacher.versions if teacher else {})
        bounds = self.plan.bounds.tolist()
        try:
            for k, images in enumerate(source.images.batches(self.plan)):
                x = convert(images.views).contiguous(memory_format=self.memory_format)
                teacher_input = None
                if feed is not None:
                    rows = self.plan.items[bounds[k] : bounds[k + 1]]
                    teacher_input, hashes = feed.next(rows, images.views, images.labels)
                    if hashes is not None and self.verify_replay != "off":
                        if images.input_hash is not None:
                            check_replay(images.view, images.index, images.input_hash, hashes,
                                         self.verify_replay, deferred.versions)  # fmt: skip
                        else:
                            deferred.submit(images.views, images.view, images.index, hashes)
                yield Batch(x, images.labels, teacher_input, images.view, images.index,
                            images.views, images.partner_labels, images.lam)  # fmt: skip
            deferred.finish()
        finally:
            if feed is not None:
                feed.close()


def epoch_batches(
    source: EpochSource,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    window_blocks: int = 4,
    drop_last: bool = False,
    verify_replay: ReplayMode = "sample",
    channels_last: bool = False,
) -> EpochBatches:
    """This rank's batches of ``epoch`` (``batch_size`` per rank; see :mod:`.plan` for the rule)."""
    checks = (("seed", seed, 0), ("epoch", epoch, 0), ("batch_size", batch_size, 1),
              ("window_blocks", window_blocks, 1))  # fmt: skip
    for name, value, low in checks:
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if verify_replay not in ("all", "sample", "off"):
        raise ConfigError(f"verify_replay must be 'all', 'sample' or 'off', got {verify_replay!r}")
    plan = plan_epoch(
        seed=seed,
        epoch=epoch,
        num_samples=source.num_samples,
        block_rows=source.block_rows,
        window_blocks=window_blocks,
        allowed_views=source.allowed_views,
        batch_size=batch_size,
        rank=rank,
        world=world,
        drop_last=drop_last,
    )
    return EpochBatches(source, plan, verify_replay=verify_replay, channels_last=channels_last)


def chunk_capacity(window_blocks: int, views: Sequence[int] | np.ndarray) -> int:
    """Decoded chunks the logit reader keeps: two windows of blocks of every allowed view."""
    return 2 * window_blocks * len(views)
