"""EfficientNet-B0 ... B7 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019, arXiv:1905.11946).

B0 is a MnasNet-style search result built from MBConv blocks (the MobileNetV2 inverted residual
with squeeze-and-excitation and SiLU/"swish"); B1-B7 scale it with one compound coefficient
``phi``: depth ``alpha**phi``, width ``beta**phi``, resolution ``gamma**phi`` with
alpha = 1.2, beta = 1.1, gamma = 1.15 found by grid search so that alpha * beta**2 * gamma**2 ~ 2
(FLOPs double per unit of phi). The released B1-B7 use rounded coefficients (the paper's
Table / the TF reference's ``efficientnet_params``), which are what the registered names build,
matching torchvision's ``efficientnet_b*`` module for module so its checkpoints load as they are.
``efficientnet_from_phi`` builds a network straight from the formula.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from ._blocks import ConvNormActivation, SqueezeExcitation, make_divisible
from ._registry import register_model

__all__ = ["StochasticDepth", "MBConv", "EfficientNet", "compound_scaling",
           "efficientnet_from_phi", "EFFICIENTNET_PARAMS"]

_PAPER = "Tan & Le 2019, EfficientNet (arXiv:1905.11946)"

# (expand ratio, kernel, stride, in channels, out channels, layers): Table 1 of the paper, B0
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
             (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
             (6, 3, 1, 192, 320, 1))

# name: (width multiplier, depth multiplier, resolution, dropout): the TF reference's
# efficientnet_params (tensorflow/tpu models/official/efficientnet/efficientnet_builder.py),
# as torchvision's efficientnet_b0..b7
EFFICIENTNET_PARAMS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}


class StochasticDepth(nn.Module):
    """Stochastic depth on a residual branch (Huang et al., "Deep Networks with Stochastic
    Depth", 2016), torchvision.ops.StochasticDepth's semantics: in training, each sample
    ("row") or the whole batch ("batch") is zeroed with probability ``p`` and the survivors
    scaled by 1 / (1 - p); identity in eval mode or when p == 0.

    Shapes: (N, ...) -> (N, ...), any floating dtype. Raises ValueError for p outside [0, 1] or
    an unknown mode.
    """

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"stochastic depth probability p must be in [0, 1], got {p}")
        if mode not in ("row", "batch"):
            raise ValueError(f"mode must be 'row' or 'batch', got {mode!r}")
        self.p, self.mode = p, mode

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2's block with optional SE): expand 1x1 -> depthwise
    kxk (stride) -> SE -> project 1x1 without activation, residual (through stochastic depth)
    when stride 1 and in == out. The expand conv is left out when expand_ratio is 1.

    Children as torchvision's MBConv: ``block`` (Sequential) and ``stochastic_depth``.
    Shapes: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: float, stochastic_depth_prob: float,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[..., nn.Module] = nn.SiLU,
                 se_ratio: float | None = 0.25) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded, 1, norm_layer=norm_layer,
                                             activation_layer=activation_layer))
        layers.append(ConvNormActivation(expanded, expanded, kernel_size, stride, groups=expanded,
                                         norm_layer=norm_layer, activation_layer=activation_layer))
        if se_ratio:
            # squeeze width from the block's *input* channels, as the TF reference
            squeeze = max(1, int(in_channels * se_ratio))
            layers.append(SqueezeExcitation(expanded, squeeze,
                                            activation=partial(activation_layer, inplace=True)))
        layers.append(ConvNormActivation(expanded, out_channels, 1, norm_layer=norm_layer,
                                         activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNet(nn.Module):
    """EfficientNet classifier: stem 3x3/2 conv, MBConv stages, 1x1 head conv, global average
    pool, dropout, linear.

    Args:
        stages: rows (expand ratio, kernel, stride, in, out, layers), already scaled.
        stem_channels / head_channels: widths of the stem and head convs.
        dropout: dropout before the classifier.
        stochastic_depth_prob: drop probability of the last block; block i of n drops with
            ``stochastic_depth_prob * i / n`` (the TF reference's linear rule).
        num_classes: classifier outputs.
        norm_layer, activation_layer, se_ratio: per-block choices (EfficientNet-Lite passes
            ReLU6 and no SE).
        input_size: native (3, H, W), kept as ``model.input_size``.

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits, any H, W >= 1.
    """

    def __init__(self, stages, stem_channels: int, head_channels: int, dropout: float,
                 stochastic_depth_prob: float = 0.2, num_classes: int = 1000,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[..., nn.Module] = nn.SiLU,
                 se_ratio: float | None = 0.25, input_size=(3, 224, 224)) -> None:
        super().__init__()
        _check_knobs(num_classes=num_classes, dropout=dropout,
                     stochastic_depth_prob=stochastic_depth_prob)
        layers: list[nn.Module] = [ConvNormActivation(3, stem_channels, 3, 2, norm_layer=norm_layer,
                                                      activation_layer=activation_layer)]
        total = sum(row[5] for row in stages)
        index = 0
        for expand, kernel, stride, cin, cout, n in stages:
            stage = []
            for i in range(n):
                p = stochastic_depth_prob * index / total
                stage.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1,
                                    expand, p, norm_layer, activation_layer, se_ratio))
                index += 1
            layers.append(nn.Sequential(*stage))
        layers.append(ConvNormActivation(stages[-1][4], head_channels, 1, norm_layer=norm_layer,
                                         activation_layer=activation_layer))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(head_channels, num_classes))
        self.input_size = tuple(input_size)
        _init_efficientnet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _init_efficientnet(model: nn.Module) -> None:
    """torchvision's EfficientNet init: conv kaiming-normal (fan_out), norms (1, 0), linear
    uniform(+-1/sqrt(out_features)) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def _check_knobs(**knobs) -> None:
    """ValueError naming the argument for knobs out of range (shared by the family files)."""
    for name, value in knobs.items():
        if name == "num_classes":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"num_classes must be a positive int, got {value!r}")
        elif name in ("dropout", "stochastic_depth_prob"):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def scaled_stages(width_mult: float, depth_mult: float, stages=B0_STAGES,
                  fixed_repeats: tuple[int, ...] = ()):
    """B0's stage table scaled: channels ``make_divisible(c * width_mult, 8)``, layers
    ``ceil(n * depth_mult)`` (the TF reference's round_filters / round_repeats); stages whose
    index is in ``fixed_repeats`` keep their layer count (EfficientNet-Lite)."""
    _check_knobs(width_mult=width_mult, depth_mult=depth_mult)
    out = []
    for i, (e, k, s, cin, cout, n) in enumerate(stages):
        reps = n if i in fixed_repeats else int(math.ceil(n * depth_mult))
        out.append((e, k, s, make_divisible(cin * width_mult, 8), make_divisible(cout * width_mult, 8),
                    reps))
    return tuple(out)


def compound_scaling(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
                     base_resolution: int = 224) -> tuple[float, float, int]:
    """The paper's compound scaling (Eq. 3): (depth multiplier alpha**phi, width multiplier
    beta**phi, resolution round(base_resolution * gamma**phi)). With the defaults
    alpha * beta**2 * gamma**2 = 1.92, so FLOPs grow about 2**phi."""
    if not isinstance(phi, (int, float)) or phi < 0:
        raise ValueError(f"phi must be a number >= 0, got {phi!r}")
    return alpha ** phi, beta ** phi, int(round(base_resolution * gamma ** phi))


def efficientnet_from_phi(phi: float, *, num_classes: int = 1000, dropout: float | None = None,
                          stochastic_depth_prob: float = 0.2, alpha: float = 1.2,
                          beta: float = 1.1, gamma: float = 1.15) -> EfficientNet:
    """EfficientNet scaled from B0 by ``compound_scaling(phi, alpha, beta, gamma)``; dropout
    defaults to the paper's linear ramp from 0.2 (B0) to 0.5 (B7), ``0.2 + 0.3 * min(phi, 7) / 7``.
    ``phi=0`` is exactly B0. The released B1-B7 round these coefficients: use
    ``create_model("efficientnet_bN")`` for their checkpoints."""
    depth, width, res = compound_scaling(phi, alpha, beta, gamma)
    if dropout is None:
        dropout = 0.2 + 0.3 * min(phi, 7) / 7
    return _build(width, depth, res, dropout, num_classes, stochastic_depth_prob, nn.BatchNorm2d)


def _build(width_mult, depth_mult, resolution, dropout, num_classes, stochastic_depth_prob,
           norm_layer) -> EfficientNet:
    stages = scaled_stages(width_mult, depth_mult)
    return EfficientNet(stages, stages[0][3], 4 * stages[-1][4], dropout, stochastic_depth_prob,
                        num_classes, norm_layer, input_size=(3, resolution, resolution))


def _register(name: str) -> None:
    width, depth, res, default_dropout = EFFICIENTNET_PARAMS[name]
    # torchvision's B5-B7 use TF's BN (eps 1e-3, momentum 0.01), B0-B4 PyTorch's defaults: the
    # checkpoints were trained that way
    norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01) if name[-1] in "567" else nn.BatchNorm2d

    def builder(num_classes: int = 1000, dropout: float = default_dropout,
                stochastic_depth_prob: float = 0.2, width_mult: float = width,
                depth_mult: float = depth) -> EfficientNet:
        return _build(width_mult, depth_mult, res, dropout, num_classes, stochastic_depth_prob, norm)

    builder.__name__ = name
    builder.__doc__ = (f"EfficientNet-{name[-2:].upper()} ({_PAPER}): width {width}, depth {depth}, "
                       f"{res}x{res} input, dropout {default_dropout}; torchvision's layout.")
    register_model(name, family="efficientnet", input_size=(3, res, res), paper=_PAPER)(builder)


for _name in EFFICIENTNET_PARAMS:
    _register(_name)
