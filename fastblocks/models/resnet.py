"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385), its wide (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
arXiv:1605.07146) and aggregated (ResNeXt: Xie et al., "Aggregated Residual Transformations",
CVPR 2017, arXiv:1611.05431) forms.

Basic blocks (two 3x3) for the 18/34-layer nets, bottlenecks (1x1 -> 3x3 -> 1x1, stride on
the 3x3 as torchvision's "ResNet v1.5") for 50 and deeper; a projection shortcut (1x1 conv +
BN) where the shape changes. Cardinality is the grouped 3x3 of ResNeXt; width is the
bottleneck's inner width. Names and shapes are torchvision's (``resnet18`` ...,
``wide_resnet50_2``, ``resnext50_32x4d``, ``resnext101_64x4d``), so its checkpoints load.
"""
from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model

__all__ = ["ResNet", "BasicBlock", "Bottleneck"]


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, ReLU between and after the residual sum.
    Shapes: (N, inplanes, H, W) -> (N, planes, H / stride, W / stride)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, ``groups`` = cardinality) -> 1x1 expand (x4), each with BN;
    inner width ``planes * base_width / 64 * groups``.
    Shapes: (N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem + 3x3/2 max pool, four stages (64, 128, 256, 512 planes,
    strides 1, 2, 2, 2), global average pool, linear classifier.

    Args:
        block: BasicBlock or Bottleneck; layers: blocks per stage.
        num_classes: classifier outputs; groups, width_per_group: ResNeXt cardinality and
            bottleneck width (wide ResNets: width_per_group 128).
        zero_init_residual: the last BN of each block starts at 0 (Goyal et al. 2017).
    Shapes: (N, 3, H, W) -> (N, num_classes), H, W >= 32.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000, groups: int = 1, width_per_group: int = 64,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.inplanes = 64
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (Bottleneck, BasicBlock)):
                    nn.init.zeros_(last.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.forward_features(x)).flatten(1))


_PAPERS = {
    "resnet": "He et al. 2016, ResNet (arXiv:1512.03385)",
    "wide": "Zagoruyko & Komodakis 2016, Wide Residual Networks (arXiv:1605.07146)",
    "resnext": "Xie et al. 2017, ResNeXt (arXiv:1611.05431)",
}

_CONFIGS = {
    # name: (block, layers, groups, width_per_group, paper)
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64, "resnet"),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64, "resnet"),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64, "resnet"),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64, "resnet"),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64, "resnet"),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], 1, 128, "wide"),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4, "resnext"),
    "resnext101_32x4d": (Bottleneck, [3, 4, 23, 3], 32, 4, "resnext"),
    "resnext101_64x4d": (Bottleneck, [3, 4, 23, 3], 64, 4, "resnext"),
}


def _register(name: str, block, layers, groups, width, paper) -> None:
    def build(num_classes: int = 1000, **kwargs) -> ResNet:
        return ResNet(block, layers, num_classes, groups, width, **kwargs)
    build.__doc__ = f"{name}: {_PAPERS[paper]}."
    register_model(name, family="resnet", paper=_PAPERS[paper])(build)


for _name, _cfg in _CONFIGS.items():
    _register(_name, *_cfg)
