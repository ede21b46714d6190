"""``kdcache extract``: run the teacher once and write its logits into a cache.

Work is split into blocks (one chunk of rows of one view, ``docs/cache-format.md``). Pending
blocks are dealt round-robin to ranks; each rank streams its blocks' seeded views through the
teacher and writes each block as soon as it is full (in a background thread that overlaps the next
forward, :mod:`kdcache.extract_writer`), so memory holds one block, a few batches waiting for the
writer and the loader's prefetch, whatever the dataset size. A block's bytes depend only on (seed,
view, rows), never on the batch size, worker count or rank count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.augment import Recipe, create_recipe, views_to_store
from kdcache.cache import bounds, schema
from kdcache.cache.location import parse_location
from kdcache.cache.writer import CacheWriter, open_for_writing
from kdcache.cache.zarr_stores import check_writable
from kdcache.data import SourceDataset, load_dataset
from kdcache.errors import ConfigError
from kdcache.extract_writer import BackgroundBlockWriter, BlockAssembler
from kdcache.models import build_model, count_parameters, resolve_model_name, weights_sha256
from kdcache.models.inference import (
    forward_description,
    padded_batch_note,
    prepare_teacher,
    teacher_forward,
    teacher_inference,
)
from kdcache.models.preprocess import Preprocessing, check_preprocessing_text, resolve_preprocessing
from kdcache.models.probe import check_teacher_io
from kdcache.runtime import init_distributed, library_versions, rank_device, resolve_device
from kdcache.views import SeededViews

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``kdcache extract`` needs. Only the identity fields change the cache's bytes."""

    teacher: str
    out: str
    dataset: str
    weights: str | None = None  # required; Optional only so the error message can explain
    ema: bool = False  # load the checkpoint's EMA weights (state_dict_ema / model_ema)
    # auto | dataset [,key=value...]: kdcache.models.preprocess; recorded in the cache
    teacher_preprocessing: str = "auto"
    data_dir: str | None = None
    split: str = "train"
    recipe: str = "cifar"
    recipe_params: dict[str, Any] = field(default_factory=dict)
    views: int | None = None  # None: all distinct views of an exhaustive recipe, else 1
    seed: int = 0
    # None: float16 for dense logits, float32 for sparse rows (the only precision they take)
    dtype: Literal["float16", "float32"] | None = None
    topk: int | None = None  # None: dense logits; K: sparse top-K + exact normalisers
    # Sparse mode: temperatures whose log-sum-exp each row stores, beside T = 1 and every
    # registered loss's default temperature (see :func:`sparse_temperatures`).
    extra_temperatures: tuple[float, ...] = ()
    chunk_rows: int = 1024
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    download: bool = False

    def __post_init__(self) -> None:
        if self.views is not None and not 1 <= self.views <= bounds.MAX_VIEWS:
            raise ConfigError(f"--views must be in 1..{bounds.MAX_VIEWS}, got {self.views}")
        if not 0 <= self.seed <= bounds.MAX_SEED:
            raise ConfigError(f"--seed must be in 0..2**63-1, got {self.seed}")
        if not 1 <= self.chunk_rows <= bounds.MAX_CHUNK_ROWS:
            raise ConfigError(
                f"--chunk-rows must be in 1..{bounds.MAX_CHUNK_ROWS}, got {self.chunk_rows}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if not self.weights:
            raise ConfigError(
                "--weights is required: a teacher without weights would be randomly initialised "
                "(kdcache never downloads weights). Pass the teacher's checkpoint file."
            )
        if self.topk is not None and self.topk < 1:
            raise ConfigError(f"--topk must be >= 1, got {self.topk}")
        if self.topk is not None and self.dtype == "float16":
            raise ConfigError(
                "sparse caches store float32 top-K values (float16 values would make the kept "
                "probabilities sum to more than 1 in ~28% of rows): omit --dtype with --topk"
            )
        if self.topk is None and self.extra_temperatures:
            raise ConfigError("--sparse-temperature is only meaningful with --topk")
        bad = [t for t in self.extra_temperatures if not (0 < t < float("inf"))]
        if bad:
            raise ConfigError(f"--sparse-temperature must be a finite number > 0, got {bad[0]}")
        check_preprocessing_text(self.teacher_preprocessing)

    @property
    def storage_dtype(self) -> Literal["float16", "float32"]:
        if self.dtype is not None:
            return self.dtype
        return "float16" if self.topk is None else "float32"


@dataclass(frozen=True)
class ExtractResult:
    location: str
    fingerprint: str
    blocks_written: int
    images: int
    seconds: float
    complete: bool
    teacher_top1: list[float] | None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _pending_items(meta: schema.CacheMeta, blocks: list[tuple[int, int]]) -> np.ndarray:
    """(view, index) pairs of the given blocks, block after block: int64 [M, 2]."""
    parts = []
    for view, block in blocks:
        rows = meta.block_rows(block)
        idx = np.arange(rows.start, rows.stop, dtype=np.int64)
        parts.append(np.stack([np.full_like(idx, view), idx], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def sparse_temperatures(extra: tuple[float, ...] = ()) -> tuple[float, ...]:
    """Temperatures a sparse cache records: T = 1, each registered loss's default T, ``extra``."""
    from kdcache.losses.registry import default_temperatures

    return tuple(sorted({1.0, *default_temperatures(), *(float(t) for t in extra)}))


def run_extract(config: ExtractConfig, progress: ProgressFn | None = None) -> ExtractResult:
    """Create or resume the cache ``config.out``; returns what was done."""
    out = parse_location(config.out)
    check_writable(out)  # before the data and the teacher are loaded
    device = resolve_device(config.device)
    ctx = init_distributed(device)
    device = rank_device(device, ctx)
    padding = padded_batch_note(config.batch_size, device)
    if padding is not None:  # the bytes do not depend on it, the speed does
        log.warning(padding)

    source = load_dataset(config.dataset, config.data_dir, config.split, download=config.download)
    spec = source.spec
    if config.topk is not None and config.topk > spec.num_classes:  # before the teacher loads
        raise ConfigError(
            f"--topk {config.topk} exceeds the {spec.num_classes} classes of {spec.name}: "
            f"give K <= {spec.num_classes}"
        )
    recipe = create_recipe(config.recipe, spec, **config.recipe_params)
    num_views = views_to_store(recipe, config.views)
    teacher_ref = resolve_model_name(config.teacher)
    teacher = build_model(
        config.teacher,
        spec.num_classes,
        in_chans=spec.in_chans,
        weights=config.weights,
        ema=config.ema,
    )
    preprocessing = resolve_preprocessing(teacher, spec, config.teacher_preprocessing)
    check_teacher_io(teacher, spec.in_chans, preprocessing.input_size, spec.num_classes,
                     "--teacher-preprocessing")  # fmt: skip  # before the cache is created
    identity = schema.CacheIdentity(
        teacher=schema.TeacherInfo(
            name=teacher_ref.spec,  # canonical: "RESNET56" and "resnet56" make the same cache
            weights_sha256=weights_sha256(config.weights) if config.weights else None,
            num_params=count_parameters(teacher),
            preprocessing=preprocessing.to_dict(),
            weights_ema=config.ema,
        ),
        dataset=schema.DatasetInfo(
            name=spec.name,
            split=source.split,
            num_samples=len(source),
            num_classes=spec.num_classes,
            fingerprint=source.fingerprint(),
            spec=spec.to_dict(),
        ),
        augmentation=schema.AugmentationInfo(
            recipe=recipe.name, params=recipe.params(), seed=config.seed, num_views=num_views
        ),
        storage=schema.StorageInfo(
            mode="sparse" if config.topk else "dense",
            dtype=config.storage_dtype,
            chunk_rows=config.chunk_rows,
            topk=config.topk,
            temperatures=sparse_temperatures(config.extra_temperatures) if config.topk else None,
        ),
    )
    # Before the cache is created: a layout this machine cannot hold is refused, not attempted.
    bounds.check_layout(
        num_views=num_views,
        num_samples=len(source),
        num_classes=spec.num_classes,
        chunk_rows=config.chunk_rows,
    )
    meta = schema.CacheMeta(
        identity=identity,
        versions=library_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        producers=(forward_description(device),),
        teacher_model=teacher_ref.to_dict(),
    )

    # Rank 0 creates (or validates) the cache before the others join it.
    writer = None
    if ctx.is_main:
        writer = open_for_writing(out, meta, source.labels, create=True)
    ctx.barrier()
    if writer is None:
        writer = open_for_writing(out, meta, source.labels, create=False)

    done = writer.done_mask()
    # Every rank must read the record before any rank writes, or their pending lists differ.
    ctx.barrier()
    pending = [
        (v, b) for v in range(num_views) for b in range(writer.meta.num_blocks) if not done[v, b]
    ]
    mine = pending[ctx.rank :: ctx.world_size]
    items = _pending_items(writer.meta, mine)
    log.info(
        "rank %d: %d of %d pending blocks (%d images)",
        ctx.rank,
        len(mine),
        len(pending),
        len(items),
    )

    start_bar = getattr(progress, "start", None)
    if start_bar is not None:  # a CLI bar: show the total and what earlier runs wrote
        written = num_views * len(source) - sum(_block_len(writer.meta, b) for _, b in pending)
        start_bar(total=written + len(items), done=written)
    start = time.perf_counter()
    if len(items):
        _stream_blocks(
            config, source, recipe, teacher, preprocessing, writer, mine, items, device, progress
        )
    seconds = time.perf_counter() - start

    ctx.barrier()
    if ctx.is_main:
        writer.finalize()
    ctx.barrier()
    final = writer.meta  # on ranks > 0 this is the metadata as opened (complete is rank 0's)
    return ExtractResult(
        location=config.out,
        fingerprint=final.fingerprint,
        blocks_written=len(mine),
        images=len(items),
        seconds=seconds,
        complete=bool(writer.done_mask().all()),
        teacher_top1=final.teacher_top1,
    )


def _block_len(meta: schema.CacheMeta, block: int) -> int:
    rows = meta.block_rows(block)
    return rows.stop - rows.start


def _stream_blocks(
    config: ExtractConfig,
    source: SourceDataset,
    recipe: Recipe,
    teacher: torch.nn.Module,
    preprocessing: Preprocessing,
    writer: CacheWriter,
    blocks: list[tuple[int, int]],
    items: np.ndarray,
    device: torch.device,
    progress: ProgressFn | None,
) -> None:
    views = SeededViews(source, recipe, config.seed, items)
    loader = DataLoader(
        views,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if config.workers > 0 else None,
    )
    teacher = prepare_teacher(teacher, device)
    assembler = BlockAssembler(writer, blocks)
    # The forward runs here while a background thread assembles, digests, compresses and writes
    # the previous batches' blocks (kdcache.extract_writer): the two no longer take turns.
    with teacher_inference(device), BackgroundBlockWriter(assembler) as block_writer:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)  # uint8 [B, C, H, W]
            logits = teacher_forward(teacher, preprocessing(images))  # float32 [B, classes]
            mix = (batch["partner"].numpy(), batch["lam"].numpy()) if "lam" in batch else None
            block_writer.put(logits, batch["input_hash"].numpy(), batch["label"].numpy(), mix)
            if progress is not None:
                progress(len(logits))
    if assembler.current is not None:
        raise RuntimeError("extraction ended before every pending block was filled")
