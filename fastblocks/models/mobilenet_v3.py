"""MobileNetV3-Large and -Small (Howard et al., "Searching for MobileNetV3", ICCV 2019,
arXiv:1905.02244).

Blocks found by platform-aware NAS plus NetAdapt (Tables 1 and 2 of the paper): MobileNetV2's
inverted residual, some with squeeze-and-excitation gated by a hard sigmoid (squeeze width
``make_divisible(expanded / 4, 8)``), ReLU in the early layers and h-swish
``x * relu6(x + 3) / 6`` in the later ones, and an efficient last stage (pool before the
1280/1024-wide 1x1 "conv", here a Linear). Layout, names and shapes are torchvision's, so its
checkpoints load as they are.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ._blocks import ConvNormActivation, SqueezeExcitation, init_weights, make_divisible
from ._registry import register_model
from .efficientnet import _check_knobs

__all__ = ["MobileNetV3", "InvertedResidualV3", "mobilenet_v3_setting"]

_PAPER = "Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)"

# (in, kernel, expanded, out, SE, activation, stride): Table 1 (Large) and Table 2 (Small);
# the last three rows of each form the C4/C5 stage that reduced_tail halves and dilated dilates
_LARGE = ((16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
          (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
          (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
          (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
          (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
          (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
          (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
          (160, 5, 960, 160, True, "HS", 1))
_SMALL = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
          (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
          (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
          (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
          (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
          (96, 5, 576, 96, True, "HS", 1))
_LAST = {"large": 1280, "small": 1024}


def mobilenet_v3_setting(arch: str, width_mult: float = 1.0, reduced_tail: bool = False,
                         dilated: bool = False):
    """The scaled block table of ``arch`` ("large"/"small"): rows (in, kernel, expanded, out,
    use_se, use_hswish, stride, dilation), and the classifier's hidden width. ``reduced_tail``
    halves the last stage (the paper's detection/segmentation backbone), ``dilated`` gives it
    dilation 2 instead of stride 2 (output stride 16, for LR-ASPP)."""
    if arch not in ("large", "small"):
        raise ValueError(f"arch must be 'large' or 'small', got {arch!r}")
    table = _LARGE if arch == "large" else _SMALL
    div = 2 if reduced_tail else 1

    def ch(c: int) -> int:
        return make_divisible(c * width_mult, 8)

    rows = []
    for i, (cin, k, exp, cout, se, act, s) in enumerate(table):
        tail = len(table) - i  # 3, 2, 1 for the last stage
        if tail <= 3:  # the first block of the last stage keeps its input and expansion
            cout = cout // div
            if tail < 3:
                cin, exp = cin // div, exp // div
        rows.append((ch(cin), k, ch(exp), ch(cout), se, act == "HS", s,
                     2 if dilated and tail <= 3 else 1))
    return rows, ch(_LAST[arch] // div)


class InvertedResidualV3(nn.Module):
    """``block`` = [expand 1x1 (when expanded != in)], depthwise kxk, [SE with hard-sigmoid
    gate], project 1x1 without activation; residual when stride 1 and in == out.
    Shapes: (N, in, H, W) -> (N, out, ceil(H / s), ceil(W / s)), s = 1 when dilated."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool,
                 use_hs: bool, stride: int, dilation: int, norm_layer) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormActivation(cin, expanded, 1, norm_layer=norm_layer,
                                             activation_layer=act))
        layers.append(ConvNormActivation(expanded, expanded, kernel, 1 if dilation > 1 else stride,
                                         groups=expanded, norm_layer=norm_layer,
                                         activation_layer=act, dilation=dilation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(expanded, cout, 1, norm_layer=norm_layer,
                                         activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cout
        self._is_cn = stride > 1  # a stage boundary (torchvision's marker, used by LR-ASPP)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """MobileNetV3 classifier: h-swish stem 3x3/2 (16), the block table, 1x1 conv to 6x the last
    width, global pool, Linear -> h-swish -> dropout -> Linear.

    Args:
        arch: "large" or "small".
        num_classes: classifier outputs.
        width_mult: multiplies every width (rounded to multiples of 8).
        reduced_tail, dilated: see ``mobilenet_v3_setting``.
        dropout: before the last Linear.

    BatchNorm uses eps 1e-3 and momentum 0.01 (the TF reference's 0.99 decay), as torchvision.
    Shapes: (N, 3, H, W) float -> (N, num_classes) logits, H, W >= 1.
    """

    def __init__(self, arch: str = "large", num_classes: int = 1000, width_mult: float = 1.0,
                 reduced_tail: bool = False, dilated: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        _check_knobs(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
        rows, last_channel = mobilenet_v3_setting(arch, width_mult, reduced_tail, dilated)
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: list[nn.Module] = [ConvNormActivation(3, rows[0][0], 3, 2, norm_layer=norm,
                                                      activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(*row, norm_layer=norm) for row in rows]
        head = 6 * rows[-1][3]
        layers.append(ConvNormActivation(rows[-1][3], head, 1, norm_layer=norm,
                                         activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(head, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(last_channel, num_classes))
        self.input_size = (3, 224, 224)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v3_large", family="mobilenet", input_size=(3, 224, 224), paper=_PAPER)
def mobilenet_v3_large(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                       reduced_tail: bool = False, dilated: bool = False) -> MobileNetV3:
    """MobileNetV3-Large (Table 1), torchvision's layout."""
    return MobileNetV3("large", num_classes, width_mult, reduced_tail, dilated, dropout)


@register_model("mobilenet_v3_small", family="mobilenet", input_size=(3, 224, 224), paper=_PAPER)
def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                       reduced_tail: bool = False, dilated: bool = False) -> MobileNetV3:
    """MobileNetV3-Small (Table 2), torchvision's layout."""
    return MobileNetV3("small", num_classes, width_mult, reduced_tail, dilated, dropout)
