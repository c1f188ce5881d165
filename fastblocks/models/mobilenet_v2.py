"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, arXiv:1801.04381).

Inverted residual with linear bottleneck: expand 1x1 -> depthwise 3x3 -> project 1x1 with no
activation after the projection, ReLU6 elsewhere, a residual when the stride is 1 and the
widths match (Table 2 of the paper). Layout, names and shapes are torchvision's
``mobilenet_v2``, so its checkpoints load as they are.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._blocks import ConvNormActivation, init_weights, make_divisible
from ._registry import register_model
from .efficientnet import _check_knobs

__all__ = ["MobileNetV2", "InvertedResidual"]

_PAPER = "Sandler et al. 2018, MobileNetV2 (arXiv:1801.04381)"

# (expansion t, channels c, repeats n, first stride s): Table 2
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """``conv`` = [expand 1x1 + BN + ReLU6 (when expand_ratio != 1)], depthwise 3x3 + BN + ReLU6,
    project 1x1 conv, BN (torchvision's child indices).
    Shapes: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(in_channels, hidden, 1, activation_layer=nn.ReLU6))
        layers += [ConvNormActivation(hidden, hidden, 3, stride, groups=hidden,
                                      activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels
        self._is_cn = stride > 1

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier.

    Args:
        num_classes: classifier outputs.
        width_mult: multiplies every width (rounded to multiples of ``round_nearest``); the
            last conv keeps 1280 channels below 1.0 (paper, section 6.1).
        round_nearest: channel rounding (8 as the TF reference; 1 turns rounding off).
        dropout: before the classifier.

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits, H, W >= 1.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        _check_knobs(num_classes=num_classes, width_mult=width_mult, round_nearest=round_nearest,
                     dropout=dropout)
        cin = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers: list[nn.Module] = [ConvNormActivation(3, cin, 3, 2, activation_layer=nn.ReLU6)]
        for t, c, n, s in _SETTING:
            cout = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvNormActivation(cin, self.last_channel, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        self.input_size = (3, 224, 224)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v2", family="mobilenet", input_size=(3, 224, 224), paper=_PAPER)
def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 round_nearest: int = 8) -> MobileNetV2:
    """MobileNetV2 (torchvision's layout); ``width_mult`` 1.4, 1.0, 0.75, 0.5, 0.35 in the paper."""
    return MobileNetV2(num_classes, width_mult, round_nearest, dropout)
