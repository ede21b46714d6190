"""Where a run's data and teacher signal come from, checked before the first step.

From a cache: the dataset, split, recipe and seed are the cache's; the local data must have the
cache's dataset fingerprint, the student must have the cache's class count, and a loss that needs
dense logits refuses a sparse cache. Without a cache: the dataset and recipe the user named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from kdcache.augment import Recipe, create_recipe
from kdcache.cache.store import CacheReader, open_cache
from kdcache.data import SourceDataset, load_dataset
from kdcache.errors import CacheError, CacheMismatchError, ConfigError
from kdcache.models.preprocess import Preprocessing, recorded_preprocessing
from kdcache.training.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_BLOCK_ROWS = 1024  # ordering granularity when there is no cache


@dataclass
class RunData:
    train: SourceDataset
    eval: SourceDataset
    recipe: Recipe
    aug_seed: int
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


def _check_views(requested: tuple[int, ...] | None, available: int) -> np.ndarray:
    if requested is None:
        return np.arange(available, dtype=np.int64)
    bad = [v for v in requested if not 0 <= v < available]
    if bad or not requested:
        raise ConfigError(
            f"--views {','.join(map(str, requested))}: the source has views 0..{available - 1}"
        )
    return np.array(sorted(set(requested)), dtype=np.int64)


def _from_cache(config: TrainConfig) -> RunData:
    assert config.cache is not None
    reader = open_cache(config.cache)
    ident = reader.identity
    if ident.storage.mode != "dense" and config.loss != "ce":
        raise CacheError(
            f"{config.cache} is a sparse top-{ident.storage.topk} cache, but loss "
            f"{config.loss!r} needs every class's teacher logit (RLD and LDRLD mask against the "
            "true-class logit and rank class pairs; KD and DKD need the full distribution at "
            "temperature T). Extract a dense cache (omit --topk) to train with it."
        )
    train = load_dataset(ident.dataset.name, config.data_dir, ident.dataset.split)
    local = train.fingerprint()
    if local != ident.dataset.fingerprint:
        raise CacheMismatchError(
            f"the data in --data-dir is not the data this cache was made from: local "
            f"{ident.dataset.name}/{ident.dataset.split} has fingerprint {local[:16]} "
            f"(N={len(train)}), the cache records {ident.dataset.fingerprint[:16]} "
            f"(N={ident.dataset.num_samples}). Point --data-dir at the same copy of the dataset."
        )
    views = _check_views(config.views, ident.augmentation.num_views)
    n = min(config.max_samples or len(train), len(train))
    blocks = -(-n // ident.storage.chunk_rows)
    done = reader.done_mask()[np.ix_(views, np.arange(blocks))]
    if not done.all():
        reader.require_complete()  # raises, naming the missing blocks
    recipe = create_recipe(ident.augmentation.recipe, train.spec, **ident.augmentation.params)
    eval_source = load_dataset(ident.dataset.name, config.data_dir, train.spec.eval_split)
    return RunData(
        train,
        eval_source,
        recipe,
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
    views = _check_views(config.views, config.num_views)
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
    return _from_cache(config) if config.cache is not None else _from_dataset(config)


def check_student_classes(model: torch.nn.Module, data: RunData) -> None:
    """The student must output one logit per class of the cache / dataset."""
    spec = data.train.spec
    x = torch.zeros(2, spec.in_chans, *data.student_input.input_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    if out.dim() != 2 or out.shape[1] != spec.num_classes:
        where = f"the cache {data.reader.location}" if data.reader else f"dataset {spec.name}"
        raise CacheMismatchError(
            f"the student outputs {tuple(out.shape[1:])} logits per sample, but {where} has "
            f"{spec.num_classes} classes: build the student with num_classes={spec.num_classes}"
        )
