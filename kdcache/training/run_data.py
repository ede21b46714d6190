"""Where a run's data and teacher signal come from, checked before the first step.

From a cache: the dataset, split, recipe and seed are the cache's; the local data must have the
cache's dataset fingerprint and the student must have the cache's class count (what a sparse
cache can serve is checked against the built objective: :mod:`kdcache.training.sparse_teacher`).
Without a cache: the dataset and recipe the user named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from kdcache.augment import Recipe, create_recipe
from kdcache.cache.reader import CacheReader, open_cache
from kdcache.data import SourceDataset, load_dataset
from kdcache.errors import CacheError, CacheMismatchError, ConfigError
from kdcache.losses.mixed import check_mixed_loss
from kdcache.models.preprocess import Preprocessing, recorded_preprocessing
from kdcache.models.probe import probe_forward
from kdcache.training.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_BLOCK_ROWS = 1024  # ordering granularity when there is no cache


@dataclass(frozen=True)
class RunData:
    train: SourceDataset
    eval: SourceDataset
    recipe: Recipe
    cache_seed: int  # the views' seed: the cache's, or --aug-seed for views made on the fly
    allowed_views: np.ndarray  # int64 [V']
    block_rows: int
    num_samples: int  # samples trained on (after --max-samples)
    reader: CacheReader | None
    # How each model converts the uint8 views: the student's own (set once it is built), and
    # the teacher's (the cache's record, or the live teacher's own once it is built).
    student_input: Preprocessing
    teacher_input: Preprocessing

    @property
    def cache_fingerprint(self) -> str | None:
        return self.reader.meta.fingerprint if self.reader else None


def check_views(requested: tuple[int, ...] | None, available: int) -> np.ndarray:
    """int64 [V']: the sorted views to train on (``None``: all ``available``)."""
    if requested is None:
        return np.arange(available, dtype=np.int64)
    bad = [v for v in requested if not 0 <= v < available]
    if bad or not requested:
        raise ConfigError(
            f"`views` {','.join(map(str, requested))}: the source has views 0..{available - 1}"
        )
    twice = sorted({v for v in requested if requested.count(v) > 1})
    if twice:  # not deduplicated silently: the user may have meant another view
        raise ConfigError(
            f"--views {','.join(map(str, requested))} names view(s) {twice} more than once: "
            "give each view once"
        )
    return np.array(sorted(set(requested)), dtype=np.int64)


def require_exact_sparse(reader: CacheReader) -> None:
    """Refuse a format 1.0/1.1 sparse cache: it stored the normaliser at T = 1 only."""
    storage = reader.identity.storage
    if storage.mode == "sparse" and not storage.exact_sparse:
        raise CacheError(
            f"{reader.location} is a sparse top-{storage.topk} cache of format 1.0/1.1: it stores "
            "the log-sum-exp at T = 1 only, so no loss is exact from it. Re-extract it with this "
            "kdcache (format 1.2), or extract a dense cache."
        )


def load_cache_data(reader: CacheReader, data_dir: str | None) -> SourceDataset:
    """The cache's split from ``data_dir``; refused unless it is the data the cache was made of."""
    ident = reader.identity
    train = load_dataset(ident.dataset.name, data_dir, ident.dataset.split)
    local = train.fingerprint()
    if local != ident.dataset.fingerprint:
        raise CacheMismatchError(
            f"the data in `data_dir` is not the data this cache was made from: local "
            f"{ident.dataset.name}/{ident.dataset.split} has fingerprint {local[:16]} "
            f"(N={len(train)}), the cache records {ident.dataset.fingerprint[:16]} "
            f"(N={ident.dataset.num_samples}). Point `data_dir` at the same copy of the dataset."
        )
    return train


def require_blocks(reader: CacheReader, views: np.ndarray, num_samples: int) -> None:
    """Every block holding the first ``num_samples`` rows of ``views`` must be marked written."""
    blocks = -(-num_samples // reader.identity.storage.chunk_rows)
    done = reader.done_mask()[np.ix_(views, np.arange(blocks))]
    if not done.all():
        reader.require_complete()  # raises, naming the missing blocks


def cache_recipe(reader: CacheReader, train: SourceDataset) -> Recipe:
    """The augmentation recipe the cache's views were made with."""
    aug = reader.identity.augmentation
    return create_recipe(aug.recipe, train.spec, **aug.params)


def _from_cache(config: TrainConfig) -> RunData:
    assert config.cache is not None
    reader = open_cache(config.cache, cache_dir=config.remote_cache_dir)
    ident = reader.identity
    train = load_cache_data(reader, config.data_dir)
    views = check_views(config.views, ident.augmentation.num_views)
    n = min(config.max_samples or len(train), len(train))
    require_blocks(reader, views, n)
    eval_source = load_dataset(ident.dataset.name, config.data_dir, train.spec.eval_split)
    return RunData(
        train,
        eval_source,
        cache_recipe(reader, train),
        ident.augmentation.seed,
        views,
        ident.storage.chunk_rows,
        n,
        reader,
        student_input=Preprocessing.from_dataset(train.spec),
        teacher_input=recorded_preprocessing(ident.teacher.preprocessing, train.spec),
    )


def _from_dataset(config: TrainConfig) -> RunData:
    assert config.dataset is not None
    train = load_dataset(config.dataset, config.data_dir, config.split or "train")
    recipe = create_recipe(config.recipe, train.spec, **config.recipe_params)
    views = check_views(config.views, config.num_views)
    eval_source = load_dataset(config.dataset, config.data_dir, train.spec.eval_split)
    n = min(config.max_samples or len(train), len(train))
    return RunData(
        train,
        eval_source,
        recipe,
        config.aug_seed,
        views,
        config.block_rows or DEFAULT_BLOCK_ROWS,
        n,
        None,
        student_input=Preprocessing.from_dataset(train.spec),
        teacher_input=Preprocessing.from_dataset(train.spec),
    )


def resolve_run_data(config: TrainConfig) -> RunData:
    data = _from_cache(config) if config.cache is not None else _from_dataset(config)
    check_mixed_loss(config.loss, data.recipe.name)  # DKD / RLD have no mixed-target definition
    return data


def check_student_classes(model: torch.nn.Module, data: RunData) -> None:
    """The student must output one logit per class of the cache / dataset."""
    spec = data.train.spec
    out = probe_forward(model, spec.in_chans, data.student_input.input_size, role="student",
                        flag="`student_preprocessing`")  # fmt: skip
    if out.dim() != 2 or out.shape[1] != spec.num_classes:
        where = f"the cache {data.reader.location}" if data.reader else f"dataset {spec.name}"
        raise CacheMismatchError(
            f"the student outputs {tuple(out.shape[1:])} logits per sample, but {where} has "
            f"{spec.num_classes} classes: build the student with num_classes={spec.num_classes}"
        )
