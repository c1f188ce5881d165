"""VoVNet-39 and VoVNet-57 (Lee, Hwang, Lee, Bae & Park, "An Energy and GPU-Computation
Efficient Backbone Network for Real-Time Object Detection", CVPR-W 2019, arXiv:1904.09730).

What is specific: the one-shot aggregation (OSA) module. Five 3x3 conv-BN-ReLU layers are
chained (each feeds the next), and only once, at the end, the module's input and *all* five
outputs are concatenated and aggregated by a 1x1 conv-BN-ReLU (DenseNet concatenates at every
layer; OSA once, which keeps the input width of every layer constant and cuts memory traffic).
Table 1 of the paper: stem 3x3/2 (64), 3x3 (64), 3x3/2 (128); four stages of OSA modules with
128/160/192/224 channels inside and 256/512/768/1024 out, a 3x3/2 max pool before stages 3-5;
(1, 1, 2, 2) modules per stage for VoVNet-39, (1, 1, 4, 3) for VoVNet-57. 22,600,296 and
36,640,296 parameters with the 1000-class head: the 22.6M / 36.6M of timm's vovnet39a /
vovnet57a as issue 18's brief quotes them (the tests assert them).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._blocks import ConvNormActivation
from ._registry import register_model

__all__ = ["VoVNet", "OSAModule"]

_PAPER = "Lee et al. 2019, VoVNet (arXiv:1904.09730)"


class OSAModule(nn.Module):
    """One-shot aggregation: x -> conv_mid[0] -> ... -> conv_mid[L-1] (3x3, ``mid`` channels
    each); ``conv_concat`` (1x1) of cat(x, every conv_mid output).
    Shapes: (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin: int, mid: int, cout: int, layers: int = 5) -> None:
        super().__init__()
        self.conv_mid = nn.ModuleList(
            ConvNormActivation(cin if i == 0 else mid, mid, 3) for i in range(layers))
        self.conv_concat = ConvNormActivation(cin + layers * mid, cout, 1)

    def features(self, x: Tensor) -> list[Tensor]:
        """[x, out_1, ..., out_L]: what the module concatenates."""
        outs = [x]
        for conv in self.conv_mid:
            outs.append(conv(outs[-1]))
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_concat(torch.cat(self.features(x), 1))


class VoVNet(nn.Module):
    """Shapes: (N, 3, H, W) -> (N, num_classes); 224 native, any H, W >= 32."""

    def __init__(self, blocks_per_stage: tuple[int, int, int, int], num_classes: int = 1000,
                 mid=(128, 160, 192, 224), out=(256, 512, 768, 1024)) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvNormActivation(3, 64, 3, 2), ConvNormActivation(64, 64, 3),
                                  ConvNormActivation(64, 128, 3, 2))
        stages, cin = [], 128
        for i, (n, m, o) in enumerate(zip(blocks_per_stage, mid, out)):
            layers = [nn.MaxPool2d(3, 2, ceil_mode=True)] if i > 0 else []
            for _ in range(n):
                layers.append(OSAModule(cin, m, o))
                cin = o
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.global_pool(self.stages(self.stem(x))).flatten(1))


@register_model("vovnet39", family="vovnet", paper=_PAPER)
def vovnet39(num_classes: int = 1000) -> VoVNet:
    return VoVNet((1, 1, 2, 2), num_classes)


@register_model("vovnet57", family="vovnet", paper=_PAPER)
def vovnet57(num_classes: int = 1000) -> VoVNet:
    return VoVNet((1, 1, 4, 3), num_classes)
