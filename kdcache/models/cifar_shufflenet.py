"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, mdistiller's layouts.

``ShuffleV1`` is groups = 3, widths 240/480/960, blocks 4/8/4; ``ShuffleV2`` is net size 1,
widths 116/232/464 + a 1024 head, blocks 1+3/1+7/1+3. Both use a 1x1 stem and keep 32x32 until
the first stage, as the CRD code does. Keys: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{k}``,
(V2: ``conv2``, ``bn2``), ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.models._common import channel_shuffle

_STEM = 24  # stem width in both networks


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1, plus the shortcut.

    Stride 2 concatenates an avg-pooled copy of the input (so the unit's own branch only produces
    ``out_planes`` = stage width minus input width); stride 1 adds the input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The stem has only 24 channels, so the very first 1x1 conv is not grouped.
        self.first_groups = 1 if in_planes == _STEM else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            shortcut = F.avg_pool2d(x, 3, stride=2, padding=1)
            return F.relu(torch.cat([out, shortcut], 1))
        return F.relu(out + x)


class CifarShuffleNetV1(nn.Module):
    """ShuffleNet V1 for 32x32 inputs."""

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        in_planes = _STEM
        stages = []
        for width, blocks in zip(out_planes, num_blocks, strict=True):
            units = []
            for i in range(blocks):
                # The first unit concatenates its input, so its own branch is narrower.
                units.append(
                    ShuffleV1Unit(
                        in_planes,
                        width - in_planes if i == 0 else width,
                        2 if i == 0 else 1,
                        groups,
                    )
                )
                in_planes = width
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]``."""
        x = F.relu(self.bn1(self.conv1(x)))  # [B, 24, H, W]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B, 960, H/8, W/8]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, 960]
        return self.linear(x)


class ShuffleV2Unit(nn.Module):
    """Stride-1 unit: split the channels in half, transform one half (1x1, 3x3 dw, 1x1), concat,
    shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """Stride-2 unit: two branches on the whole input (left: 3x3 dw, 1x1; right: 1x1, 3x3 dw,
    1x1), each giving half the output channels, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(nn.Module):
    """ShuffleNet V2 for 32x32 inputs (``out_channels`` = three stages + the 1x1 head)."""

    def __init__(
        self,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        num_classes: int = 100,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        in_channels = _STEM
        stages = []
        for width, blocks in zip(out_channels[:3], num_blocks, strict=True):
            units: list[nn.Module] = [ShuffleV2DownUnit(in_channels, width)]
            units += [ShuffleV2Unit(width) for _ in range(blocks)]
            stages.append(nn.Sequential(*units))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]``."""
        x = F.relu(self.bn1(self.conv1(x)))  # [B, 24, H, W]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B, 464, H/8, W/8]
        x = F.relu(self.bn2(self.conv2(x)))  # [B, 1024, H/8, W/8]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, 1024]
        return self.linear(x)


def ShuffleV1(num_classes: int = 100, in_chans: int = 3) -> CifarShuffleNetV1:
    return CifarShuffleNetV1(num_classes=num_classes, in_chans=in_chans)


def ShuffleV2(num_classes: int = 100, in_chans: int = 3) -> CifarShuffleNetV2:
    return CifarShuffleNetV2(num_classes=num_classes, in_chans=in_chans)
