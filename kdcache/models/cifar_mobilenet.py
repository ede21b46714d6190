"""MobileNetV2 (Sandler et al. 2018) for CIFAR, the CRD / mdistiller ``mobilenetv2.py`` layout.

The zoo's ``MobileNetV2`` is the reference's ``mobile_half``: expansion T = 6, width 0.5. Keys:
``conv1.{0,1}``, ``blocks.{s}.{i}.conv.{0,1,3,4,6,7}``, ``conv2.{0,1}``, ``classifier.0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.models._common import init_weights

# (expansion t, channels c, repeats n, first stride s); CIFAR keeps stages 1-2 at stride 1.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand + ReLU, 3x3 depthwise + ReLU, 1x1 linear projection; residual when shapes match.

    The expand conv is kept even at expansion 1 (the reference does), so keys stay ``conv.0..7``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs.

    Args:
        expansion: T, the expansion of every block after the first.
        width_mult: channel multiplier (0.5 in the KD zoo).
        num_classes: size of the logit vector.
        in_chans: input channels.
    """

    def __init__(
        self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100, in_chans: int = 3
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, channels, 3, stride=2)
        stages = []
        for t, c, n, s in _SETTING:
            out = int(c * width_mult)
            t = 1 if t == 1 else expansion
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_weights(self, linear="small_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, num_classes]``."""
        x = self.conv1(x)  # [B, 32w, H/2, W/2]
        for stage in self.blocks:
            x = stage(x)  # ends at [B, 320w, H/16, W/16]
        x = self.conv2(x)  # [B, 1280, H/16, W/16]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B, 1280]
        return self.classifier(x)


def MobileNetV2(num_classes: int = 100, in_chans: int = 3) -> CifarMobileNetV2:
    """The KD zoo's ``MobileNetV2`` (mdistiller ``mobile_half``: T = 6, width 0.5)."""
    return CifarMobileNetV2(6, 0.5, num_classes, in_chans)
