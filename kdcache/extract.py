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
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.augment import Recipe, create_recipe, views_to_store
from kdcache.cache import bounds, layout, schema
from kdcache.cache.location import CacheLocation, parse_location
from kdcache.cache.writer import CacheWriter, open_for_writing
from kdcache.cache.zarr_stores import check_writable
from kdcache.data import SourceDataset, load_dataset
from kdcache.errors import ConfigError
from kdcache.extract_config import ExtractConfig, ExtractResult, ProgressFn
from kdcache.extract_writer import (
    BackgroundBlockWriter,
    BlockAssembler,
    block_items,
    pending_blocks,
)
from kdcache.losses.registry import sparse_temperatures
from kdcache.models import build_model, count_parameters, resolve_model_name, weights_sha256
from kdcache.models.inference import (
    forward_description,
    padded_batch_note,
    prepare_teacher,
    teacher_forward,
    teacher_inference,
)
from kdcache.models.names import ModelRef
from kdcache.models.preprocess import Preprocessing, resolve_preprocessing
from kdcache.models.probe import check_teacher_io
from kdcache.runtime import init_distributed, library_versions, rank_device, resolve_device
from kdcache.views import SeededViews

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Teacher:
    """What the extraction runs: the data, its recipe and the teacher, checked and built."""

    source: SourceDataset
    recipe: Recipe
    num_views: int
    model: torch.nn.Module
    ref: ModelRef
    preprocessing: Preprocessing


def _remove_interrupted_writes(out: CacheLocation) -> None:
    """Delete the temporary files a killed writer left in a local cache (zarr writes each object
    to ``<key>.<uuid>.partial`` and renames it): a resume rewrites their blocks whole, and zarr
    never reads them, so they are only litter (a 0-byte one is what a kill at open leaves)."""
    if out.path is None or out.is_remote or out.is_zip or not out.path.is_dir():
        return
    stale = [p for p in out.path.rglob("*.partial") if layout.is_interrupted_write(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary file(s) of an interrupted write in %s", len(stale), out)


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
    job = _load(config)
    meta = _cache_meta(config, job, device)

    # Rank 0 creates (or validates) the cache before the others join it.
    writer = None
    if ctx.is_main:
        _remove_interrupted_writes(out)
        writer = open_for_writing(out, meta, job.source.labels, create=True)
    ctx.barrier()
    if writer is None:
        writer = open_for_writing(out, meta, job.source.labels, create=False)
    pending = pending_blocks(writer, job.num_views)
    # Every rank must read the record before any rank writes, or their pending lists differ.
    ctx.barrier()
    mine = pending[ctx.rank :: ctx.world_size]
    items = block_items(writer.meta, mine)
    log.info("rank %d: %d of %d pending blocks", ctx.rank, len(mine), len(pending))

    start_bar = getattr(progress, "start", None)
    if start_bar is not None:  # a CLI bar: show the total and what earlier runs wrote
        written = job.num_views * len(job.source) - len(block_items(writer.meta, pending))
        start_bar(total=written + len(items), done=written)
    start = time.perf_counter()
    if len(items):
        _stream_blocks(config, job, writer, mine, items, device, progress)
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


def _load(config: ExtractConfig) -> _Teacher:
    """The data, the recipe and the teacher, each checked before the cache is created."""
    source = load_dataset(config.dataset, config.data_dir, config.split, download=config.download)
    spec = source.spec
    if config.topk is not None and config.topk > spec.num_classes:  # before the teacher loads
        raise ConfigError(
            f"`topk` {config.topk} exceeds the {spec.num_classes} classes of {spec.name}: "
            f"give K <= {spec.num_classes}"
        )
    recipe = create_recipe(config.recipe, spec, **config.recipe_params)
    num_views = views_to_store(recipe, config.views)
    ref = resolve_model_name(config.teacher)
    teacher = build_model(
        config.teacher,
        spec.num_classes,
        in_chans=spec.in_chans,
        weights=config.weights,
        ema=config.ema,
    )
    preprocessing = resolve_preprocessing(teacher, spec, config.teacher_preprocessing)
    check_teacher_io(teacher, spec.in_chans, preprocessing.input_size, spec.num_classes,
                     "`teacher_preprocessing`")  # fmt: skip
    # Before the cache is created: a layout this machine cannot hold is refused, not attempted.
    bounds.check_layout(
        num_views=num_views,
        num_samples=len(source),
        num_classes=spec.num_classes,
        chunk_rows=config.chunk_rows,
    )
    return _Teacher(source, recipe, num_views, teacher, ref, preprocessing)


def _cache_meta(config: ExtractConfig, job: _Teacher, device: torch.device) -> schema.CacheMeta:
    """The metadata the cache is created with (or must already have, to resume)."""
    source, spec = job.source, job.source.spec
    identity = schema.CacheIdentity(
        teacher=schema.TeacherInfo(
            name=job.ref.spec,  # canonical: "RESNET56" and "resnet56" make the same cache
            weights_sha256=weights_sha256(config.weights) if config.weights else None,
            num_params=count_parameters(job.model),
            preprocessing=job.preprocessing.to_dict(),
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
            recipe=job.recipe.name,
            params=job.recipe.params(),
            seed=config.seed,
            num_views=job.num_views,
        ),
        storage=schema.StorageInfo(
            mode="sparse" if config.topk else "dense",
            dtype=config.storage_dtype,
            chunk_rows=config.chunk_rows,
            topk=config.topk,
            temperatures=sparse_temperatures(config.extra_temperatures) if config.topk else None,
        ),
    )
    return schema.CacheMeta(
        identity=identity,
        versions=library_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        producers=(forward_description(device),),
        teacher_model=job.ref.to_dict(),
    )


def _stream_blocks(
    config: ExtractConfig,
    job: _Teacher,
    writer: CacheWriter,
    blocks: list[tuple[int, int]],
    items: np.ndarray,
    device: torch.device,
    progress: ProgressFn | None,
) -> None:
    views = SeededViews(job.source, job.recipe, config.seed, items)
    preprocessing = job.preprocessing
    loader = DataLoader(
        views,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if config.workers > 0 else None,
    )
    teacher = prepare_teacher(job.model, device)
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
