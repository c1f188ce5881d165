"""Cross Stage Partial networks: CSPResNet-50, CSPResNeXt-50, CSPDarknet-53 (Wang, Liao, Wu,
Chen, Hsieh & Yeh, "CSPNet: A New Backbone that can Enhance Learning Capability of CNN",
CVPR-W 2020, arXiv:1911.11929).

What is specific (the paper's Figure 2/3, "CSPDenseNet"/"CSPResNe(X)t"): each stage's base
layer (after the stage's stride-2 ``conv_down``) is expanded by a 1x1 ``conv_exp`` and *split*
along channels into two halves; one half (``xs``) bypasses the stage, the other (``xb``) goes
through the stage's residual blocks and a 1x1 ``conv_transition_b``; the two are concatenated
and *merged* by the 1x1 ``conv_transition`` ("fusion last"-style partial transition). Only
half of the feature map enters the costly blocks, which cuts computation and duplicate
gradient flow.

Layouts and widths follow timm's ``cspnet.py`` configurations of the same names (stage attribute
names too; the conv-BN children are torchvision-style ``0``/``1``/``2``) (stem 7x7/2 + max pool
for the ResNe(X)t variants, 3x3 for Darknet; (3, 3, 5, 2) blocks per stage for CSPResNe(X)t-50,
not ResNet-50's (3, 4, 6, 3), as in timm's configs; leaky ReLU with torch's default slope;
``cross_linear``: no activation after ``conv_exp`` in the ResNe(X)t variants; ``down_growth``
and a 2x expansion in Darknet's first stage), so the parameter counts are timm's: 21.62M, 20.57M
and 27.64M (timm's counts for cspresnet50, cspresnext50, cspdarknet53, as issue 18 quotes them).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ._blocks import ConvNormActivation
from ._registry import register_model

__all__ = ["CSPNet", "CrossStage"]

_PAPER = "Wang et al. 2020, CSPNet (arXiv:1911.11929)"
_act = partial(nn.LeakyReLU)  # timm's "leaky_relu": nn.LeakyReLU's default slope 0.01


def _cna(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
         act: bool = True) -> ConvNormActivation:
    return ConvNormActivation(cin, cout, k, stride, groups=groups,
                              activation_layer=_act if act else None)


class ResBottleneck(nn.Module):
    """ResNe(X)t bottleneck: 1x1 -> 3x3 (grouped) -> 1x1 (linear), + x, act.
    Shapes: (N, c, H, W) -> (N, c, H, W)."""

    def __init__(self, c: int, mid: int, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = _cna(c, mid, 1)
        self.conv2 = _cna(mid, mid, 3, groups=groups)
        self.conv3 = _cna(mid, c, 1, act=False)
        self.act3 = _act()

    def forward(self, x: Tensor) -> Tensor:
        return self.act3(self.conv3(self.conv2(self.conv1(x))) + x)


class DarkBlock(nn.Module):
    """Darknet residual block: 1x1 (mid) -> 3x3 (c), + x. Shapes: (N, c, H, W) -> same."""

    def __init__(self, c: int, mid: int, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = _cna(c, mid, 1)
        self.conv2 = _cna(mid, c, 3, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + x


class CrossStage(nn.Module):
    """One CSP stage (module docstring).

    cin -> [conv_down, 3x3 stride ``stride`` to ``down`` channels, when stride > 1] ->
    conv_exp (1x1, ``exp`` channels) -> split into xs, xb (exp / 2 each) ->
    xb: ``depth`` blocks of width ``block_out`` -> conv_transition_b (1x1, exp / 2) ->
    cat(xs, xb) -> conv_transition (1x1, cout).
    Shapes: (N, cin, H, W) -> (N, cout, H / stride, W / stride).
    """

    def __init__(self, cin: int, cout: int, stride: int, depth: int, block: str,
                 expand_ratio: float, bottle_ratio: float, block_ratio: float, groups: int,
                 down_growth: bool, cross_linear: bool) -> None:
        super().__init__()
        down = cout if down_growth else cin
        self.expand_chs = exp = int(round(cout * expand_ratio))
        block_out = int(round(cout * block_ratio))
        self.conv_down = _cna(cin, down, 3, stride, groups) if stride != 1 else nn.Identity()
        prev = down if stride != 1 else cin
        self.conv_exp = _cna(prev, exp, 1, act=not cross_linear)
        mid = int(round(block_out * bottle_ratio))
        block_cls = ResBottleneck if block == "bottle" else DarkBlock
        if exp // 2 != block_out:
            raise ValueError(f"CSP stage: blocks of width {block_out} cannot take the {exp // 2} "
                             "channels of the split")
        self.blocks = nn.Sequential(*(block_cls(block_out, mid, groups) for _ in range(depth)))
        self.conv_transition_b = _cna(block_out, exp // 2, 1)
        self.conv_transition = _cna(exp, cout, 1)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(bypass part xs, block part xb) of the expanded base layer."""
        return self.conv_exp(self.conv_down(x)).split(self.expand_chs // 2, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        xs, xb = self.split(x)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class CSPNet(nn.Module):
    """Stem -> CSP stages -> global average pool -> FC.
    Shapes: (N, 3, H, W) -> (N, num_classes); 256x256 native (timm's), any H, W >= 32."""

    def __init__(self, stem: nn.Sequential, stem_out: int, depths, widths, strides, block: str,
                 expand_ratios, bottle_ratios, block_ratios, groups: int = 1,
                 down_growth: bool = False, cross_linear: bool = False,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = stem
        stages, cin = [], stem_out
        for i, (d, w, s) in enumerate(zip(depths, widths, strides)):
            stages.append(CrossStage(cin, w, s, d, block, expand_ratios[i], bottle_ratios[i],
                                     block_ratios[i], groups, down_growth, cross_linear))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.global_pool(self.stages(self.stem(x))).flatten(1))


def _resnet_stem() -> nn.Sequential:
    return nn.Sequential(_cna(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))


@register_model("cspresnet50", family="cspnet", input_size=(3, 256, 256), paper=_PAPER)
def cspresnet50(num_classes: int = 1000) -> CSPNet:
    return CSPNet(_resnet_stem(), 64, (3, 3, 5, 2), (128, 256, 512, 1024), (1, 2, 2, 2), "bottle",
                  (2.0,) * 4, (0.5,) * 4, (1.0,) * 4, cross_linear=True, num_classes=num_classes)


@register_model("cspresnext50", family="cspnet", input_size=(3, 256, 256), paper=_PAPER)
def cspresnext50(num_classes: int = 1000) -> CSPNet:
    return CSPNet(_resnet_stem(), 64, (3, 3, 5, 2), (256, 512, 1024, 2048), (1, 2, 2, 2), "bottle",
                  (1.0,) * 4, (1.0,) * 4, (0.5,) * 4, groups=32, cross_linear=True,
                  num_classes=num_classes)


@register_model("cspdarknet53", family="cspnet", input_size=(3, 256, 256), paper=_PAPER)
def cspdarknet53(num_classes: int = 1000) -> CSPNet:
    return CSPNet(nn.Sequential(_cna(3, 32, 3, 1)), 32, (1, 2, 8, 8, 4), (64, 128, 256, 512, 1024),
                  (2,) * 5, "dark", (2.0,) + (1.0,) * 4, (0.5,) + (1.0,) * 4,
                  (1.0,) + (0.5,) * 4, down_growth=True, num_classes=num_classes)
