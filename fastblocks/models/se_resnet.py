"""SE-ResNet-50 and SE-ResNeXt-50 (32x4d) (Hu, Shen, Sun, "Squeeze-and-Excitation Networks",
CVPR 2018; ResNeXt: Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for
Deep Neural Networks", CVPR 2017), from plain PyTorch modules.

A bottleneck (1x1 -> 3x3 -> 1x1, each conv -> BN, ReLU after the first two) whose output is
rescaled channel-wise by an SE block before the residual add: global average pool ->
FC (C -> C/16) -> ReLU -> FC (C/16 -> C) -> sigmoid -> scale (reduction r = 16; the FCs are
1x1 convs with biases). SE-ResNeXt's 3x3 conv has 32 groups of width 4 x planes / 64.

Laid out as Cadene's ``pretrainedmodels.models.senet`` (the port of the SENet authors' Caffe
weights that timm's ``legacy_seresnet50`` / ``legacy_seresnext50_32x4d`` also use), so those
checkpoints load with their keys: ``layer0`` (``conv1`` 7x7/2, ``bn1``, ``relu1``, ``pool``
3x3/2 with ceil_mode, as the Caffe model), ``layer1``-``layer4`` of bottlenecks (``conv1``-
``conv3``, ``bn1``-``bn3``, ``se_module.fc1``/``fc2``, ``downsample.0``/``.1``),
``last_linear``. As there, SE-ResNet-50 puts the stride on the first 1x1 conv (the Caffe
model's choice) and SE-ResNeXt-50 on the 3x3. The final pool is adaptive (Cadene's is a fixed
7x7 pool: the same at the native 224x224, and any input size works here).
"""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn

from ._blocks import SqueezeExcitation, init_weights
from ._registry import register_model

__all__ = ["SEBottleneck", "SENet"]

PAPER = ("Hu, Shen, Sun. Squeeze-and-Excitation Networks. CVPR 2018 (arXiv:1709.01507)")
RESNEXT = ("Xie, Girshick, Dollar, Tu, He. Aggregated Residual Transformations for Deep Neural "
           "Networks. CVPR 2017 (arXiv:1611.05431)")


class SEBottleneck(nn.Module):
    """Bottleneck with squeeze-and-excitation (Hu et al. 2018, Fig. 3 "SE-ResNet module").

    Args:
        inplanes: input channels.
        planes: bottleneck base width; the output has ``planes * 4`` channels.
        groups: groups of the 3x3 conv (1: SE-ResNet; 32: SE-ResNeXt 32x4d).
        base_width: ResNeXt's width per group at planes = 64 (4 for 32x4d); ignored when
            groups == 1, where the bottleneck is ``planes`` wide.
        reduction: SE reduction ratio r (16).
        stride: 1 or 2; on ``conv1`` for groups == 1, on ``conv2`` otherwise (Cadene's layout).
        downsample: the shortcut's conv-BN, or None for identity.

    Shapes: (N, inplanes, H, W) -> (N, planes * 4, ceil(H / stride), ceil(W / stride)).
    """
    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int = 1, base_width: int = 4,
                 reduction: int = 16, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        if groups == 1:
            width, stride1, stride2 = planes, stride, 1
        else:
            width, stride1, stride2 = math.floor(planes * base_width / 64) * groups, 1, stride
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride2, padding=1, groups=groups,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SqueezeExcitation(out, out // reduction)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + residual)


class SENet(nn.Module):
    """SE-ResNet / SE-ResNeXt (Hu et al. 2018, Table 1): 7x7/2 conv -> 3x3/2 max pool ->
    four stages of ``SEBottleneck`` (planes 64, 128, 256, 512; stages 2-4 stride 2) ->
    global average pool -> ``last_linear``.

    Args:
        layers: bottlenecks per stage (3, 4, 6, 3 for the 50-layer nets).
        groups, base_width, reduction: as SEBottleneck.
        num_classes: outputs of ``last_linear``.

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits; native 224x224.

    Raises: ValueError for ``layers`` of the wrong length or a non-positive num_classes.
    """

    def __init__(self, layers: list[int], groups: int = 1, base_width: int = 4,
                 reduction: int = 16, num_classes: int = 1000) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must hold 4 ints, got {layers}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.layer0 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu1", nn.ReLU(inplace=True)),
            # ceil_mode instead of padding=1, as the Caffe model that the weights come from
            ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            out = planes * SEBottleneck.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(out))
            stage = [SEBottleneck(inplanes, planes, groups, base_width, reduction, stride,
                                  downsample)]
            stage += [SEBottleneck(out, planes, groups, base_width, reduction)
                      for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = out
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(inplanes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer0(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.last_linear(self.avg_pool(x).flatten(1))


@register_model("se_resnet50", family="se_resnet", paper=PAPER)
def se_resnet50(num_classes: int = 1000, reduction: int = 16) -> SENet:
    """SE-ResNet-50 (Hu et al. 2018); (N, 3, 224, 224) -> (N, num_classes)."""
    return SENet([3, 4, 6, 3], groups=1, reduction=reduction, num_classes=num_classes)


@register_model("se_resnext50_32x4d", family="se_resnet", paper=f"{PAPER}; {RESNEXT}")
def se_resnext50_32x4d(num_classes: int = 1000, reduction: int = 16) -> SENet:
    """SE-ResNeXt-50 32x4d (Hu et al. 2018 on Xie et al. 2017's ResNeXt); (N, 3, 224, 224) ->
    (N, num_classes)."""
    return SENet([3, 4, 6, 3], groups=32, base_width=4, reduction=reduction,
                 num_classes=num_classes)
