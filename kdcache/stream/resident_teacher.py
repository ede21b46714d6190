"""A dense cache's teacher logits held on the device for the whole run: each chunk read once.

Where the streaming :class:`kdcache.training.teacher_stream.CachedTeacher` decodes each chunk once
per epoch in a thread and copies every batch's logits to the device, :class:`ResidentTeacher` reads
each (view, block) chunk of the allowed views once, keeps the logits on the device in the stored
dtype (float16 stays float16: half the memory) and gathers a batch's rows there. Its batches are
bit-identical to ``CachedTeacher``'s: float16 -> float32 is exact in numpy and in torch alike.

Dense caches only: a sparse (top-K) cache keeps the streaming ``CachedTeacher``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from kdcache.cache.reader import CacheReader
from kdcache.errors import CacheError, ConfigError
from kdcache.stream.plan import EpochPlan
from kdcache.stream.teacher_source import Origin

_ITEMSIZE = {"float16": 2, "float32": 4}


def _check_request(reader: CacheReader, allowed_views: np.ndarray, num_samples: int) -> None:
    identity = reader.identity
    if identity.storage.mode != "dense":
        raise CacheError(
            f"cache {reader.location} is sparse (top-K): its rows are not held on the device; "
            "the streaming teacher serves sparse caches"
        )
    stored = identity.augmentation.num_views
    if len(allowed_views) == 0 or allowed_views.min() < 0 or allowed_views.max() >= stored:
        raise ConfigError(
            f"allowed views must be a non-empty subset of the cache's views 0..{stored - 1}, "
            f"got {allowed_views.tolist()}"
        )
    if len(np.unique(allowed_views)) != len(allowed_views):
        raise ConfigError(f"allowed views repeat a view: {allowed_views.tolist()}")
    if not 0 < num_samples <= identity.dataset.num_samples:
        raise ConfigError(
            f"num_samples must be in [1, {identity.dataset.num_samples}] (the cache's samples), "
            f"got {num_samples}"
        )


class ResidentTeacher:
    """The logits ``[V', N, C]`` (stored dtype) of the allowed views on ``device``, and their input
    hashes ``[V', N]`` int64 on the host; ``batch(items)`` gathers a batch's rows.

    A :class:`~kdcache.stream.teacher_source.TeacherSource` (``origin`` ``"cache"``): its
    :meth:`feed` copies an epoch's row positions to the device once, and each batch is a gather.
    """

    origin: Origin = "cache"

    def __init__(
        self,
        reader: CacheReader,
        allowed_views: np.ndarray,
        num_samples: int,
        device: torch.device,
    ) -> None:
        views = np.asarray(allowed_views, dtype=np.int64).reshape(-1)
        _check_request(reader, views, num_samples)
        self.reader = reader
        self.allowed_views = views
        self.num_samples = int(num_samples)
        self.device = torch.device(device)
        storage = reader.identity.storage
        self.temperatures: tuple[float, ...] = storage.temperatures or (1.0,)
        self.chunk_rows: int | None = storage.chunk_rows
        self.versions: dict[str, str] = dict(reader.meta.versions)
        classes = reader.identity.dataset.num_classes
        dtype = torch.float16 if storage.dtype == "float16" else torch.float32
        #: (view, block) of every chunk read, in order: each once for the whole run.
        self.reads: list[tuple[int, int]] = []
        self._logits = torch.empty((len(views), num_samples, classes), dtype=dtype,
                                   device=self.device)  # fmt: skip
        self._hashes = np.empty((len(views), num_samples), np.int64)
        # Chunk by chunk into the device tensor: the host holds one chunk at a time, not V' x N.
        blocks = -(-num_samples // storage.chunk_rows)
        for position, view in enumerate(views.tolist()):
            for block in range(blocks):
                rows = reader.meta.block_rows(block)
                stop = min(rows.stop, num_samples)
                self.reads.append((view, block))
                logits = reader.read_dense(view, block)[: stop - rows.start]  # [R, C]
                self._logits[position, rows.start : stop] = torch.from_numpy(logits).to(self.device)
                hashes = reader.read_input_hashes(view, block)[: stop - rows.start]
                self._hashes[position, rows.start : stop] = hashes
        # view -> its position in allowed_views, -1 for a view not held.
        self._position = np.full(int(views.max()) + 1, -1, np.int64)
        self._position[views] = np.arange(len(views))
        # Flattened [V' * N] views of both, so a batch is one index_select and one take.
        self._flat_logits = self._logits.view(-1, classes)
        self._flat_hashes = self._hashes.reshape(-1)

    @staticmethod
    def nbytes(reader: CacheReader, allowed_views: np.ndarray, num_samples: int) -> int:
        """Bytes the logits would hold on the device (the host keeps the 8-byte hashes)."""
        storage = reader.identity.storage
        if storage.mode != "dense":
            raise CacheError(f"cache {reader.location} is sparse (top-K): not held on the device")
        views = len(np.asarray(allowed_views).reshape(-1))
        classes = reader.identity.dataset.num_classes
        return views * num_samples * classes * _ITEMSIZE[storage.dtype]

    @property
    def device_bytes(self) -> int:
        """Bytes held on the device now (what :meth:`nbytes` predicts)."""
        return self._logits.nbytes

    @property
    def stored_dtype(self) -> torch.dtype:
        """The dtype the logits are held in: the cache's own."""
        return self._logits.dtype

    def _rows(self, items: np.ndarray) -> np.ndarray:
        """int64 [B]: the rows of ``items`` in the flattened ``[V' * N]`` arrays, checked.

        Few and cheap numpy calls: this runs once per step, ahead of a GPU step of a few ms.
        """
        items = np.asarray(items)
        if items.ndim != 2 or items.shape[1] != 2 or items.dtype.kind not in "iu":
            raise ValueError(f"items must be integer (view, index) pairs [B, 2], got {items.shape}")
        if len(items) == 0:
            return np.zeros(0, np.int64)
        items = items.astype(np.int64, copy=False)  # uint64 would turn the arithmetic to float
        views, index = items[:, 0], items[:, 1]
        if index.min() < 0 or index.max() >= self.num_samples:
            raise ConfigError(f"items hold indices outside [0, {self.num_samples})")
        low, high = int(views.min()), int(views.max())
        positions = self._position[views] if low >= 0 and high < len(self._position) else None
        if positions is None or positions.min() < 0:
            held = np.isin(views, self.allowed_views)
            raise ConfigError(
                f"view {int(views[~held][0])} is not among the views held "
                f"({self.allowed_views.tolist()})"
            )
        return positions * self.num_samples + index

    def batch(self, items: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(float32 logits ``[B, C]`` on the device, int64 input hashes ``[B]`` on the host) of the
        (view, index) rows ``items`` [B, 2]: the values ``CachedTeacher.batches`` yields."""
        rows = self._rows(items)
        logits = self._flat_logits.index_select(0, torch.from_numpy(rows).to(self.device))
        return logits.float(), self._flat_hashes[rows]

    def batches(
        self, items: np.ndarray, bounds: np.ndarray
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """``batch`` of each ``items[bounds[k] : bounds[k + 1]]``, in order: the same interface as
        ``CachedTeacher.batches``, reading nothing."""
        edges = np.asarray(bounds).tolist()
        for start, stop in zip(edges[:-1], edges[1:], strict=True):
            yield self.batch(items[start:stop])

    def feed(self, plan: EpochPlan, device: torch.device) -> _ResidentFeed:
        """The rows of ``plan``'s batches, in order (``device`` is the one they are held on)."""
        return _ResidentFeed(self, plan)


class _ResidentFeed:
    def __init__(self, teacher: ResidentTeacher, plan: EpochPlan) -> None:
        rows = teacher._rows(plan.items)
        self.teacher = teacher
        self.rows = torch.from_numpy(rows).to(teacher.device)  # [M]: one copy for the epoch
        self.hashes = teacher._flat_hashes[rows]  # [M] on the host
        self.bounds = plan.bounds.tolist()
        self.k = 0

    def next(
        self, items: np.ndarray, views: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, np.ndarray]:
        start, stop = self.bounds[self.k], self.bounds[self.k + 1]
        self.k += 1
        logits = self.teacher._flat_logits.index_select(0, self.rows[start:stop])
        return logits.float(), self.hashes[start:stop]

    def close(self) -> None:
        pass
