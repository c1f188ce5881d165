"""Inception-v4, Inception-ResNet-v1 and Inception-ResNet-v2 (Szegedy, Ioffe, Vanhoucke &
Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
AAAI 2017, arXiv:1602.07261).

What is specific: a deep stem (Figure 3 for Inception-v4 and Inception-ResNet-v2, Figure 14 for
Inception-ResNet-v1) with parallel stride-2 conv / max-pool branches concatenated; uniform
Inception-A/B/C modules on the 35x35, 17x17 and 8x8 grids; Reduction-A (Figure 7, with the
(k, l, m, n) filter counts of Table 1) and Reduction-B modules between them. In the
Inception-ResNets every A/B/C module is residual: its branches are concatenated, projected by
a linear 1x1 convolution (with bias, no BN) back to the trunk width, *scaled* by a constant
(section 3.3: "scaling down the residuals before adding them ... 0.1 to 0.3" stabilises
training; 0.17 / 0.10 / 0.20 for the A / B / C blocks, as in the reference TF-slim and timm
code) and added to the trunk before the ReLU; the last C block has scale 1 and no ReLU.

Layouts and widths follow timm's ``inception_v4`` and ``inception_resnet_v2`` (from Cadene's
pretrainedmodels port of the TF-slim checkpoints; module names differ, so their checkpoints need
a key mapping), 42.68M and 55.84M parameters (timm's counts, as issue 18 quotes them).
Inception-ResNet-v1 has no reference classifier checkpoint; it is the paper's Figures 10-14 with
Reduction-A's (k, l, m, n) = (192, 192, 256, 384) and a 1792-wide head, 22.76M parameters (our
count; the paper gives no figure). Native input 299x299 (valid padding throughout the stem).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .googlenet import BasicConv2d

__all__ = ["InceptionV4", "InceptionResNetV1", "InceptionResNetV2", "ResidualInception"]

_PAPER = "Szegedy et al. 2017, Inception-v4 / Inception-ResNet (arXiv:1602.07261)"


def _conv(cin: int, cout: int, k, s: int = 1, p=0) -> BasicConv2d:
    return BasicConv2d(cin, cout, kernel_size=k, stride=s, padding=p)


def _avg_pool_branch(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), _conv(cin, cout, 1))


class Concat(nn.Module):
    """Runs its branches on the same input and concatenates them along channels
    (``branch0``, ``branch1``, ... as in the reference code)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(x) for b in self.children()], 1)


# --- Inception-v4 -----------------------------------------------------------------------

def _v4_stem() -> nn.Sequential:
    """Figure 3: (N, 3, 299, 299) -> (N, 384, 35, 35)."""
    return nn.Sequential(
        _conv(3, 32, 3, 2), _conv(32, 32, 3), _conv(32, 64, 3, 1, 1),
        Concat(nn.MaxPool2d(3, 2), _conv(64, 96, 3, 2)),                               # Mixed_3a
        Concat(nn.Sequential(_conv(160, 64, 1), _conv(64, 96, 3)),                     # Mixed_4a
               nn.Sequential(_conv(160, 64, 1), _conv(64, 64, (1, 7), 1, (0, 3)),
                             _conv(64, 64, (7, 1), 1, (3, 0)), _conv(64, 96, 3))),
        Concat(_conv(192, 192, 3, 2), nn.MaxPool2d(3, 2)))                             # Mixed_5a


def _v4_block_a() -> Concat:
    """Figure 4: 384 -> 384 channels on the 35x35 grid."""
    return Concat(_conv(384, 96, 1),
                  nn.Sequential(_conv(384, 64, 1), _conv(64, 96, 3, 1, 1)),
                  nn.Sequential(_conv(384, 64, 1), _conv(64, 96, 3, 1, 1), _conv(96, 96, 3, 1, 1)),
                  _avg_pool_branch(384, 96))


def _reduction_a(cin: int, k: int, l: int, m: int, n: int) -> Concat:  # noqa: E741 (paper's names)
    """Figure 7: 35x35 -> 17x17, cin -> n + m + cin channels."""
    return Concat(_conv(cin, n, 3, 2),
                  nn.Sequential(_conv(cin, k, 1), _conv(k, l, 3, 1, 1), _conv(l, m, 3, 2)),
                  nn.MaxPool2d(3, 2))


def _v4_block_b() -> Concat:
    """Figure 5: 1024 -> 1024 channels on the 17x17 grid (7x7 factorized into 1x7, 7x1)."""
    return Concat(_conv(1024, 384, 1),
                  nn.Sequential(_conv(1024, 192, 1), _conv(192, 224, (1, 7), 1, (0, 3)),
                                _conv(224, 256, (7, 1), 1, (3, 0))),
                  nn.Sequential(_conv(1024, 192, 1), _conv(192, 192, (7, 1), 1, (3, 0)),
                                _conv(192, 224, (1, 7), 1, (0, 3)),
                                _conv(224, 224, (7, 1), 1, (3, 0)),
                                _conv(224, 256, (1, 7), 1, (0, 3))),
                  _avg_pool_branch(1024, 128))


