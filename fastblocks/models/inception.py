"""Inception v2 and v3.

``inception_v3``: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
CVPR 2016, arXiv:1512.00567. What is specific: the 5x5 of Inception-v1 factorized into two 3x3
(Mixed_5*), the 7x7 factorized into 1x7 and 7x1 (Mixed_6b-6e, channels_7x7 = 128/160/160/192),
the 3x3 into 1x3 and 3x1 in the coarsest grid (Mixed_7b/7c, expanded filter banks), "efficient
grid reduction" (Mixed_6a, Mixed_7a: a stride-2 conv path in parallel with a stride-2 max pool,
concatenated, instead of pool-then-conv), one auxiliary classifier on the 17x17 grid (on
Mixed_6e). 299x299 input (torchvision's minimum 75x75 in eval; the auxiliary head needs its
17x17 grid to be at least 5x5, i.e. inputs of 107 or more in training). In training with
``aux_logits`` ``forward`` returns ``(logits, aux)`` (googlenet.py's convention), in eval
``logits``. Layout and names are torchvision's ``Inception3`` (so its checkpoints load; the
key/shape list is tests/data/torchvision_keys/inception_v3.json): 27,161,264 parameters with the
auxiliary head, 23,834,568 without (torchvision's Inception_V3_Weights meta; the issue's 23.8M).
The label smoothing of the paper's recipe is a loss, not part of the model.

``inception_v2``: BN-Inception, Ioffe & Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", ICML 2015, arXiv:1502.03167, section
4.2 and its appendix (Figure 5): the GoogLeNet layout with batch normalisation after every
convolution, each 5x5 replaced by two stacked 3x3 (the "double 3x3" path), average pooling in
most modules, stride-2 modules (3c, 4e) that concatenate a max pool instead of a 1x1 path, and
no auxiliary classifier here. 224x224 input; 11,285,224 parameters (our count; the paper gives
none, 11.2M in issue 18's brief).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .googlenet import BasicConv2d

__all__ = ["Inception3", "BNInception"]


class InceptionA(nn.Module):
    """35x35 module: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (pool_features).
    Shapes: (N, cin, H, W) -> (N, 224 + pool_features, H, W)."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: stride-2 3x3 | 1x1 -> 3x3 -> stride-2 3x3 | stride-2 max pool.
    Shapes: (N, cin, H, W) -> (N, 480 + cin, (H - 3) // 2 + 1, (W - 3) // 2 + 1)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 module with the 7x7 factorized into 1x7 and 7x1 (c7 channels inside).
    Shapes: (N, cin, H, W) -> (N, 768, H, W)."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> stride-2 3x3 | 1x1 -> 1x7 -> 7x1 -> stride-2 3x3 |
    stride-2 max pool. Shapes: (N, cin, H, W) -> (N, 512 + cin, (H - 3) // 2 + 1, ...)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 module with expanded filter banks (1x3 and 3x1 side by side).
    Shapes: (N, cin, H, W) -> (N, 2048, H, W)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """5x5/3 average pool -> 1x1 conv (128) -> 5x5 conv (768) -> global pool -> FC.
    Shapes: (N, cin, H, W) with H, W >= 5 -> (N, num_classes)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.conv1.stddev = 0.01  # torchvision's init std for this layer
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Inception3(nn.Module):
    """Shapes: (N, 3, 299, 299) -> (N, num_classes) in eval; ``(logits, aux)`` in training
    with aux_logits (module docstring)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=float(getattr(m, "stddev", 0.1)),
                                      a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor):
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        logits = self.fc(self.dropout(self.avgpool(x)).flatten(1))
        return (logits, aux) if aux is not None else logits


class BNInceptionModule(nn.Module):
    """One BN-Inception module (Ioffe & Szegedy 2015, Figure 5): [1x1 (n1x1)] | 1x1 (n3red)
    -> 3x3 (n3) | 1x1 (nd_red) -> 3x3 (nd) -> 3x3 (nd) | pool [-> 1x1 (pool_proj)].

    stride 2 drops the 1x1 path, strides the last conv of each 3x3 path and the (max) pool,
    and passes the pool through with no projection (pool_proj = 0).
    Shapes: (N, cin, H, W) -> (N, n1x1 + n3 + nd + (pool_proj or cin), H / stride, W / stride).
    """

    def __init__(self, cin: int, n1x1: int, n3red: int, n3: int, nd_red: int, nd: int,
                 pool: str, pool_proj: int, stride: int = 1) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, n1x1, kernel_size=1) if n1x1 else None
        self.branch3x3 = nn.Sequential(
            BasicConv2d(cin, n3red, kernel_size=1),
            BasicConv2d(n3red, n3, kernel_size=3, stride=stride, padding=1))
        self.branch3x3dbl = nn.Sequential(
            BasicConv2d(cin, nd_red, kernel_size=1),
            BasicConv2d(nd_red, nd, kernel_size=3, padding=1),
            BasicConv2d(nd, nd, kernel_size=3, stride=stride, padding=1))
        pool_layer = (nn.AvgPool2d(3, stride, 1, count_include_pad=False) if pool == "avg"
                      else nn.MaxPool2d(3, stride, 1))
        self.branch_pool = nn.Sequential(
            pool_layer, *([BasicConv2d(cin, pool_proj, kernel_size=1)] if pool_proj else []))

    def forward(self, x: Tensor) -> Tensor:
        outs = [] if self.branch1x1 is None else [self.branch1x1(x)]
        outs += [self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)]
        return torch.cat(outs, 1)


