"""Pieces shared by the CIFAR zoo: weight initialisation and the ShuffleNet channel shuffle."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

LinearInit = Literal["default", "zero_bias", "small_normal"]


def init_weights(model: nn.Module, *, linear: LinearInit = "default") -> None:
    """Initialise ``model`` the way the CRD / mdistiller CIFAR zoo does.

    Convolutions get He-normal weights, ``std = sqrt(2 / (k_h * k_w * C_out))`` (He et al. 2015,
    fan-out mode: what the reference code's hand-written ``normal_(0, sqrt(2/n))`` computes), and
    zero bias; batch norms start as the identity (weight 1, bias 0). The classifier follows the
    family's original recipe: ``"default"`` keeps PyTorch's init (ResNets), ``"zero_bias"`` zeroes
    the bias (WRN), ``"small_normal"`` draws ``N(0, 0.01)`` weights, zero bias (VGG, MobileNetV2).
    Only the starting point of training depends on this, never the state-dict layout.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "small_normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (Zhang et al. 2018): ``[B, g*c, H, W] -> [B, c*g, H, W]``.

    Interleaves the channels of the ``groups`` groups so that the next grouped convolution sees
    every group; it has no parameters.
    """
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
