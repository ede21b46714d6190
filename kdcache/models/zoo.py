"""The CIFAR knowledge-distillation zoo: name -> constructor, as mdistiller spells the names.

Every entry builds a model whose ``state_dict()`` has exactly the keys, order and shapes of
``cifar_model_dict`` in megvii-research/mdistiller (``mdistiller/models/cifar/__init__.py``), so
checkpoints from mdistiller / CRD (HobbitLong/RepDistiller) load strictly. The only behavioural
difference: ``forward`` returns logits, not ``(logits, features)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdcache.models import (
    cifar_mobilenet,
    cifar_resnet,
    cifar_resnetv2,
    cifar_shufflenet,
    cifar_vgg,
    cifar_wrn,
)

# Prefix of the zoo's names in timm's registry: several mdistiller names (vgg13, vgg16, ...) are
# also timm's own ImageNet models, and registering the same name would overwrite them.
TIMM_PREFIX = "cifar_"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo architecture.

    Attributes:
        name: the mdistiller spelling (``"resnet56"``, ``"MobileNetV2"``).
        builder: ``builder(num_classes=..., in_chans=..., **kwargs) -> nn.Module``.
        family: the module that defines it (``"cifar_resnet"``, ``"cifar_vgg"``, ...).
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str

    @property
    def timm_name(self) -> str:
        return TIMM_PREFIX + self.name


def _entries() -> dict[str, ZooEntry]:
    table: list[tuple[object, tuple[str, ...]]] = [
        (cifar_resnet, ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                        "resnet110", "resnet8x4", "resnet32x4")),
        (cifar_resnetv2, ("ResNet18", "ResNet50")),
        (cifar_wrn, ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")),
        (cifar_vgg, ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")),
        (cifar_mobilenet, ("MobileNetV2",)),
        (cifar_shufflenet, ("ShuffleV1", "ShuffleV2")),
    ]  # fmt: skip
    out: dict[str, ZooEntry] = {}
    for module, names in table:
        family = module.__name__.rsplit(".", 1)[-1]  # type: ignore[attr-defined]
        for name in names:
            out[name] = ZooEntry(name, getattr(module, name), family)
    return out


ZOO: dict[str, ZooEntry] = _entries()


def zoo_entry(name: str) -> ZooEntry | None:
    """The entry for an mdistiller name or its ``cifar_``-prefixed timm name; None if neither."""
    if name in ZOO:
        return ZOO[name]
    if name.startswith(TIMM_PREFIX):
        return ZOO.get(name[len(TIMM_PREFIX) :])
    return None


def has_stem_bias_option(name: str) -> bool:
    """True for the CIFAR ResNets, whose stem conv may carry a bias (``stem_bias=True``)."""
    entry = zoo_entry(name)
    return entry is not None and entry.family == "cifar_resnet"
