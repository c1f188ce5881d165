"""Stacked Hourglass network for human pose estimation (Newell, Yang & Deng, "Stacked
Hourglass Networks for Human Pose Estimation", ECCV 2016, arXiv:1603.06937).

What is specific: the hourglass module (section 3.1, Figures 3-4): recursively, a residual
"upper" branch at the current resolution and a "lower" branch that max-pools 2x2, applies
residual modules (the next hourglass level inside), and upsamples by nearest neighbour; the
two are added. ``depth`` = 4 levels, 256 features throughout. Residual modules are the
paper's bottlenecks (BN-ReLU-1x1 (128) -> BN-ReLU-3x3 (128) -> BN-ReLU-1x1 (256), plus the
input, a 1x1 conv when widths differ). Stem (section 3.2): 7x7/2 conv (64), residual (128),
2x2 max pool, two residuals (-> 256): outputs at a quarter of the input resolution.

Intermediate supervision (section 3.4, Figure 4): every stack ends in a 1x1 conv-BN-ReLU and a
1x1 conv to ``num_classes`` heatmaps (one per keypoint; 16 for MPII); between stacks both are
projected by 1x1 convs and added back to the stack's input. ``forward`` returns a list of
``num_stacks`` heatmap tensors, each (N, num_classes, H / 4, W / 4), every one of them
supervised by the training loss; the last is the prediction. Inputs: 256x256 in the paper;
any H, W >= 63 here (the four 2x max pools at a quarter resolution floor odd sizes and the
nearest upsampling returns to the upper branch's size). 2 stacks by default (``num_stacks``;
the paper's final model has 8).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["StackedHourglass", "Hourglass", "PreActResidual"]


class PreActResidual(nn.Module):
    """The paper's residual module (Figure 4 left). Shapes: (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (x if self.skip is None else self.skip(x))


class Hourglass(nn.Module):
    """One hourglass of ``depth`` levels (module docstring), ``channels`` wide throughout.
    Shapes: (N, C, H, W) -> (N, C, H, W); H, W >= 2 ** depth."""

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.up1 = PreActResidual(channels, channels)
        self.low1 = PreActResidual(channels, channels)
        self.low2 = (Hourglass(depth - 1, channels) if depth > 1
                     else PreActResidual(channels, channels))
        self.low3 = PreActResidual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        # nearest 2x upsampling, to up1's size (so odd sizes, floored by the pool, come back)
        return self.up1(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class StackedHourglass(nn.Module):
    """Shapes: (N, 3, H, W) -> list of num_stacks tensors (N, num_classes, H // 4, W // 4)
    (H // 4 exactly for H, W multiples of 4; 256 native, any H, W >= 63)."""

    def __init__(self, num_classes: int = 16, num_stacks: int = 2, channels: int = 256,
                 depth: int = 4) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"num_stacks must be >= 1, got {num_stacks}")
        self.num_stacks = num_stacks
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.res1 = PreActResidual(64, 128)
        self.pool = nn.MaxPool2d(2, 2)
        self.res2 = PreActResidual(128, 128)
        self.res3 = PreActResidual(128, channels)
        self.hourglasses = nn.ModuleList(Hourglass(depth, channels) for _ in range(num_stacks))
        self.residuals = nn.ModuleList(PreActResidual(channels, channels) for _ in range(num_stacks))
        self.lins = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU())
            for _ in range(num_stacks))
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in range(num_stacks))
        self.merge_features = nn.ModuleList(
            nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1))
        self.merge_preds = nn.ModuleList(
            nn.Conv2d(num_classes, channels, 1) for _ in range(num_stacks - 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.res1(F.relu(self.bn1(self.conv1(x))))
        x = self.res3(self.res2(self.pool(x)))
        outs = []
        for i in range(self.num_stacks):
            y = self.lins[i](self.residuals[i](self.hourglasses[i](x)))
            heatmaps = self.heads[i](y)
            outs.append(heatmaps)
            if i < self.num_stacks - 1:
                x = x + self.merge_features[i](y) + self.merge_preds[i](heatmaps)
        return outs


@register_model("stacked_hourglass", family="hourglass", input_size=(3, 256, 256),
                paper="Newell et al. 2016, Stacked Hourglass Networks (arXiv:1603.06937)")
def stacked_hourglass(num_classes: int = 16, num_stacks: int = 2) -> StackedHourglass:
    return StackedHourglass(num_classes, num_stacks)
