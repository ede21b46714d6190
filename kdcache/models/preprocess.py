"""Each model's own conversion of the shared uint8 view into its float input.

Teacher and student see the same uint8 augmented view (one input hash, one replay contract); each
model converts it its own way (docs/design.md §Determinism): resize to its input size when that
differs from the view's, scale to [0, 1], normalise with its mean/std. A teacher fed another
model's statistics (a ViT trained with mean = std = 0.5 given ImageNet's) gives silently degraded
logits, which no input hash can notice.

Where a model's preprocessing comes from (``docs/cache-format.md`` §Teacher preprocessing):

1. ``auto`` (the default): its timm ``pretrained_cfg`` (``timm.data.resolve_model_data_config``)
   when the model has one, otherwise the dataset's mean/std at the view's size;
2. ``dataset``: the dataset's, whatever the model says;
3. ``key=value`` overrides on top of either base, e.g.
   ``dataset,mean=0.5071/0.4867/0.4408,std=0.2675/0.2565/0.2761`` or ``size=224,interpolation=
   bicubic`` (the base defaults to ``auto``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal, cast, get_args

import torch
from torch import nn
from torch.nn import functional as F

from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError

log = logging.getLogger(__name__)

Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)
BASES = ("auto", "dataset")


@dataclass(frozen=True)
class Preprocessing:
    """How one model turns a uint8 view ``[B, C, H, W]`` into its float32 input.

    Attributes:
        mean, std: per channel, in [0, 1] pixel units (one entry per channel of the view).
        input_size: ``(H, W)`` the model is fed; a view of another size is resized (see
            :meth:`__call__`).
        interpolation: resize mode (unused when no resize happens).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    interpolation: Interpolation = "bilinear"

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ConfigError(f"preprocessing mean/std need one entry per channel, got {self}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be > 0, got {self.std}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ConfigError(f"preprocessing input size must be (H, W) > 0, got {self.input_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )

    @classmethod
    def from_dataset(cls, spec: DatasetSpec) -> Preprocessing:
        """The dataset's normalisation at the view's size: what every 1.0 / 1.1 cache used."""
        return cls(spec.mean, spec.std, (spec.image_size, spec.image_size))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        try:
            h, w = (int(s) for s in d["input_size"])
            return cls(
                mean=tuple(float(m) for m in d["mean"]),
                std=tuple(float(s) for s in d["std"]),
                input_size=(h, w),
                interpolation=cast(Interpolation, str(d.get("interpolation", "bilinear"))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed preprocessing record {d!r}: {exc}") from exc

    def describe(self) -> str:
        def fmt(v: tuple[float, ...]) -> str:
            return "/".join(f"{x:g}" for x in v)

        h, w = self.input_size
        return f"mean {fmt(self.mean)} std {fmt(self.std)} size {h}x{w} {self.interpolation}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 ``[B, C, *input_size]``, normalised, same device.

        ``x = images / 255``; if ``(H, W) != input_size``: ``x = F.interpolate(x, input_size,
        mode, align_corners=False, antialias=mode != "nearest")`` (no clamping); then
        ``(x - mean) / std``. Without a resize this is bit-identical to torchvision's
        ``ToDtype(float32, scale=True)`` + ``Normalize`` (same operation order).
        """
        if images.dtype != torch.uint8:
            raise TypeError(f"preprocessing expects uint8 images, got {images.dtype}")
        if images.dim() != 4 or images.shape[1] != len(self.mean):
            raise ValueError(
                f"preprocessing expects [B, {len(self.mean)}, H, W] images, "
                f"got shape {tuple(images.shape)}"
            )
        x = images.to(torch.float32).div_(255.0)  # [B, C, H, W]
        if tuple(x.shape[-2:]) != self.input_size:
            mode = self.interpolation
            x = F.interpolate(
                x,
                size=self.input_size,
                mode=mode,
                align_corners=None if mode == "nearest" else False,
                antialias=mode != "nearest",
            )  # [B, C, *input_size]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


def recorded_preprocessing(record: dict[str, Any] | None, spec: DatasetSpec) -> Preprocessing:
    """A cache's recorded teacher preprocessing; a 1.0 / 1.1 cache (none recorded) used the
    dataset's normalisation at the view's size."""
    return Preprocessing.from_dataset(spec) if record is None else Preprocessing.from_dict(record)


def _from_timm(model: nn.Module, spec: DatasetSpec) -> Preprocessing | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg.get("mean") or not cfg.get("std"):
        return None
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)  # [3, H, W] input size, mean, std, interpolation
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if len(mean) != spec.in_chans and spec.in_chans == 1:
        # A 3-channel model adapted to grey input (timm sums its stem over channels): average.
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    interpolation = data.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:  # e.g. 'random' in training configs
        interpolation = "bilinear"
    _, h, w = data["input_size"]
    return Preprocessing(mean, std, (int(h), int(w)), interpolation)


def _floats(key: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split("/"))
    except ValueError as exc:
        raise ConfigError(f"preprocessing {key}= takes numbers separated by '/': {text!r}") from exc


def _parse(text: str) -> tuple[str, dict[str, Any]]:
    """``auto | dataset [,key=value ...]`` -> (base, overrides)."""
    base = "auto"
    overrides: dict[str, Any] = {}
    for k, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            if k or key not in BASES:
                raise ConfigError(
                    f"preprocessing {text!r}: {item!r} is not a base ({' or '.join(BASES)}, "
                    "first) nor a key=value; e.g. 'dataset,mean=0.5/0.5/0.5,std=0.5/0.5/0.5'"
                )
            base = key
        elif key in ("mean", "std"):
            overrides[key] = _floats(key, value)
        elif key in ("size", "input_size"):
            try:
                sizes = [int(v) for v in value.lower().replace("x", "/").split("/")]
            except ValueError as exc:
                raise ConfigError(f"preprocessing size= takes S or HxW, got {value!r}") from exc
            overrides["input_size"] = (sizes[0], sizes[-1])
        elif key == "interpolation":
            overrides["interpolation"] = value.strip()
        else:
            raise ConfigError(
                f"preprocessing {text!r}: unknown key {key!r} "
                "(known: mean, std, size, interpolation)"
            )
    return base, overrides


def check_preprocessing_text(text: str) -> None:
    """Validate a ``--*-preprocessing`` value early (config time), before any model is built."""
    _parse(text)


def resolve_preprocessing(model: nn.Module, spec: DatasetSpec, text: str = "auto") -> Preprocessing:
    """A model's preprocessing for views of ``spec``: see the module docstring for ``text``."""
    base, overrides = _parse(text)
    pre = _from_timm(model, spec) if base == "auto" else None
    where = "timm pretrained_cfg" if pre is not None else "dataset"
    if pre is None:
        pre = Preprocessing.from_dataset(spec)
    if overrides:
        pre = replace(pre, **overrides)
        where += " + overrides"
    if len(pre.mean) != spec.in_chans:
        raise ConfigError(
            f"preprocessing {pre.describe()} has {len(pre.mean)} channels, but {spec.name} views "
            f"have {spec.in_chans}: give mean= and std= with {spec.in_chans} values"
        )
    log.info("%s: preprocessing %s (from %s)", type(model).__name__, pre.describe(), where)
    return pre
