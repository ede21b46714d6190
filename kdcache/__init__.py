"""kdcache: offline knowledge distillation from a verifiable teacher-logit cache.

The public API (``docs/api.md``)::

    cache = kdcache.open_cache(location)      # identity: cache.teacher, .views, .fingerprint ...
    cache.verify(data_dir)                    # what `kdcache verify` checks
    for batch in cache.loader(data_dir, batch_size=64, seed=0, epoch=e):
        batch.images, batch.labels, batch.teacher_logits   # [B, C, H, W], [B], [B, K]
    loss_fn = kdcache.create_loss("ldrld")    # or kdcache.build_objective("ldrld")
    student = kdcache.create_model("resnet8x4", num_classes=cache.classes)  # the CIFAR zoo, timm
    kdcache.run_extract(kdcache.ExtractConfig(...)); kdcache.run_train(kdcache.TrainConfig(...))

Names are imported on first use, so that ``import kdcache`` (and ``kdcache --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdcache._version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "open_cache": "kdcache.api",
    "Cache": "kdcache.api",
    "Batch": "kdcache.stream.batch",
    "EpochBatches": "kdcache.stream.epoch",
    "create_loss": "kdcache.losses",
    "list_losses": "kdcache.losses",
    "loss_info": "kdcache.losses",
    "build_objective": "kdcache.losses",
    "Objective": "kdcache.losses",
    "DistillationLoss": "kdcache.losses",
    "KDLoss": "kdcache.losses",
    "DKDLoss": "kdcache.losses",
    "RLDLoss": "kdcache.losses",
    "LDRLDLoss": "kdcache.losses",
    "kd_loss": "kdcache.losses",
    "dkd_loss": "kdcache.losses",
    "rld_loss": "kdcache.losses",
    "ldrld_loss": "kdcache.losses",
    "SparseTeacher": "kdcache.losses.sparse",
    "sparse_kd_loss": "kdcache.losses.sparse",
    "create_model": "kdcache.models",
    "list_models": "kdcache.models",
    "Preprocessing": "kdcache.models.preprocess",
    "resolve_preprocessing": "kdcache.models.preprocess",
    "run_extract": "kdcache.extract",
    "ExtractConfig": "kdcache.extract",
    "ExtractResult": "kdcache.extract",
    "run_train": "kdcache.training.loop",
    "train_one_epoch": "kdcache.training.loop",
    "TrainResult": "kdcache.training.loop",
    "TrainConfig": "kdcache.training.config",
    "StudentArray": "kdcache.training.array",
    "ArrayResult": "kdcache.training.array",
    "expand_array": "kdcache.training.array",
    "run_array": "kdcache.training.array",
    "evaluate": "kdcache.training.evaluation",
    "VerifyReport": "kdcache.verify",
    "KdcacheError": "kdcache.errors",
    "ConfigError": "kdcache.errors",
    "DataNotFoundError": "kdcache.errors",
    "CacheError": "kdcache.errors",
    "CacheCorruptError": "kdcache.errors",
    "CacheMismatchError": "kdcache.errors",
    "FormatVersionError": "kdcache.errors",
    "ReplayMismatchError": "kdcache.errors",
    "NonFiniteError": "kdcache.errors",
}

# Spelled out (not derived from _EXPORTS) so that linters and type checkers see it.
__all__ = [
    "__version__",
    "ArrayResult",
    "StudentArray",
    "Batch",
    "Cache",
    "CacheCorruptError",
    "CacheError",
    "CacheMismatchError",
    "ConfigError",
    "DKDLoss",
    "DataNotFoundError",
    "DistillationLoss",
    "EpochBatches",
    "ExtractConfig",
    "ExtractResult",
    "FormatVersionError",
    "KDLoss",
    "KdcacheError",
    "LDRLDLoss",
    "NonFiniteError",
    "Objective",
    "Preprocessing",
    "RLDLoss",
    "ReplayMismatchError",
    "SparseTeacher",
    "TrainConfig",
    "TrainResult",
    "VerifyReport",
    "build_objective",
    "create_loss",
    "create_model",
    "dkd_loss",
    "evaluate",
    "kd_loss",
    "ldrld_loss",
    "list_losses",
    "list_models",
    "loss_info",
    "open_cache",
    "resolve_preprocessing",
    "rld_loss",
    "expand_array",
    "run_array",
    "run_extract",
    "run_train",
    "sparse_kd_loss",
    "train_one_epoch",
]

if TYPE_CHECKING:
    from kdcache.api import Cache, open_cache
    from kdcache.errors import (
        CacheCorruptError,
        CacheError,
        CacheMismatchError,
        ConfigError,
        DataNotFoundError,
        FormatVersionError,
        KdcacheError,
        NonFiniteError,
        ReplayMismatchError,
    )
    from kdcache.extract import ExtractConfig, ExtractResult, run_extract
    from kdcache.losses import (
        DistillationLoss,
        DKDLoss,
        KDLoss,
        LDRLDLoss,
        Objective,
        RLDLoss,
        build_objective,
        create_loss,
        dkd_loss,
        kd_loss,
        ldrld_loss,
        list_losses,
        loss_info,
        rld_loss,
    )
    from kdcache.losses.sparse import SparseTeacher, sparse_kd_loss
    from kdcache.models import create_model, list_models
    from kdcache.models.preprocess import Preprocessing, resolve_preprocessing
    from kdcache.stream.batch import Batch
    from kdcache.stream.epoch import EpochBatches
    from kdcache.training.array import ArrayResult, StudentArray, expand_array, run_array
    from kdcache.training.config import TrainConfig
    from kdcache.training.evaluation import evaluate
    from kdcache.training.loop import TrainResult, run_train, train_one_epoch
    from kdcache.verify import VerifyReport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