def _v4_reduction_b() -> Concat:
    """Figure 8: 17x17 -> 8x8, 1024 -> 1536 channels."""
    return Concat(nn.Sequential(_conv(1024, 192, 1), _conv(192, 192, 3, 2)),
                  nn.Sequential(_conv(1024, 256, 1), _conv(256, 256, (1, 7), 1, (0, 3)),
                                _conv(256, 320, (7, 1), 1, (3, 0)), _conv(320, 320, 3, 2)),
                  nn.MaxPool2d(3, 2))


class InceptionV4BlockC(nn.Module):
    """Figure 6: 1536 -> 1536 channels on the 8x8 grid; the 3x3s are 1x3 and 3x1 side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(1536, 256, 1)
        self.branch1_0 = _conv(1536, 384, 1)
        self.branch1_1a = _conv(384, 256, (1, 3), 1, (0, 1))
        self.branch1_1b = _conv(384, 256, (3, 1), 1, (1, 0))
        self.branch2_0 = _conv(1536, 384, 1)
        self.branch2_1 = _conv(384, 448, (3, 1), 1, (1, 0))
        self.branch2_2 = _conv(448, 512, (1, 3), 1, (0, 1))
        self.branch2_3a = _conv(512, 256, (1, 3), 1, (0, 1))
        self.branch2_3b = _conv(512, 256, (3, 1), 1, (1, 0))
        self.branch3 = _avg_pool_branch(1536, 256)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([self.branch0(x), self.branch1_1a(b1), self.branch1_1b(b1),
                          self.branch2_3a(b2), self.branch2_3b(b2), self.branch3(x)], 1)


class _Classifier(nn.Module):
    """Shared tail: ``features`` -> global average pool -> dropout -> ``last_linear``."""

    def _init_head(self, width: int, num_classes: int, dropout: float) -> None:
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.last_linear(self.dropout(self.global_pool(x).flatten(1)))


class InceptionV4(_Classifier):
    """Shapes: (N, 3, H, W) -> (N, num_classes); 299 native, any H, W >= 75."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_v4_stem(), *(_v4_block_a() for _ in range(4)),
            _reduction_a(384, 192, 224, 256, 384), *(_v4_block_b() for _ in range(7)),
            _v4_reduction_b(), *(InceptionV4BlockC() for _ in range(3)))
        self._init_head(1536, num_classes, dropout)


# --- Inception-ResNets ------------------------------------------------------------------

class ResidualInception(nn.Module):
    """An Inception-ResNet block: ``act(x + scale * conv2d(cat(branches(x))))``.

    ``conv2d`` is the linear 1x1 projection back to ``width`` channels (bias, no BN); ``scale``
    the residual scaling of section 3.3; ``activation=False`` for the network's last block.
    Shapes: (N, width, H, W) -> (N, width, H, W).
    """

    def __init__(self, branches: Concat, cat_channels: int, width: int, scale: float,
                 activation: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.branches = branches
        self.conv2d = nn.Conv2d(cat_channels, width, 1)
        self.act = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.scale * self.conv2d(self.branches(x)))


def _block35(width: int, c: tuple[int, int, int, int], scale: float) -> ResidualInception:
    """Inception-ResNet-A (Figures 10, 16): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3;
    c = (1x1 width, 3x3 path width, double-3x3 middle, double-3x3 out)."""
    a, b, d1, d2 = c
    return ResidualInception(Concat(
        _conv(width, a, 1),
        nn.Sequential(_conv(width, b, 1), _conv(b, b, 3, 1, 1)),
        nn.Sequential(_conv(width, b, 1), _conv(b, d1, 3, 1, 1), _conv(d1, d2, 3, 1, 1))),
        a + b + d2, width, scale)


def _block17(width: int, a: int, r: int, m: int, o: int, scale: float) -> ResidualInception:
    """Inception-ResNet-B (Figures 11, 17): 1x1 (a) | 1x1 (r) -> 1x7 (m) -> 7x1 (o)."""
    return ResidualInception(Concat(
        _conv(width, a, 1),
        nn.Sequential(_conv(width, r, 1), _conv(r, m, (1, 7), 1, (0, 3)),
                      _conv(m, o, (7, 1), 1, (3, 0)))), a + o, width, scale)


