"""``randaugment``: a geometric base recipe followed by timm's RandAugment.

RandAugment (Cubuk et al., 2020, "RandAugment: Practical automated data augmentation with a reduced
search space") applies N random ops at magnitude M; timm's ``rand-m9-mstd0.5`` draws M per op from
N(9, 0.5). timm draws from Python's ``random`` and NumPy's global RNG and cannot take a generator
(nor can torchvision's ``v2.RandAugment``: it calls ``torch.randint`` on the global RNG), so it
runs inside :func:`kdcache.seeding.forked_global_rng` seeded with the sample seed: replayable, and
the caller's RNG states are restored afterwards. Not thread-safe (global state): use processes
(DataLoader workers), not threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.augment.base import Recipe, check_uint8_image, register_recipe
from kdcache.augment.geometric import PadCropFlip, RandomResizedCropFlip
from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError
from kdcache.seeding import forked_global_rng


@register_recipe
class RandAugmentRecipe(Recipe):
    """``base`` (``cifar`` pad-crop-flip or ``imagenet`` RRC-flip, default parameters) then
    ``timm.data.rand_augment_transform(config, hparams)`` on a PIL image.

    hparams follow timm's ``create_transform``: ``translate_const = int(0.45 * S)``, fill colour
    ``round(255 * mean)``, bilinear resampling (fixed, not timm's random choice).
    """

    name = "randaugment"

    def __init__(
        self, spec: DatasetSpec, config: str = "rand-m9-mstd0.5", base: str | None = None
    ) -> None:
        super().__init__(spec)
        self.config = str(config)
        self.base = base if base is not None else ("cifar" if spec.crop_pct == 1.0 else "imagenet")
        if self.base == "cifar":
            self._base: Recipe = PadCropFlip(spec)
        elif self.base == "imagenet":
            self._base = RandomResizedCropFlip(spec)
        else:
            raise ConfigError(f"recipe 'randaugment': base must be cifar or imagenet, got {base!r}")
        self._transform = self._build()

    def _build(self) -> Any:
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(min(255, round(255 * m)) for m in self.spec.mean)
        hparams = {
            "translate_const": int(self.spec.image_size * 0.45),
            # PIL wants an int fill colour for single-channel ("L") images.
            "img_mean": fill[0] if len(fill) == 1 else fill,
            "interpolation": Image.Resampling.BILINEAR,
        }
        try:
            return rand_augment_transform(self.config, hparams)
        except (AssertionError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"recipe 'randaugment': invalid timm config {self.config!r} ({exc!r}); "
                f"expected e.g. 'rand-m9-mstd0.5' or 'rand-m9-n2-mstd0.5'"
            ) from exc

    def params(self) -> dict[str, Any]:
        return {"config": self.config, "base": self.base}

    def __call__(self, image: torch.Tensor, *, sample_seed: int, view: int) -> torch.Tensor:
        from PIL import Image

        check_uint8_image(image, self.spec, self.name)
        cropped = self._base(image, sample_seed=sample_seed, view=view)  # [C, S, S]
        hwc = cropped.permute(1, 2, 0).numpy()  # [S, S, C]
        pil = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
        with forked_global_rng(sample_seed):
            pil = self._transform(pil)
        out = np.asarray(pil)  # [S, S] or [S, S, C]
        if out.ndim == 2:
            out = out[..., None]
        return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()  # [C, S, S]
