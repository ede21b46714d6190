"""Settings of ``kdcache train``: a frozen dataclass, protocol presets, YAML round trip."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdcache.cache.bounds import MAX_SEED
from kdcache.errors import ConfigError, DataNotFoundError
from kdcache.training.config_types import check_types, parse_views

ReplayMode = Literal["all", "sample", "off"]
StreamKind = Literal["auto", "host", "device"]  # kdcache.stream.images
OptimizerName = Literal["sgd", "adamw"]
SchedName = Literal["step", "cosine"]


@dataclass(frozen=True)
class Protocol:
    """A published training recipe; milestones and warm-up are fractions of the run."""

    name: str
    batch_size: int
    lr: float
    weight_decay: float
    epochs: int
    milestones: tuple[float, ...]  # fractions of the run at which lr *= lr_decay
    warmup_fraction: float  # DKD/RLD distillation warm-up, fraction of the run
    lr_decay: float = 0.1
    small_student_lr: float | None = None  # MobileNet / ShuffleNet students (CIFAR protocol)


PROTOCOLS: dict[str, Protocol] = {
    # mdistiller / CRD CIFAR-100: 240 epochs, x0.1 at 150/180/210, DKD/RLD warm-up 20 epochs.
    "cifar": Protocol(
        "cifar",
        64,
        0.05,
        5e-4,
        240,
        (150 / 240, 180 / 240, 210 / 240),
        20 / 240,
        small_student_lr=0.01,
    ),
    # ImageNet: 100 epochs, x0.1 at 30/60/90, DKD/RLD warm-up 1 epoch.
    "imagenet": Protocol("imagenet", 256, 0.1, 1e-4, 100, (0.3, 0.6, 0.9), 1 / 100),
}
DEFAULT_MODEL_EMA_DECAY = 0.9998  # timm's ModelEmaV3 default for ImageNet-length runs
_SMALL_STUDENTS = ("mobilenet", "shuffle")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. ``None`` means "the protocol's value"."""

    student: str
    out: str
    loss: str = "ce"
    cache: str | None = None
    teacher: str | None = None
    teacher_weights: str | None = None
    teacher_ema: bool = False  # online: the checkpoint's EMA weights (state_dict_ema / model_ema)
    # auto | dataset [,key=value...] (kdcache.models.preprocess). A cache brings its teacher's.
    teacher_preprocessing: str = "auto"
    student_preprocessing: str = "auto"
    # Without a cache the data comes from these (a cache supplies its own):
    dataset: str | None = None
    split: str | None = None
    recipe: str = "cifar"
    recipe_params: dict[str, Any] = field(default_factory=dict)
    aug_seed: int = 0
    num_views: int = 1
    data_dir: str | None = None
    # Local copies of a remote cache's chunks (open_cache's cache_dir); None: the env var, default
    remote_cache_dir: str | None = None
    views: tuple[int, ...] | None = None  # subset of the cache's views; None = all
    max_samples: int | None = None  # train on the first N samples only
    protocol: str | None = None  # cifar | imagenet; None = by dataset
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float | None = None  # the distillation term's warm-up (DKD/RLD)
    # Optimiser, lr schedule, student EMA (kdcache.training.optim, timm's factories):
    opt: OptimizerName = "sgd"
    sched: SchedName = "step"
    lr_warmup_epochs: float = 0.0  # linear lr warm-up from LR_WARMUP_INIT, per optimiser update
    min_lr: float = 0.0  # cosine only: the lr it decays to
    label_smoothing: float = 0.0  # of the cross-entropy term
    model_ema: bool = False  # keep an EMA of the student's weights, evaluated beside it
    model_ema_decay: float = DEFAULT_MODEL_EMA_DECAY
    ce_weight: float | None = None
    distill_weight: float | None = None
    loss_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # student init, per-epoch view choice and order
    workers: int = 2
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile of the whole step (kdcache.training.step)
    channels_last: bool = True
    # Where the views are made: "device" (the images resident on the training device, batched
    # crops), "host" (DataLoader workers), "auto" (device where the data and recipe allow)
    stream: StreamKind = "auto"
    # Seconds: start no epoch that would end past this budget (estimated from the last epoch);
    # the run stops cleanly, resumable, and reports itself unfinished. None: no limit.
    time_limit: float | None = None
    verify_replay: ReplayMode = "sample"
    # From a sparse (top-K) cache: let DKD, RLD and LDRLD train through their named approximation
    # (KD is exact from sparse rows and needs no permission).
    sparse_approx: bool = False
    # Online KD: sparsify the live teacher's logits to their top K per row exactly as a top-K cache
    # stores them (kdcache.training.sparse_teacher); None: every logit.
    teacher_topk: int | None = None
    window_blocks: int = 4  # cache blocks shuffled together
    block_rows: int | None = None  # ordering blocks without a cache (a cache uses its chunk rows)
    eval_batch_size: int = 256
    eval_every: int = 1  # evaluate every N epochs and after the last; 0 = never (benchmarks)
    tensorboard: bool = False  # also log to OUT/tensorboard (optional dependency)
    checkpoint_every: int = 0  # also write last.pt every N steps inside an epoch; 0 = epoch ends
    resume: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if (self.cache is None) == (self.dataset is None):
            raise ConfigError("give either `cache` (train from a cache) or `dataset` (online / CE)")
        if self.cache is not None and self.teacher is not None:
            raise ConfigError("`cache` and `teacher` are exclusive: the cache replaces the teacher")
        self._check_view_settings()
        if self.teacher is not None and not self.teacher_weights:
            raise ConfigError("`teacher` needs `teacher_weights` (kdcache never downloads weights)")
        if self.teacher_topk is not None and self.teacher is None:
            raise ConfigError(
                "`teacher_topk` sparsifies a live `teacher`'s logits; a cache is sparse or not "
                "as it was extracted (`kdcache extract --topk K`): drop `teacher_topk`"
                if self.cache is not None
                else "`teacher_topk` needs a live `teacher` (with `teacher_weights`)"
            )
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"`protocol` must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}"
            )
        self._check_ranges()
        self._check_optimization()
        if self.views is not None and (not self.views or min(self.views) < 0):
            raise ConfigError(f"`views` must name view numbers >= 0, got {list(self.views)}")
        if self.stream not in ("auto", "host", "device"):
            raise ConfigError(f"`stream` must be auto, host or device, got {self.stream!r}")
        if self.time_limit is not None and not (
            math.isfinite(self.time_limit) and self.time_limit > 0
        ):
            raise ConfigError(
                f"`time_limit` must be a number of seconds > 0, got {self.time_limit}"
            )
        if self.verify_replay not in ("all", "sample", "off"):
            raise ConfigError(
                f"`verify_replay` must be all, sample or off, got {self.verify_replay!r}"
            )
        if self.cache is not None and (self.teacher_preprocessing != "auto" or self.teacher_ema):
            raise ConfigError(
                "`teacher_preprocessing` / `teacher_ema` are for a live teacher: a cache records "
                "its teacher's preprocessing and weights"
            )
        from kdcache.models.preprocess import check_preprocessing_text

        check_preprocessing_text(self.teacher_preprocessing)
        check_preprocessing_text(self.student_preprocessing)
        if self.resume and self.force:
            raise ConfigError("`resume` and `force` are exclusive")

    def _check_ranges(self) -> None:
        """Counts >= 1, rates and weights finite and >= 0, seeds within the 63-bit range."""
        for name in (
            "epochs",
            "batch_size",
            "max_samples",
            "num_views",
            "window_blocks",
            "eval_batch_size",
            "block_rows",
            "teacher_topk",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {value}")
        for name in (
            "lr",
            "momentum",
            "weight_decay",
            "warmup_epochs",
            "lr_warmup_epochs",
            "min_lr",
            "ce_weight",
            "distill_weight",
        ):
            value = getattr(self, name)
            # NaN compares false with everything: test finiteness first, or it slips through.
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"`{name}` must be a finite number >= 0, got {value}")
        if self.workers < 0:
            raise ConfigError(f"`workers` must be >= 0, got {self.workers}")
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"`checkpoint_every` must be >= 0 (0: at epoch ends only), got "
                f"{self.checkpoint_every}"
            )
        if self.eval_every < 0:
            raise ConfigError(f"`eval_every` must be >= 0 (0: never), got {self.eval_every}")
        for name in ("seed", "aug_seed"):
            if not 0 <= getattr(self, name) <= MAX_SEED:
                raise ConfigError(f"`{name}` must be in 0..2**63-1, got {getattr(self, name)}")

    def _check_view_settings(self) -> None:
        """A cache brings its own split, recipe, seed and views: the flags that would set them
        are refused with ``--cache`` rather than ignored (a run would silently train on other
        views than the user asked for). A flag set to its default value cannot be told apart."""
        if self.cache is None:
            return
        given = [
            flag
            for flag, value, default in (
                ("`split`", self.split, None),
                ("`recipe`", self.recipe, "cifar"),
                ("recipe_params", self.recipe_params, {}),
                ("`aug_seed`", self.aug_seed, 0),
                ("`num_views`", self.num_views, 1),
                ("`block_rows`", self.block_rows, None),
            )
            if value != default
        ]
        if given:
            one = len(given) == 1
            raise ConfigError(
                f"{', '.join(given)} only appl{'ies' if one else 'y'} without `cache`: a cache "
                "brings its own split, recipe, seed, views and chunk rows (`kdcache info CACHE` "
                f"shows them); drop {'it' if one else 'them'}, or use `views` to train on a subset "
                "of the cache's views"
            )

    def _check_optimization(self) -> None:
        if self.opt not in ("sgd", "adamw"):
            raise ConfigError(f"`opt` must be sgd or adamw, got {self.opt!r}")
        if self.sched not in ("step", "cosine"):
            raise ConfigError(f"`sched` must be step or cosine, got {self.sched!r}")
        if self.opt == "adamw" and (self.lr is None or self.weight_decay is None):
            # The presets' lr and weight decay are SGD's (0.05 / 5e-4): AdamW at lr 0.05 diverges.
            raise ConfigError(
                "`opt` adamw needs `lr` and `weight_decay` (the presets' values are SGD's), "
                "e.g. `lr` 0.001 `weight_decay` 0.05"
            )
        if self.min_lr and self.sched != "cosine":
            raise ConfigError("`min_lr` is the floor of `sched` cosine; the step schedule has none")
        for name in ("label_smoothing", "model_ema_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ConfigError(f"`{name}` must be a number in [0, 1), got {value}")
        if self.model_ema_decay != DEFAULT_MODEL_EMA_DECAY and not self.model_ema:
            raise ConfigError("`model_ema_decay` sets the decay of `model_ema`: add `model_ema`")

    @property
    def uses_teacher(self) -> bool:
        return self.cache is not None or self.teacher is not None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["views"] = list(self.views) if self.views is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown train setting(s): {', '.join(unknown)}")
        d = dict(d)
        if d.get("views") is not None:
            d["views"] = parse_views(d["views"])
        check_types(cls, d)
        return cls(**d)


@dataclass(frozen=True)
class Schedule:
    """The protocol resolved against the run: concrete numbers the loop uses."""

    protocol: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    milestones: tuple[int, ...]  # step schedule: lr *= lr_decay from these epochs (1-based: > m)
    lr_decay: float
    warmup_epochs: float  # of the distillation term
    opt: str = "sgd"
    momentum: float = 0.9  # SGD only
    sched: str = "step"
    lr_warmup_epochs: float = 0.0
    lr_warmup_init: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    model_ema_decay: float | None = None  # None: no student EMA
    # The lr is set before every optimiser update from ``update = epoch * updates_per_epoch +
    # step`` (timm's ``step_update``): warm-up and cosine move per step, milestones fall at the
    # first update of their epoch.
    updates_per_epoch: int = 1


# Where the lr warm-up starts (timm train.py's --warmup-lr default).
LR_WARMUP_INIT = 1e-5


def resolve_schedule(config: TrainConfig, dataset_name: str, num_samples: int = 0) -> Schedule:
    """Protocol defaults, scaled to ``--epochs``, overridden by explicit flags; ``num_samples``
    (training samples per epoch) gives ``updates_per_epoch``."""
    proto = PROTOCOLS[config.protocol or ("imagenet" if dataset_name == "imagefolder" else "cifar")]
    epochs = config.epochs or proto.epochs
    lr = config.lr
    if lr is None:
        small = any(s in config.student.lower() for s in _SMALL_STUDENTS)
        lr = proto.small_student_lr if small and proto.small_student_lr else proto.lr
    milestones = tuple(sorted({max(1, round(f * epochs)) for f in proto.milestones} - {epochs}))
    warmup = config.warmup_epochs
    if warmup is None:
        # Only the methods that warm up (DKD, RLD) get the protocol's warm-up: KD and LDRLD have
        # none in their papers (a loss without a warm-up of its own keeps 0).
        warmup = proto.warmup_fraction * epochs if _warms_up(config.loss) else 0.0
    if config.lr_warmup_epochs and config.lr_warmup_epochs >= epochs:
        raise ConfigError(
            f"`lr_warmup_epochs` {config.lr_warmup_epochs:g} is not shorter than the run "
            f"({epochs} epochs): the lr would never leave its warm-up; give a shorter warm-up "
            "(or 0)"
        )
    batch_size = config.batch_size or proto.batch_size
    return Schedule(
        protocol=proto.name,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=proto.weight_decay if config.weight_decay is None else config.weight_decay,
        milestones=milestones if config.sched == "step" else (),
        lr_decay=proto.lr_decay,
        warmup_epochs=warmup,
        opt=config.opt,
        momentum=config.momentum,
        sched=config.sched,
        lr_warmup_epochs=config.lr_warmup_epochs,
        lr_warmup_init=LR_WARMUP_INIT if config.lr_warmup_epochs else 0.0,
        min_lr=config.min_lr,
        label_smoothing=config.label_smoothing,
        model_ema_decay=config.model_ema_decay if config.model_ema else None,
        updates_per_epoch=max(1, -(-num_samples // batch_size)),
    )


def _warms_up(loss: str) -> bool:
    from kdcache.losses.registry import list_losses, loss_info

    return loss in list_losses() and loss_info(loss).warmup_epochs > 0


def load_yaml_settings(path: str) -> dict[str, Any]:
    """Settings from a YAML file: keys are option names (``batch-size`` or ``batch_size``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"no config file at {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_yaml_list(path: str) -> list[dict[str, Any]]:
    """A YAML list of mappings (a sweep: per-student settings); option names as in
    :func:`load_yaml_settings`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"no sweep file at {path}")
    try:
        data = yaml.safe_load(p.read_text()) or []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ConfigError(f"{path} must hold a list of mappings (one per student), e.g. "
                          "'- {loss: kd, seed: 1}'")  # fmt: skip
    return [{str(k).replace("-", "_"): v for k, v in e.items()} for e in data]
