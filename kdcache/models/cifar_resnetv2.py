"""ImageNet-depth ResNets adapted to CIFAR (He et al. 2016), the CRD / mdistiller ``resnetv2.py``.

A 3x3 stride-1 stem (no max-pool) then four stages of 64/128/256/512 planes. Keys match
mdistiller: ``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv,bn}{1,2[,3]}``,
``layer*.{i}.shortcut.{0,1}``, ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.models._common import init_weights


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # An empty Sequential is the identity and adds no keys, exactly like the reference.
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetV2(nn.Module):
    """ResNet-18/50 for 32x32 inputs.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: size of the logit vector.
        in_chans: input channels.
        zero_init_residual: start every residual branch's last BN at 0 (Goyal et al. 2017).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 100,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, blocks, stride in zip(
            (64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True
        ):
            layers = []
            for i in range(blocks):
                layers.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]``."""
        x = F.relu(self.bn1(self.conv1(x)))  # [B, 64, H, W]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 512*e, H/8, W/8]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, 512*e]
        return self.linear(x)


def ResNet18(num_classes: int = 100, in_chans: int = 3, **kwargs: bool) -> CifarResNetV2:
    return CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, **kwargs)


def ResNet50(num_classes: int = 100, in_chans: int = 3, **kwargs: bool) -> CifarResNetV2:
    return CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, **kwargs)
