"""VGG with batch norm (Simonyan & Zisserman 2015) for CIFAR, the CRD / mdistiller layout.

Five blocks of 3x3 conv + BN (+ ReLU between convs), max-pool after the first three, global
average pool, one linear layer. The zoo's ``vggN`` names are the reference's ``vggN_bn``
constructors. Keys: ``block{0..4}.{3j,3j+1}`` (conv with bias, BN) and ``classifier``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.models._common import init_weights

# Channels of each conv, block by block (the reference's cfg "S", "A", "B", "D", "E").
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_block(channels: tuple[int, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in channels:
        layers += [
            nn.Conv2d(in_channels, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        in_channels = c
    # The block ends at its last BN: the forward applies that ReLU, as the reference does.
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """VGG-BN for 32x32 inputs.

    Args:
        cfg: channels per conv, per block (see :data:`VGG_CONFIGS`).
        num_classes: size of the logit vector.
        in_chans: input channels.
    """

    def __init__(
        self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100, in_chans: int = 3
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        ins = (in_chans,) + tuple(block[-1] for block in cfg[:-1])
        self.block0 = _make_block(cfg[0], ins[0])
        self.block1 = _make_block(cfg[1], ins[1])
        self.block2 = _make_block(cfg[2], ins[2])
        self.block3 = _make_block(cfg[3], ins[3])
        self.block4 = _make_block(cfg[4], ins[4])
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        init_weights(self, linear="small_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]``."""
        h = x.shape[2]
        x = F.max_pool2d(F.relu(self.block0(x)), 2)  # [B, 64, H/2, W/2]
        x = F.max_pool2d(F.relu(self.block1(x)), 2)  # [B, 128, H/4, W/4]
        x = F.max_pool2d(F.relu(self.block2(x)), 2)  # [B, 256, H/8, W/8]
        x = F.relu(self.block3(x))
        if h == 64:  # the reference pools once more on 64x64 inputs (Tiny-ImageNet)
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))  # [B, 512, h, w]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, 512]
        return self.classifier(x)


def vgg8(num_classes: int = 100, in_chans: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS[8], num_classes, in_chans)


def vgg11(num_classes: int = 100, in_chans: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS[11], num_classes, in_chans)


def vgg13(num_classes: int = 100, in_chans: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS[13], num_classes, in_chans)


def vgg16(num_classes: int = 100, in_chans: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS[16], num_classes, in_chans)


def vgg19(num_classes: int = 100, in_chans: int = 3) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS[19], num_classes, in_chans)
