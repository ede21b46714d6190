"""The distillation stream: one epoch of batches of (student images, labels, teacher logits).

This is the one stream both :meth:`kdcache.Cache.loader` and ``kdcache train`` iterate. Per epoch:

- :func:`~kdcache.training.plan.plan_epoch` fixes each sample's view (a function of seed, epoch and
  sample), this rank's chunks and the chunk-aware order, and the batches;
- a ``DataLoader`` (0 or more workers) regenerates the seeded uint8 views and their input hashes;
- :class:`~kdcache.training.teacher_stream.CachedTeacher` decodes each chunk once, in a background
  thread, and queues each batch's logits ahead of the step (bounded memory);
- the step's process moves the uint8 images to the device, normalises them there (4x fewer bytes to
  copy) and compares the regenerated hashes with the cache's (``verify_replay``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdcache.augment import Recipe, create_recipe
from kdcache.data import SourceDataset
from kdcache.errors import ConfigError, ReplayMismatchError
from kdcache.losses.mixed import MixedTarget, soft_targets
from kdcache.losses.sparse import SparseTeacher
from kdcache.models.preprocess import Preprocessing
from kdcache.training.plan import EpochPlan, plan_epoch
from kdcache.training.teacher_stream import CachedTeacher
from kdcache.views import SeededViews

ReplayMode = Literal["all", "sample", "off"]
SAMPLE_REPLAY_EVERY = 16  # "sample" checks rows with index % 16 == 0, and each batch's first


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch of distillation inputs (B rows; B <= the batch size)."""

    images: Tensor  # float32 [B, C, H, W] on the device: the student's normalised inputs
    labels: Tensor  # int64 [B] on the device
    # float32 [B, K] on the device (sparse rows from a sparse cache); None without a cache
    teacher_logits: Tensor | SparseTeacher | None
    view: Tensor  # int64 [B] (CPU): the cached view each row is
    index: Tensor  # int64 [B] (CPU): the sample index of each row
    # uint8 [B, C, H, W] on the device: the augmented view itself, before any model's conversion
    # (what a live teacher converts its own way; the input hash covers these bytes)
    views_uint8: Tensor | None = None
    # Mixed views only (None otherwise), on the device: int64 [B] the partners' labels y', float32
    # [B] lambda, the weight of ``labels`` in the target lam * onehot(y) + (1 - lam) * onehot(y')
    partner_labels: Tensor | None = None
    lam: Tensor | None = None

    @property
    def mix(self) -> MixedTarget | None:
        """The mixed target's second half for the objective; None when the views are not mixed."""
        if self.partner_labels is None or self.lam is None:
            return None
        return MixedTarget(self.partner_labels, self.lam)

    def soft_targets(self, num_classes: int) -> Tensor:
        """float32 [B, C] label targets (one-hot, or mixed by lambda), for your own loss."""
        return soft_targets(self.labels, self.mix, num_classes)


@dataclass(frozen=True)
class EpochSource:
    """What the stream draws from: seeded views of a dataset and, optionally, a cache's logits."""

    train: SourceDataset
    recipe: Recipe
    cache_seed: int  # the views' seed: view v of sample i is drawn from (cache_seed, v, i)
    allowed_views: np.ndarray  # int64 [V']
    block_rows: int  # the cache's chunk rows: the unit of order and of reading
    num_samples: int
    teacher: CachedTeacher | None  # None: no cached logits (online KD, cross-entropy)
    # How the student converts the uint8 views (None: the dataset's mean/std, no resize)
    student_input: Preprocessing | None = None


class _BoundsSampler:
    """Batch sampler over ``bounds`` [steps + 1]: batch k is positions bounds[k]..bounds[k+1]-1."""

    def __init__(self, bounds: np.ndarray) -> None:
        self.bounds = bounds.tolist()

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in zip(self.bounds[:-1], self.bounds[1:], strict=True):
            yield list(range(start, stop))


def check_replay(
    views: Tensor, indices: Tensor, got: Tensor, cached: np.ndarray, mode: ReplayMode,
    versions: dict[str, str],
) -> None:  # fmt: skip
    """Raise :class:`ReplayMismatchError` if a regenerated image's hash differs from the cache's.

    ``views``, ``indices``, ``got`` (the regenerated input hashes) are int64 [B]; ``cached`` [B].
    """
    got_np = got.numpy()
    rows = np.arange(len(got_np))
    if mode == "sample":
        rows = rows[(indices.numpy() % SAMPLE_REPLAY_EVERY == 0) | (rows == 0)]
    bad = rows[got_np[rows] != cached[rows]]
    if len(bad):
        r = int(bad[0])
        raise ReplayMismatchError(
            f"the regenerated image of (view {int(views[r])}, sample {int(indices[r])}) differs "
            f"from the one the teacher saw ({len(bad)} of {len(rows)} checked rows in this "
            "batch): the augmentation does not replay on this machine. The cache was written "
            f"with {versions}; install those versions, or re-extract the cache here. "
            "(--verify-replay off / verify_replay='off' skips this check at your own risk.)"
        )


