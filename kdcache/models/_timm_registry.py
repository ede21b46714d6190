"""Registers the CIFAR zoo in timm's model registry as ``cifar_<name>``.

After ``import kdcache.models``, ``timm.create_model("cifar_resnet56", num_classes=100)`` works and
``timm.list_models("cifar_*")`` lists the zoo. The prefix keeps timm's own ``vgg13``, ``vgg16``...
intact (timm overwrites a name registered twice). There are no downloadable weights: asking for
``pretrained=True`` is an error, never a download.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from kdcache.errors import WeightsError
from kdcache.models.zoo import ZOO, ZooEntry

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# timm reads a module-level ``default_cfgs`` when registering: it records each model's input size
# and normalisation (no url, so timm knows there is nothing to download).
default_cfgs = generate_default_cfgs(
    {
        entry.timm_name: {
            "num_classes": 100,
            "input_size": (3, 32, 32),
            "crop_pct": 1.0,
            "mean": CIFAR100_MEAN,
            "std": CIFAR100_STD,
        }
        for entry in ZOO.values()
    }
)

# timm passes these to every entrypoint; the zoo's constructors do not take them.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _make_entrypoint(entry: ZooEntry) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise WeightsError(
                f"{entry.timm_name} has no downloadable weights; build it without pretrained and "
                "load a checkpoint (kdcache: weights=PATH)"
            )
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        return entry.builder(**kwargs)

    # timm registers an entrypoint under its __name__ and files it under its module.
    entrypoint.__name__ = entrypoint.__qualname__ = entry.timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (
        f"CIFAR {entry.name} (mdistiller layout) from kdcache.models.{entry.family}."
    )
    return entrypoint


for _entry in ZOO.values():
    register_model(_make_entrypoint(_entry))
