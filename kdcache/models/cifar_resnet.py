"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", §4.2) in the CRD / mdistiller layout.

Three stages of ``n = (depth - 2) / 6`` BasicBlocks on 32x32 inputs (widths 16/32/64 for
resnet8..110; 32->64/128/256 for the ``x4`` variants of Tian et al. 2020, "Contrastive
Representation Distillation"). State-dict keys match ``mdistiller/models/cifar/resnet.py``
exactly: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``,
``layer*.0.downsample.{0,1}``, ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.models._common import init_weights


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN
    (``downsample``) when the stride or width changes, the identity otherwise."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A CIFAR ResNet of ``depth = 6n + 2`` layers.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...).
        widths: channels of the stem and of the three stages, e.g. ``(16, 16, 32, 64)``.
        num_classes: size of the logit vector.
        in_chans: input channels (3 for CIFAR, 1 for grey digits).
        stem_bias: give the stem convolution a bias. The CRD layout has none; some public
            checkpoints (e.g. ``020118/resnet_cifar100``'s resnet56) carry ``conv1.bias``.
    """

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 100,
        in_chans: int = 3,
        stem_bias: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"a CIFAR ResNet needs depth = 6n + 2 >= 8, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, padding=1, bias=stem_bias)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]`` (H = W = 32 for CIFAR, any size >= 4)."""
        x = F.relu(self.bn1(self.conv1(x)))  # [B, w0, H, W]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B, w3, H/4, W/4]
        # Adaptive pooling (not the reference's AvgPool2d(8)) so that 8x8 digits work too.
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, w3]
        return self.fc(x)


_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(8, _SMALL, num_classes, in_chans, stem_bias)


def resnet14(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(14, _SMALL, num_classes, in_chans, stem_bias)


def resnet20(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(20, _SMALL, num_classes, in_chans, stem_bias)


def resnet32(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(32, _SMALL, num_classes, in_chans, stem_bias)


def resnet44(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(44, _SMALL, num_classes, in_chans, stem_bias)


def resnet56(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(56, _SMALL, num_classes, in_chans, stem_bias)


def resnet110(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(110, _SMALL, num_classes, in_chans, stem_bias)


def resnet8x4(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, in_chans, stem_bias)


def resnet32x4(num_classes: int = 100, in_chans: int = 3, stem_bias: bool = False) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, in_chans, stem_bias)