class EpochBatches:
    """One epoch of this rank's :class:`Batch` es; ``len()`` is the number of batches (steps).

    Iterating again replays the same epoch (same order, same views, same batches).
    """

    def __init__(
        self,
        source: EpochSource,
        plan: EpochPlan,
        *,
        workers: int,
        device: torch.device,
        verify_replay: ReplayMode,
        channels_last: bool,
    ) -> None:
        self.source = source
        self.plan = plan
        self.workers = workers
        self.device = device
        self.verify_replay = verify_replay
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def block_rows(self) -> int:
        """Rows per cache chunk (the unit of order and of reading)."""
        return self.source.block_rows

    @property
    def items(self) -> np.ndarray:
        """int64 [M, 2]: this rank's (view, index) pairs in the order the batches serve them."""
        return self.plan.items

    def _loader(self) -> DataLoader:
        src = self.source
        return DataLoader(
            SeededViews(src.train, src.recipe, src.cache_seed, self.plan.items),
            batch_sampler=_BoundsSampler(self.plan.bounds),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers > 0 else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        teacher = self.source.teacher
        logits = teacher.batches(self.plan.items, self.plan.bounds) if teacher else None
        versions = teacher.reader.meta.versions if teacher else {}
        convert = self.source.student_input or Preprocessing.from_dataset(self.source.train.spec)
        try:
            for batch in self._loader():
                images = batch["image"].to(self.device, non_blocking=True)  # uint8 [B, C, H, W]
                x = convert(images).contiguous(memory_format=self.memory_format)
                labels = batch["label"].to(self.device, non_blocking=True)
                teacher_logits = None
                if logits is not None:
                    cached, hashes = next(logits)  # [B, K] float32 or sparse rows, [B] int64
                    if self.verify_replay != "off":
                        check_replay(batch["view"], batch["index"], batch["input_hash"], hashes,
                                     self.verify_replay, versions)  # fmt: skip
                    teacher_logits = cached.to(self.device, non_blocking=True)
                partner_labels = lam = None
                if "lam" in batch:  # a mixed recipe
                    partner_labels = batch["partner_label"].to(self.device, non_blocking=True)
                    lam = batch["lam"].to(self.device, non_blocking=True)
                yield Batch(x, labels, teacher_logits, batch["view"], batch["index"], images,
                            partner_labels, lam)  # fmt: skip
        finally:
            if logits is not None:
                logits.close()  # type: ignore[attr-defined]  # stops the prefetch thread


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
    workers: int = 0,
    device: torch.device,
    verify_replay: ReplayMode = "sample",
    channels_last: bool = False,
) -> EpochBatches:
    """This rank's batches of ``epoch`` (``batch_size`` per rank; see :mod:`.plan` for the rule)."""
    checks = (("seed", seed, 0), ("epoch", epoch, 0), ("batch_size", batch_size, 1),
              ("workers", workers, 0), ("window_blocks", window_blocks, 1))  # fmt: skip
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
    return EpochBatches(source, plan, workers=workers, device=device,
                        verify_replay=verify_replay, channels_last=channels_last)  # fmt: skip


def evaluation_batches(
    source: SourceDataset,
    *,
    batch_size: int,
    workers: int = 0,
    device: torch.device,
    channels_last: bool = False,
    student_input: Preprocessing | None = None,
) -> Iterator[Batch]:
    """Every sample of ``source`` once, in index order, with the evaluation transform (recipe
    ``none``), converted like the training batches; ``teacher_logits`` is None."""
    items = np.stack([np.zeros(len(source), np.int64), np.arange(len(source))], axis=1)
    loader = DataLoader(
        SeededViews(source, create_recipe("none", source.spec), 0, items),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    convert = student_input or Preprocessing.from_dataset(source.spec)
    for batch in loader:
        images = convert(batch["image"].to(device, non_blocking=True))
        labels = batch["label"].to(device, non_blocking=True)
        yield Batch(images.contiguous(memory_format=memory_format), labels, None, batch["view"],
                    batch["index"])  # fmt: skip


def chunk_capacity(window_blocks: int, views: Sequence[int] | np.ndarray) -> int:
    """Decoded chunks the logit reader keeps: two windows of blocks of every allowed view."""
    return 2 * window_blocks * len(views)
