"""Pre-activation ResNet (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016,
arXiv:1603.05027): inside each residual branch BN -> ReLU -> conv, so the shortcut path is a
pure identity from block to block; a final BN -> ReLU before the pooling. ImageNet stem and
stage layout as ResNet (resnet.py); the projection shortcut reads the pre-activated input.
"""
from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model
from .resnet import conv1x1, conv3x3

__all__ = ["PreActResNet", "PreActBasicBlock", "PreActBottleneck"]

_PAPER = "He et al. 2016, Identity Mappings in Deep Residual Networks (arXiv:1603.05027)"


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, + shortcut.
    Shapes: (N, inplanes, H, W) -> (N, planes, H / stride, W / stride)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = (conv1x1(inplanes, planes, stride)
                         if stride != 1 or inplanes != planes else None)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4), + shortcut.
    Shapes: (N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = conv1x1(inplanes, out, stride) if stride != 1 or inplanes != out else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


class PreActResNet(nn.Module):
    """ImageNet pre-activation ResNet: conv 7x7/2 -> BN -> ReLU -> max pool, four stages of
    pre-activation blocks, BN -> ReLU, global average pool, linear.
    Shapes: (N, 3, H, W) -> (N, num_classes), H, W >= 32."""

    def __init__(self, block, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, 2 if i > 0 and j == 0 else 1))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_final = nn.BatchNorm2d(inplanes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(self.relu(self.bn_final(x))).flatten(1))


_LAYERS = {18: (PreActBasicBlock, [2, 2, 2, 2]), 34: (PreActBasicBlock, [3, 4, 6, 3]),
           50: (PreActBottleneck, [3, 4, 6, 3]), 101: (PreActBottleneck, [3, 4, 23, 3]),
           152: (PreActBottleneck, [3, 8, 36, 3])}


def _register(depth: int) -> None:
    block, layers = _LAYERS[depth]

    def build(num_classes: int = 1000) -> PreActResNet:
        return PreActResNet(block, layers, num_classes)
    register_model(f"preact_resnet{depth}", family="preact_resnet", paper=_PAPER)(build)


for _depth in _LAYERS:
    _register(_depth)
