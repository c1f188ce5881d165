"""MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", 2017, arXiv:1704.04861).

A 3x3/2 stem conv and 13 depthwise-separable blocks (depthwise 3x3 -> BN -> ReLU, pointwise
1x1 -> BN -> ReLU; Table 1 of the paper), global average pooling and one linear classifier.
Two knobs trade accuracy for cost: the width multiplier ``alpha`` thins every layer
(channels ``max(8, int(c * alpha))`` as the TF-slim reference), the resolution multiplier
``rho`` scales the input (224 * rho: 224, 192, 160, 128 in the paper), kept as
``model.input_size``; the network itself is fully convolutional up to its global pool.
torchvision has no MobileNetV1; children are named like its MobileNetV2 (features, classifier).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._blocks import ConvNormActivation, init_weights
from ._registry import register_model
from .efficientnet import _check_knobs

__all__ = ["MobileNetV1", "DepthwiseSeparable"]

_PAPER = "Howard et al. 2017, MobileNets (arXiv:1704.04861)"

# (out channels, stride) of the 13 depthwise-separable blocks (Table 1)
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
           (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 conv -> BN -> ReLU ("0"), pointwise 1x1 conv -> BN -> ReLU ("1").
    Shapes: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(ConvNormActivation(in_channels, in_channels, 3, stride, groups=in_channels),
                         ConvNormActivation(in_channels, out_channels, 1))
        self.out_channels = out_channels


class MobileNetV1(nn.Module):
    """MobileNetV1 classifier.

    Args:
        num_classes: classifier outputs.
        alpha: width multiplier (> 0; 1.0, 0.75, 0.5, 0.25 in the paper).
        rho: resolution multiplier (> 0), recorded as ``input_size = (3, R, R)``,
            R = round(224 * rho); it changes no parameter.
        dropout: before the classifier (TF-slim trains with keep probability 0.999).

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits, H, W >= 1.
    Raises ValueError for a non-positive alpha or rho, or a dropout outside [0, 1].
    """

    def __init__(self, num_classes: int = 1000, alpha: float = 1.0, rho: float = 1.0,
                 dropout: float = 0.001) -> None:
        super().__init__()
        _check_knobs(num_classes=num_classes, alpha=alpha, rho=rho, dropout=dropout)

        def width(c: int) -> int:
            return max(8, int(c * alpha))

        layers: list[nn.Module] = [ConvNormActivation(3, width(32), 3, 2)]
        cin = width(32)
        for cout, stride in _BLOCKS:
            layers.append(DepthwiseSeparable(cin, width(cout), stride))
            cin = width(cout)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(cin, num_classes))
        self.alpha, self.rho = alpha, rho
        res = int(round(224 * rho))
        self.input_size = (3, res, res)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v1", family="mobilenet", input_size=(3, 224, 224), paper=_PAPER)
def mobilenet_v1(num_classes: int = 1000, alpha: float = 1.0, rho: float = 1.0,
                 dropout: float = 0.001) -> MobileNetV1:
    """MobileNetV1 1.0-224 by default; ``alpha`` / ``rho`` select the paper's other rows."""
    return MobileNetV1(num_classes, alpha, rho, dropout)
