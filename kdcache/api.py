"""The public Python API: open a cache, read what it is, stream distillation batches from it.

::

    import kdcache

    cache = kdcache.open_cache("s3://team/caches/r56-c100")   # or a directory, .zip, http(s)://
    print(cache.teacher, cache.teacher_top1, cache.fingerprint)
    for epoch in range(epochs):
        for batch in cache.loader(data_dir, batch_size=64, seed=0, epoch=epoch):
            # batch.images [B, C, H, W] float32, batch.labels [B], batch.teacher_logits [B, K]
            ...

The loader is the stream ``kdcache train`` itself runs on (:mod:`kdcache.stream`): the same
views, order, batches, prefetch and replay checks. Details and a full loop: ``docs/api.md``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from kdcache.cache.location import CacheLocation
from kdcache.cache.reader import CacheReader
from kdcache.cache.reader import open_cache as open_reader
from kdcache.cache.schema import LogitDtype, StorageMode
from kdcache.data import DatasetSpec, SourceDataset
from kdcache.errors import ConfigError
from kdcache.models.preprocess import Preprocessing
from kdcache.runtime import resolve_device
from kdcache.stream.cached_teacher import CachedTeacher
from kdcache.stream.epoch import EpochBatches, EpochSource, chunk_capacity, epoch_batches
from kdcache.stream.evaluation import EvaluationBatches
from kdcache.stream.images import DeviceImages, StreamKind, choose_images
from kdcache.stream.replay import ReplayMode
from kdcache.stream.teacher_source import TeacherSource
from kdcache.training.run_data import (
    cache_recipe,
    check_views,
    load_cache_data,
    require_blocks,
    require_exact_sparse,
)
from kdcache.verify import VerifyReport, verify_cache


class Cache:
    """A teacher-logit cache opened read-only (nothing here ever writes to it).

    Attributes:
        location: where it was opened from.
        fingerprint: sha256 hex of the identity fields: names the cache.
        format_version: the cache format, e.g. ``"1.1"``.
        teacher: the teacher's architecture name.
        teacher_weights_sha256: sha256 of the teacher's weights file (None: random init).
        dataset: the dataset's name (``cifar100``, ``imagefolder``, ``digits`` ...).
        split: the split the views are of (``train``).
        num_samples: N, samples per view.
        classes: K, logits per sample.
        in_chans, image_size: the images' channels and side (None if the cache does not say).
        spec: the dataset's :class:`~kdcache.data.DatasetSpec` (classes, channels, mean/std,
            image size), for ``resolve_preprocessing(model, cache.spec, "auto")``.
        recipe: the augmentation recipe's name; ``recipe_params`` its parameters.
        augmentation_seed: the cache's augmentation seed, chosen at extraction (``extract
            --seed``): view v of sample i is a function of (augmentation_seed, v, i). Not the
            run's seed, which ``loader(seed=...)`` takes and which picks a view per epoch.
        seed: the same as ``augmentation_seed`` (its first name, kept for existing code).
        views: V, views per sample.
        storage: ``"dense"`` (every logit) or ``"sparse"`` (top-``topk`` + log-sum-exp).
        dtype: ``"float16"`` or ``"float32"``.
        chunk_rows: samples per chunk (the unit of reading and of the epoch order).
        complete: every (view, chunk) block is written.
        teacher_top1: the teacher's top-1 accuracy (%) on each view, ``[V]`` (None: incomplete).
        versions: library versions that wrote it (torch, torchvision, Pillow, kdcache).
        reader: the low-level :class:`~kdcache.cache.reader.CacheReader`.

    The attributes use short names where the cache's metadata nests them; the table in
    docs/api.md (Cache attributes) maps each one to its field (``classes`` is
    ``dataset.num_classes``, ``views`` is ``augmentation.num_views``).
    """

    def __init__(self, reader: CacheReader) -> None:
        meta, ident = reader.meta, reader.identity
        self.reader = reader
        self.location: str = reader.location
        self.fingerprint: str = meta.fingerprint
        self.format_version: str = meta.format_version
        self.teacher: str = ident.teacher.name
        self.teacher_weights_sha256: str | None = ident.teacher.weights_sha256
        self.dataset: str = ident.dataset.name
        self.split: str = ident.dataset.split
        self.num_samples: int = ident.dataset.num_samples
        self.classes: int = ident.dataset.num_classes
        self.recipe: str = ident.augmentation.recipe
        self.recipe_params: dict[str, Any] = dict(ident.augmentation.params)
        self.augmentation_seed: int = ident.augmentation.seed
        self.views: int = ident.augmentation.num_views
        self.storage: StorageMode = ident.storage.mode
        self.dtype: LogitDtype = ident.storage.dtype
        self.topk: int | None = ident.storage.topk
        self.chunk_rows: int = ident.storage.chunk_rows
        spec = ident.dataset.spec
        self.in_chans: int | None = int(spec["in_chans"]) if "in_chans" in spec else None
        self.image_size: int | None = int(spec["image_size"]) if "image_size" in spec else None
        self.complete: bool = meta.complete
        self.teacher_top1: list[float] | None = (
            list(meta.teacher_top1) if meta.teacher_top1 is not None else None
        )
        self.versions: dict[str, str] = dict(meta.versions)
        self._sources: dict[str | None, SourceDataset] = {}
        self._streams: dict[tuple[Any, ...], tuple[Any, TeacherSource]] = {}

    def __repr__(self) -> str:
        mode = self.storage if self.storage == "dense" else f"sparse top-{self.topk}"
        return (
            f"Cache({self.location!r}: {self.teacher} on {self.dataset}/{self.split} "
            f"N={self.num_samples} K={self.classes}, {self.views} view(s) of {self.recipe!r} "
            f"augmentation seed {self.augmentation_seed}, {mode} {self.dtype}, "
            f"fingerprint {self.fingerprint[:16]})"
        )

    @property
    def seed(self) -> int:
        """The cache's augmentation seed: :attr:`augmentation_seed` under its first name."""
        return self.augmentation_seed

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's description as the cache records it (what a student's preprocessing is
        resolved against: ``kdcache.resolve_preprocessing(model, cache.spec, "auto")``)."""
        return DatasetSpec.from_dict(self.reader.identity.dataset.spec)

    def verify(
        self, data_dir: str | None = None, *, replay: int = 64, teacher_weights: str | None = None
    ) -> VerifyReport:
        """What ``kdcache verify`` checks (completeness, checksums, data fingerprint, replay of
        ``replay`` sampled views, the teacher's logits if ``teacher_weights``); ``.ok`` and
        ``.checks`` say how it went. Never raises for a failed check."""
        return verify_cache(
            self.location, data_dir=data_dir, replay=replay, teacher_weights=teacher_weights
        )

    def _source(self, data_dir: str | None) -> SourceDataset:
        # The dataset's fingerprint hashes every image once; later epochs reuse the checked copy.
        if data_dir not in self._sources:
            self._sources[data_dir] = load_cache_data(self.reader, data_dir)
        return self._sources[data_dir]

    def loader(
        self,
        data_dir: str | os.PathLike[str] | None,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        views: tuple[int, ...] | list[int] | None = None,
        workers: int = 0,
        device: str | torch.device = "cpu",
        verify_replay: ReplayMode = "sample",
        drop_last: bool = False,
        channels_last: bool = False,
        preprocessing: Preprocessing | None = None,
        window_blocks: int = 4,
        rank: int | None = None,
        world_size: int | None = None,
        stream: StreamKind = "host",
    ) -> EpochBatches:
        """One epoch of distillation batches, this process's share; ``len()`` = batches.

        Each item is a :class:`~kdcache.stream.batch.Batch`: ``images`` float32 ``[B, C, H, W]``
        (normalised with the dataset's mean and std, on ``device``), ``labels`` int64 ``[B]``,
        ``teacher_logits`` float32 ``[B, K]`` (on ``device``) from a dense cache, or a
        :class:`~kdcache.losses.sparse.SparseTeacher` of the kept top-K rows from a sparse one
        (what ``create_loss("kd")`` and ``build_objective`` take), ``view`` and ``index`` int64
        ``[B]``.

        Args:
            data_dir: where the cache's dataset is (None: its default place; digits is bundled).
                Refused unless its fingerprint is the cache's.
            batch_size: samples per batch in this process (under DDP: per rank).
            seed: your run's seed; with ``epoch`` it fixes each sample's view and the order.
            epoch: 0-based epoch number.
            views: train on a subset of the cache's views (default: all).
            workers: DataLoader worker processes regenerating the views (0: in this process).
            device: where the tensors go (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``).
            verify_replay: compare regenerated images with the cache's input hashes, on
                ``"all"`` rows, a ``"sample"`` (1 in 16 + each batch's first) or ``"off"``.
            drop_last: only full batches (under DDP: as many as the smallest rank share allows).
            channels_last: images in channels-last memory format.
            preprocessing: how your student converts the uint8 views (mean/std, input size,
                interpolation; e.g. ``resolve_preprocessing(model, cache.spec, "auto")`` for a
                timm model's ``pretrained_cfg``); default: the dataset's mean and std.
            window_blocks: chunks whose samples are shuffled together (memory: two windows).
            rank, world_size: this process's shard; default from an initialised
                ``torch.distributed`` (else 0 and 1). Each rank reads only its own chunks and the
                union over ranks is the whole epoch, each sample once; ranks run equally many
                batches (see ``docs/api.md``).
            stream: where the views are made: ``"host"`` (``workers`` DataLoader processes, any
                recipe), ``"device"`` (the dataset's images and the cache's logits held on
                ``device`` for every epoch you ask of this cache, the views cut there by batched
                tensor ops: in-memory datasets and the geometric recipes), ``"auto"`` (device
                where it can). The batches are the same bits either way.

        Raises:
            CacheError: a format 1.0/1.1 sparse cache, or a block the epoch needs is missing.
            CacheMismatchError: ``data_dir`` holds other data than the cache was made from.
            ConfigError: an invalid argument.
            ReplayMismatchError: (while iterating) a regenerated image differs from the teacher's.
        """
        require_exact_sparse(self.reader)
        rank, world_size = _shard(rank, world_size)
        allowed = check_views(tuple(views) if views is not None else None, self.views)
        require_blocks(self.reader, allowed, self.num_samples)
        train = self._source(os.fspath(data_dir) if data_dir is not None else None)
        if not isinstance(window_blocks, int) or window_blocks < 1:
            raise ConfigError(f"window_blocks must be an integer >= 1, got {window_blocks!r}")
        _check_batching(batch_size, workers)
        target = device if isinstance(device, torch.device) else resolve_device(device)
        source = EpochSource(train, cache_recipe(self.reader, train), self.seed, allowed,
                             self.chunk_rows, self.num_samples,
                             *self._stream(stream, train, allowed, workers, target, window_blocks),
                             preprocessing)  # fmt: skip
        return epoch_batches(
            source,
            seed=seed,
            epoch=epoch,
            batch_size=batch_size,
            rank=rank,
            world=world_size,
            window_blocks=window_blocks,
            drop_last=drop_last,
            verify_replay=verify_replay,
            channels_last=channels_last,
        )

    def _stream(
        self, kind: StreamKind, train: SourceDataset, allowed: np.ndarray, workers: int,
        device: torch.device, window_blocks: int,
    ) -> tuple[Any, TeacherSource]:  # fmt: skip
        """The image and teacher sources of ``kind``; the device-resident ones are built once per
        (views, device) and kept for the next epochs' loaders."""
        from kdcache.stream.resident_teacher import ResidentTeacher

        key = (kind, tuple(allowed.tolist()), str(device), workers, window_blocks)
        if key not in self._streams:
            dense = self.storage == "dense"
            extra = ResidentTeacher.nbytes(self.reader, allowed, self.num_samples) if dense else 0
            images = choose_images(kind, train, cache_recipe(self.reader, train), self.seed,
                                   workers=workers, device=device, extra_bytes=extra)  # fmt: skip
            teacher: TeacherSource
            if isinstance(images, DeviceImages) and dense:
                teacher = ResidentTeacher(self.reader, allowed, self.num_samples, device)
            else:
                teacher = CachedTeacher(self.reader,
                                        chunk_capacity=chunk_capacity(window_blocks, allowed))
            self._streams = {key: (images, teacher)}  # one resident copy at a time
        return self._streams[key]

    def eval_loader(
        self,
        data_dir: str | os.PathLike[str] | None,
        *,
        batch_size: int = 256,
        split: str | None = None,
        workers: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        preprocessing: Preprocessing | None = None,
    ) -> EvaluationBatches:
        """The dataset's evaluation split (default: its test / val split), no augmentation:
        :class:`~kdcache.stream.batch.Batch` es of ``images`` float32 ``[B, C, H, W]``
        converted by ``preprocessing`` as in :meth:`loader`, ``labels`` ``[B]``,
        ``teacher_logits`` None. ``len()`` is the number of batches, as for :meth:`loader`.

        Raises:
            ConfigError: ``batch_size`` < 1 or ``workers`` < 0.
        """
        from kdcache.data import load_dataset

        _check_batching(batch_size, workers)
        path = os.fspath(data_dir) if data_dir is not None else None
        source = load_dataset(self.dataset, path, split or self.spec.eval_split)
        return EvaluationBatches(
            source,
            batch_size=batch_size,
            workers=workers,
            device=device if isinstance(device, torch.device) else resolve_device(device),
            channels_last=channels_last,
            student_input=preprocessing,
        )


def _check_batching(batch_size: int, workers: int) -> None:
    """The loaders' shared argument checks: a clear ConfigError, not torch's ValueError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")


def _shard(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else from an initialised torch.distributed, else (0, 1)."""
    if rank is None and world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ConfigError("pass both rank and world_size, or neither (torch.distributed decides)")
    return rank, world_size


def open_cache(
    location: str | os.PathLike[str] | CacheLocation,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Cache:
    """Open the cache at ``location`` read-only: a directory, a ``.zip``, an ``http(s)://`` URL or
    an object-store URL such as ``s3://bucket/prefix`` (fsspec).

    ``cache_dir``: where local copies of a remote cache's chunks are kept. Precedence: this
    argument, else ``$KDCACHE_REMOTE_CACHE_DIR``, else ``~/.cache/kdcache/remote``; ``"off"``
    (either way): none.

    Raises:
        DataNotFoundError / CacheError: nothing there, not a cache, malformed metadata.
        FormatVersionError: a cache of a newer major format version.
    """
    return Cache(open_reader(location, cache_dir=cache_dir))