def _block8(width: int, a: int, m: int, o: int, scale: float, activation: bool = True):
    """Inception-ResNet-C (Figures 13, 19): 1x1 (a) | 1x1 (a) -> 1x3 (m) -> 3x1 (o)."""
    return ResidualInception(Concat(
        _conv(width, a, 1),
        nn.Sequential(_conv(width, a, 1), _conv(a, m, (1, 3), 1, (0, 1)),
                      _conv(m, o, (3, 1), 1, (1, 0)))), a + o, width, scale, activation)


class InceptionResNetV2(_Classifier):
    """Shapes: (N, 3, H, W) -> (N, num_classes); 299 native, any H, W >= 75.
    ``scales``: the residual scaling of the A, B and C blocks."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2,
                 scales: tuple[float, float, float] = (0.17, 0.10, 0.20)) -> None:
        super().__init__()
        sa, sb, sc = scales
        self.features = nn.Sequential(
            _conv(3, 32, 3, 2), _conv(32, 32, 3), _conv(32, 64, 3, 1, 1), nn.MaxPool2d(3, 2),
            _conv(64, 80, 1), _conv(80, 192, 3), nn.MaxPool2d(3, 2),
            Concat(_conv(192, 96, 1),                                                 # Mixed_5b
                   nn.Sequential(_conv(192, 48, 1), _conv(48, 64, 5, 1, 2)),
                   nn.Sequential(_conv(192, 64, 1), _conv(64, 96, 3, 1, 1), _conv(96, 96, 3, 1, 1)),
                   _avg_pool_branch(192, 64)),
            *(_block35(320, (32, 32, 48, 64), sa) for _ in range(10)),
            _reduction_a(320, 256, 256, 384, 384),                                    # Mixed_6a
            *(_block17(1088, 192, 128, 160, 192, sb) for _ in range(20)),
            Concat(nn.Sequential(_conv(1088, 256, 1), _conv(256, 384, 3, 2)),          # Mixed_7a
                   nn.Sequential(_conv(1088, 256, 1), _conv(256, 288, 3, 2)),
                   nn.Sequential(_conv(1088, 256, 1), _conv(256, 288, 3, 1, 1), _conv(288, 320, 3, 2)),
                   nn.MaxPool2d(3, 2)),
            *(_block8(2080, 192, 224, 256, sc) for _ in range(9)),
            _block8(2080, 192, 224, 256, 1.0, activation=False),
            _conv(2080, 1536, 1))
        self._init_head(1536, num_classes, dropout)


class InceptionResNetV1(_Classifier):
    """Shapes: (N, 3, H, W) -> (N, num_classes); 299 native, any H, W >= 75.
    ``scales``: the residual scaling of the A, B and C blocks."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2,
                 scales: tuple[float, float, float] = (0.17, 0.10, 0.20)) -> None:
        super().__init__()
        sa, sb, sc = scales
        self.features = nn.Sequential(                                                # Figure 14
            _conv(3, 32, 3, 2), _conv(32, 32, 3), _conv(32, 64, 3, 1, 1), nn.MaxPool2d(3, 2),
            _conv(64, 80, 1), _conv(80, 192, 3), _conv(192, 256, 3, 2),
            *(_block35(256, (32, 32, 32, 32), sa) for _ in range(5)),
            _reduction_a(256, 192, 192, 256, 384),
            *(_block17(896, 128, 128, 128, 128, sb) for _ in range(10)),
            Concat(nn.Sequential(_conv(896, 256, 1), _conv(256, 384, 3, 2)),           # Figure 12
                   nn.Sequential(_conv(896, 256, 1), _conv(256, 256, 3, 2)),
                   nn.Sequential(_conv(896, 256, 1), _conv(256, 256, 3, 1, 1), _conv(256, 256, 3, 2)),
                   nn.MaxPool2d(3, 2)),
            *(_block8(1792, 192, 192, 192, sc) for _ in range(4)),
            _block8(1792, 192, 192, 192, 1.0, activation=False))
        self._init_head(1792, num_classes, dropout)


@register_model("inception_v4", family="inception_v4", input_size=(3, 299, 299), paper=_PAPER)
def inception_v4(num_classes: int = 1000, dropout: float = 0.2) -> InceptionV4:
    return InceptionV4(num_classes, dropout)


@register_model("inception_resnet_v1", family="inception_v4", input_size=(3, 299, 299), paper=_PAPER)
def inception_resnet_v1(num_classes: int = 1000, dropout: float = 0.2,
                        scales=(0.17, 0.10, 0.20)) -> InceptionResNetV1:
    return InceptionResNetV1(num_classes, dropout, scales)


@register_model("inception_resnet_v2", family="inception_v4", input_size=(3, 299, 299), paper=_PAPER)
def inception_resnet_v2(num_classes: int = 1000, dropout: float = 0.2,
                        scales=(0.17, 0.10, 0.20)) -> InceptionResNetV2:
    return InceptionResNetV2(num_classes, dropout, scales)