# BN-Inception's modules (Ioffe & Szegedy 2015, Figure 5): (cin, #1x1, #3x3 reduce, #3x3,
# double #3x3 reduce, double #3x3, pool, pool proj, stride).
_BN_INCEPTION = {
    "inception_3a": (192, 64, 64, 64, 64, 96, "avg", 32, 1),
    "inception_3b": (256, 64, 64, 96, 64, 96, "avg", 64, 1),
    "inception_3c": (320, 0, 128, 160, 64, 96, "max", 0, 2),
    "inception_4a": (576, 224, 64, 96, 96, 128, "avg", 128, 1),
    "inception_4b": (576, 192, 96, 128, 96, 128, "avg", 128, 1),
    "inception_4c": (576, 160, 128, 160, 128, 160, "avg", 128, 1),
    "inception_4d": (608, 96, 128, 192, 160, 192, "avg", 128, 1),
    "inception_4e": (608, 0, 128, 192, 192, 256, "max", 0, 2),
    "inception_5a": (1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    "inception_5b": (1024, 352, 192, 320, 192, 224, "max", 128, 1),
}


class BNInception(nn.Module):
    """Shapes: (N, 3, H, W) -> (N, num_classes); any H, W >= 32 runs (224 native)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2_reduce = BasicConv2d(64, 64, kernel_size=1)
        self.conv2 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.blocks = nn.Sequential(OrderedDict(
            (name, BNInceptionModule(*cfg)) for name, cfg in _BN_INCEPTION.items()))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv2(self.conv2_reduce(x)))
        x = self.blocks(x)
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


@register_model("inception_v3", family="inception", input_size=(3, 299, 299),
                paper="Szegedy et al. 2016, Rethinking the Inception Architecture (arXiv:1512.00567)")
def inception_v3(num_classes: int = 1000, aux_logits: bool = True, dropout: float = 0.5) -> Inception3:
    return Inception3(num_classes, aux_logits, dropout)


@register_model("inception_v2", family="inception",
                paper="Ioffe & Szegedy 2015, Batch Normalization / BN-Inception (arXiv:1502.03167)")
def inception_v2(num_classes: int = 1000, dropout: float = 0.0) -> BNInception:
    return BNInception(num_classes, dropout)
