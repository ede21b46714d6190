"""Wide ResNets (Zagoruyko & Komodakis 2016, "Wide Residual Networks") in the CRD layout.

``WRN-d-k``: three groups of ``n = (d - 4) / 6`` pre-activation blocks of width 16k/32k/64k. Keys
match ``mdistiller/models/cifar/wrn.py``: ``conv1``,
``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}``, ``block*.layer.0.convShortcut`` (only where the
width changes), ``bn1``, ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.models._common import init_weights


class BasicBlock(nn.Module):
    """Pre-activation block: ``conv2(drop(relu(bn2(conv1(relu(bn1(x))))))) + shortcut``.

    When the width changes, the 1x1 ``convShortcut`` is applied to the *pre-activated* input
    ``relu(bn1(x))``, not to ``x``: that is what the reference code does, and the published WRN
    teachers were trained with it.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of blocks; the wrapper exists only so that keys read ``block1.layer.0...``."""

    def __init__(
        self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 inputs.

    Args:
        depth: 6n + 4 (16, 40, ...).
        widen_factor: k, the width multiplier.
        num_classes: size of the logit vector.
        in_chans: input channels.
        drop_rate: dropout between the two convs of each block (0 in the KD zoo).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"a Wide ResNet needs depth = 6n + 4 >= 10, got {depth}")
        n = (depth - 4) // 6
        ch = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        init_weights(self, linear="zero_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]``."""
        x = self.conv1(x)  # [B, 16, H, W]
        x = self.block3(self.block2(self.block1(x)))  # [B, 64k, H/4, W/4]
        x = F.relu(self.bn1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, 64k]
        return self.fc(x)


def wrn_16_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_chans)


def wrn_16_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_chans)


def wrn_40_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_chans)


def wrn_40_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_chans)
