"""Geometric recipes: ``none`` (evaluation), ``cifar`` (pad-crop-flip), ``imagenet`` (RRC + flip).

Each draws from a ``torch.Generator`` seeded with the sample seed, in the same order as the
torchvision transform it reproduces, so under equal seeds the boxes are torchvision's own.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kdcache.augment.base import Recipe, check_uint8_image, generator, register_recipe
from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError


def _tvf() -> Any:
    # Imported on first use: torchvision costs ~1 s and `none` on CIFAR never needs it.
    import torchvision.transforms.v2.functional as tvf

    return tvf


@register_recipe
class EvalTransform(Recipe):
    """The evaluation transform: resize the shorter side to ``round(S / crop_pct)``, centre-crop S.

    Identity for images that are already S x S with ``crop_pct=1`` (CIFAR, digits). Bilinear,
    antialiased. ``sample_seed`` and ``view`` are ignored: every view is the same image.
    """

    name = "none"

    def __init__(self, spec: DatasetSpec, crop_pct: float | None = None) -> None:
        super().__init__(spec)
        self.crop_pct = spec.crop_pct if crop_pct is None else float(crop_pct)
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"recipe 'none': crop_pct must be in (0, 1], got {self.crop_pct}")

    def params(self) -> dict[str, Any]:
        return {"crop_pct": self.crop_pct}

    def num_distinct_views(self) -> int | None:
        return 1

    def __call__(self, image: torch.Tensor, *, sample_seed: int, view: int) -> torch.Tensor:
        check_uint8_image(image, self.spec, self.name)
        size = self.spec.image_size
        resize = round(size / self.crop_pct)
        if min(image.shape[-2:]) != resize:
            image = _tvf().resize(image, [resize], antialias=True)
        if tuple(image.shape[-2:]) != (size, size):
            image = _tvf().center_crop(image, [size, size])
        return image.contiguous().clone()


@register_recipe
class PadCropFlip(Recipe):
    """CIFAR augmentation: zero-pad by ``padding``, random S x S crop, horizontal flip p=0.5.

    Same as torchvision's ``RandomCrop(S, padding=padding)`` + ``RandomHorizontalFlip()``, with the
    same draws (``dy``, ``dx``, then ``rand() < 0.5``) from the sample's generator. There are
    ``(2 * padding + 1)^2 * 2`` distinct views (162 for padding 4).

    ``exhaustive=True`` ignores ``sample_seed`` and maps view ``v`` in ``[0, num_distinct_views)``
    to the same geometry for every sample::

        v = (dy * (2 * padding + 1) + dx) * 2 + flip    # dy, dx in [0, 2 padding], flip in {0, 1}

    so a cache of all views covers every crop the student can draw.
    """

    name = "cifar"
    finite = True

    def __init__(self, spec: DatasetSpec, padding: int = 4, exhaustive: bool = False) -> None:
        super().__init__(spec)
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ConfigError(f"recipe 'cifar': padding must be an integer >= 0, got {padding!r}")
        self.padding = padding
        self.exhaustive = bool(exhaustive)

    def params(self) -> dict[str, Any]:
        return {"padding": self.padding, "exhaustive": self.exhaustive}

    def num_distinct_views(self) -> int:
        return (2 * self.padding + 1) ** 2 * 2

    def geometry(self, *, sample_seed: int, view: int) -> tuple[int, int, bool]:
        """(dy, dx, flip): the crop's offset in the padded image and whether it is mirrored."""
        positions = 2 * self.padding + 1
        if self.exhaustive:
            if not 0 <= view < self.num_distinct_views():
                raise ConfigError(
                    f"recipe 'cifar' (exhaustive) has views 0..{self.num_distinct_views() - 1}, "
                    f"got view {view}"
                )
            return view // 2 // positions, view // 2 % positions, bool(view % 2)
        gen = generator(sample_seed)
        dy = int(torch.randint(0, positions, (1,), generator=gen).item())
        dx = int(torch.randint(0, positions, (1,), generator=gen).item())
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        return dy, dx, flip

    def __call__(self, image: torch.Tensor, *, sample_seed: int, view: int) -> torch.Tensor:
        check_uint8_image(image, self.spec, self.name)
        size, pad = self.spec.image_size, self.padding
        if tuple(image.shape[-2:]) != (size, size):
            raise ConfigError(
                f"recipe 'cifar' crops {size}x{size} images of {self.spec.name}, got "
                f"{tuple(image.shape[-2:])}; use recipe 'imagenet' for images of varying size"
            )
        dy, dx, flip = self.geometry(sample_seed=sample_seed, view=view)
        canvas = image.new_zeros(
            (image.shape[0], size + 2 * pad, size + 2 * pad)
        )  # [C, S+2p, S+2p]
        canvas[:, pad : pad + size, pad : pad + size] = image
        out = canvas[:, dy : dy + size, dx : dx + size]  # [C, S, S]
        return (out.flip(-1) if flip else out).contiguous()


def _pair(value: Any, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"recipe 'imagenet': {what} must be two numbers, got {value!r}") from exc
    if not 0 < lo <= hi:
        raise ConfigError(f"recipe 'imagenet': {what} must satisfy 0 < min <= max, got {value!r}")
    return lo, hi


@register_recipe
class RandomResizedCropFlip(Recipe):
    """ImageNet augmentation: ``RandomResizedCrop(S, scale, ratio)`` + horizontal flip p=0.5.

    The box follows torchvision's ``RandomResizedCrop.get_params`` draw for draw (10 attempts at
    area ~ U(scale) * H * W and log-ratio ~ U(log ratio), then a centre-crop fallback), from the
    sample's generator; the crop is resized bilinearly with antialiasing
    (``torchvision.transforms.v2.functional.resized_crop``).
    """

    name = "imagenet"

    def __init__(
        self,
        spec: DatasetSpec,
        scale: tuple[float, float] | list[float] = (0.08, 1.0),
        ratio: tuple[float, float] | list[float] = (3 / 4, 4 / 3),
    ) -> None:
        super().__init__(spec)
        self.scale = _pair(scale, "scale")
        self.ratio = _pair(ratio, "ratio")
        if self.scale[1] > 1:
            raise ConfigError(f"recipe 'imagenet': scale must be within (0, 1], got {scale!r}")

    def params(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "ratio": list(self.ratio)}

    def box(self, height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop, drawn from ``gen`` exactly as torchvision does."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))  # float32, as in torchvision
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=gen).item()
            log_r = torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=gen)
            aspect = torch.exp(log_r).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=gen).item())
                left = int(torch.randint(0, width - w + 1, (1,), generator=gen).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: torch.Tensor, *, sample_seed: int, view: int) -> torch.Tensor:
        check_uint8_image(image, self.spec, self.name)
        gen = generator(sample_seed)
        top, left, h, w = self.box(int(image.shape[-2]), int(image.shape[-1]), gen)
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        size = self.spec.image_size
        out = _tvf().resized_crop(image, top, left, h, w, [size, size], antialias=True)
        return (out.flip(-1) if flip else out).contiguous()
