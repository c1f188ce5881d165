"""LR-ASPP semantic segmentation on MobileNetV3-Large (Howard et al., "Searching for
MobileNetV3", ICCV 2019, arXiv:1905.02244, section 6.3).

Lite Reduced Atrous Spatial Pyramid Pooling: the backbone's last stage is dilated instead of
strided (output stride 16). On the 1/16 features a 1x1 conv-BN-ReLU branch is multiplied by a
global-pool -> 1x1 conv -> sigmoid gate, upsampled bilinearly to the 1/8 features, classified
by a 1x1 conv and added to a 1x1 classifier of those 1/8 features; the sum is upsampled to the
input size. Layout, names and shapes are torchvision's ``lraspp_mobilenet_v3_large``, so its
checkpoints load as they are.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .efficientnet import _check_knobs
from .mobilenet_v3 import MobileNetV3

__all__ = ["LRASPP", "LRASPPHead"]

_PAPER = "Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244), LR-ASPP"


class LRASPPHead(nn.Module):
    """The LR-ASPP head. Inputs: low (N, low_channels, H/8, W/8) and high
    (N, high_channels, H/16, W/16); output (N, num_classes, H/8, W/8) logits."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm2d(inter_channels), nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                   nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """MobileNetV3-Large (dilated) backbone + LR-ASPP head.

    ``backbone`` holds the feature layers up to the last one as children "0".."16" (the keys of
    torchvision's IntermediateLayerGetter); ``low_index`` is the last layer at output stride 8
    (C2), the final layer gives the output-stride-16 features (C5).

    Args:
        num_classes: output classes including background (21 for Pascal VOC, as torchvision).
        inter_channels: width of the head's high branch.
        width_mult, dropout: passed to the backbone's MobileNetV3 (its classifier is dropped).

    Shapes: (N, 3, H, W) float -> (N, num_classes, H, W) logits.
    """

    def __init__(self, num_classes: int = 21, inter_channels: int = 128,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        _check_knobs(num_classes=num_classes, inter_channels=inter_channels)
        features = MobileNetV3("large", width_mult=width_mult, dilated=True).features
        # stage starts, as torchvision's _lraspp_mobilenetv3: C2 (stride 8) is the 4th from last
        starts = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
        starts.append(len(features) - 1)
        self.low_index = starts[-4]
        self.backbone = nn.ModuleDict({str(i): m for i, m in enumerate(features)})
        self.classifier = LRASPPHead(features[self.low_index].out_channels,
                                     features[-1].out_channels, num_classes, inter_channels)
        self.input_size = (3, 520, 520)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        low = x
        for i, layer in enumerate(self.backbone.values()):
            x = layer(x)
            if i == self.low_index:
                low = x
        out = self.classifier(low, x)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


@register_model("lraspp_mobilenet_v3_large", family="mobilenet", input_size=(3, 520, 520),
                paper=_PAPER)
def lraspp_mobilenet_v3_large(num_classes: int = 21, inter_channels: int = 128,
                              width_mult: float = 1.0) -> LRASPP:
    """LR-ASPP with a dilated MobileNetV3-Large backbone (torchvision's layout; 520x520 is the
    resize of torchvision's VOC weights). Returns (N, num_classes, H, W)."""
    return LRASPP(num_classes, inter_channels, width_mult)
