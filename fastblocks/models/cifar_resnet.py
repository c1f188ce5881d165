"""The CIFAR residual networks of the notes (32x32 inputs, three stages of 16k, 32k, 64k
channels): Wide ResNet 28-10 (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
arXiv:1605.07146) and ResNet-110 with stochastic depth (Huang et al., "Deep Networks with
Stochastic Depth", ECCV 2016, arXiv:1603.09382).

- WRN-d-k: pre-activation basic blocks ((d - 4) / 6 per stage) widened k times, dropout
  between the two convs of a block (0.3 in the paper's CIFAR runs), a 1x1 projection where
  the shape changes.
- ResNet-110 with stochastic depth: He et al.'s CIFAR ResNet (6n + 2 layers, n = 18; the
  shortcut subsamples and pads channels with zeros, "option A", no parameters). In training
  each residual branch is kept for a whole mini-batch with probability p_l = 1 - l / L *
  (1 - p_L) (linear decay, p_L = 0.5) and dropped otherwise; at test every branch runs,
  scaled by p_l.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .resnet import conv1x1, conv3x3

__all__ = ["WideResNet", "StochasticDepthResNet"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 (stride) -> dropout -> BN-ReLU-conv3x3, + shortcut.
    Shapes: (N, cin, H, W) -> (N, cout, H / stride, W / stride)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout)
        self.relu = nn.ReLU()
        self.shortcut = conv1x1(cin, cout, stride) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.dropout(self.relu(self.bn2(self.conv1(pre))))
        return self.conv2(out) + identity


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 images.
    Shapes: (N, 3, 32, 32) -> (N, num_classes) (any H, W >= 8 works: global pooling)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 dropout: float = 0.3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(3, widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            stages.append(nn.Sequential(*[WideBasicBlock(cin if j == 0 else w, w,
                                                         (1 if i == 0 else 2) if j == 0 else 1, dropout)
                                          for j in range(n)]))
            cin = w
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))


class StochasticDepthBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN residual branch kept with probability ``survival`` per
    mini-batch in training, scaled by it at test; ReLU after the sum.
    Shapes: (N, cin, H, W) -> (N, cout, H / stride, W / stride)."""

    def __init__(self, cin: int, cout: int, stride: int, survival: float) -> None:
        super().__init__()
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival must be in (0, 1], got {survival}")
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.stride, self.pad = stride, cout - cin
        self.survival = survival

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[..., ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def forward(self, x: Tensor) -> Tensor:
        identity = self._shortcut(x)
        if self.training and torch.rand(()) >= self.survival:
            return self.relu(identity)  # branch dropped for this mini-batch
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if not self.training:
            out = out * self.survival
        return self.relu(out + identity)


class StochasticDepthResNet(nn.Module):
    """He et al.'s CIFAR ResNet of 6n + 2 layers with stochastic depth (module docstring).

    Args: depth (110), num_classes (10), final_survival p_L (0.5; 1.0 turns dropping off).
    Shapes: (N, 3, 32, 32) -> (N, num_classes)."""

    def __init__(self, depth: int = 110, num_classes: int = 10, final_survival: float = 0.5) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        total = 3 * n
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        blocks, cin, l = [], 16, 0
        for i, w in enumerate((16, 32, 64)):
            for j in range(n):
                l += 1
                blocks.append(StochasticDepthBlock(cin, w, 2 if i > 0 and j == 0 else 1,
                                                   1.0 - l / total * (1.0 - final_survival)))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("wrn28_10", family="cifar_resnet", input_size=(3, 32, 32),
                paper="Zagoruyko & Komodakis 2016, Wide Residual Networks (arXiv:1605.07146)")
def wrn28_10(num_classes: int = 10, dropout: float = 0.3) -> WideResNet:
    return WideResNet(28, 10, num_classes, dropout)


@register_model("resnet110_sd", family="cifar_resnet", input_size=(3, 32, 32),
                paper="Huang et al. 2016, Deep Networks with Stochastic Depth (arXiv:1603.09382)")
def resnet110_sd(num_classes: int = 10, final_survival: float = 0.5) -> StochasticDepthResNet:
    return StochasticDepthResNet(110, num_classes, final_survival)
