"""DenseNet-BC (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017,
arXiv:1608.06993): dense blocks whose layers see the concatenation of every earlier output;
each layer BN -> ReLU -> 1x1 conv (bn_size * k = 4k channels, the "B"ottleneck) -> BN ->
ReLU -> 3x3 conv (k channels, the growth rate); transitions BN -> ReLU -> 1x1 conv halving the
channels ("C"ompression 0.5) -> 2x2 average pool. Names and shapes are torchvision's
(``densenet121`` ...), so its checkpoints load."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["DenseNet"]


class _DenseLayer(nn.Module):
    """Shapes: (N, num_input_features, H, W) -> (N, growth_rate, H, W)."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        out = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return F.dropout(out, self.drop_rate, self.training) if self.drop_rate > 0 else out


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(num_input_features + i * growth_rate,
                                                               growth_rate, bn_size, drop_rate))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """Args: growth_rate k, block_config (layers per block), num_init_features, bn_size (4),
    drop_rate, num_classes, compression (0.5).
    Shapes: (N, 3, H, W) -> (N, num_classes), H, W >= 32."""

    def __init__(self, growth_rate: int = 32, block_config=(6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0,
                 num_classes: int = 1000, compression: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        layers = [("conv0", nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False)),
                  ("norm0", nn.BatchNorm2d(num_init_features)), ("relu0", nn.ReLU(inplace=True)),
                  ("pool0", nn.MaxPool2d(3, 2, 1))]
        self.features = nn.Sequential()
        for n, m in layers:
            self.features.add_module(n, m)
        c = num_init_features
        for i, n in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(n, c, bn_size, growth_rate, drop_rate))
            c += n * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(c, int(c * compression)))
                c = int(c * compression)
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


_CFG = {"densenet121": (32, (6, 12, 24, 16), 64), "densenet169": (32, (6, 12, 32, 32), 64),
        "densenet201": (32, (6, 12, 48, 32), 64), "densenet161": (48, (6, 12, 36, 24), 96)}

for _name, (_k, _blocks, _init) in _CFG.items():
    register_model(_name, family="densenet", paper="Huang et al. 2017, DenseNet (arXiv:1608.06993)")(
        lambda num_classes=1000, drop_rate=0.0, _k=_k, _b=_blocks, _i=_init:
        DenseNet(_k, _b, _i, drop_rate=drop_rate, num_classes=num_classes))
