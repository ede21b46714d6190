"""What ``kdcache extract`` is asked to do (:class:`ExtractConfig`, checked when built) and what
it did (:class:`ExtractResult`); :func:`kdcache.extract.run_extract` does it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kdcache.cache import bounds
from kdcache.errors import ConfigError
from kdcache.models.preprocess import check_preprocessing_text

ProgressFn = Callable[[int], None]

# ExtractConfig's integer settings: (field, lowest, highest or None); None values are not checked.
_RANGES = (
    ("views", 1, bounds.MAX_VIEWS),
    ("seed", 0, bounds.MAX_SEED),
    ("chunk_rows", 1, bounds.MAX_CHUNK_ROWS),
    ("batch_size", 1, None),
    ("workers", 0, None),
    ("topk", 1, None),
)


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
    # registered loss's default temperature (see kdcache.losses.registry.sparse_temperatures).
    extra_temperatures: tuple[float, ...] = ()
    chunk_rows: int = 1024
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    download: bool = False

    def __post_init__(self) -> None:
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is not None and not (low <= value and (high is None or value <= high)):
                within = f">= {low}" if high is None else f"in {low}..{high}"
                raise ConfigError(f"`{name}` must be {within}, got {value}")
        if not self.weights:
            raise ConfigError(
                "`weights` is required: a teacher without weights would be randomly initialised "
                "(kdcache never downloads weights). Give the teacher's checkpoint file."
            )
        if self.topk is not None and self.dtype == "float16":
            raise ConfigError(
                "sparse caches store float32 top-K values (float16 values would make the kept "
                "probabilities sum to more than 1 in ~28% of rows): leave `dtype` unset with `topk`"
            )
        if self.topk is not None and self.dtype is not None:  # float32: accepted, no effect
            raise ConfigError(
                f"`dtype` {self.dtype} has no effect with `topk`: sparse caches always store "
                "float32 values. Leave `dtype` unset (it chooses the precision of dense logits)"
            )
        if self.topk is None and self.extra_temperatures:
            raise ConfigError("`extra_temperatures` are only meaningful with `topk`")
        bad = [t for t in self.extra_temperatures if not (0 < t < float("inf"))]
        if bad:
            raise ConfigError(f"`extra_temperatures` must be finite numbers > 0, got {bad[0]}")
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
