"""IBN-Net (Pan, Luo, Shi & Tang, "Two at Once: Enhancing Learning and Generalization
Capacities via IBN-Net", ECCV 2018, arXiv:1807.09441), variant IBN-a on ResNet-50: in the
bottlenecks of stages 1-3, the first normalisation splits its channels: half (rounded down,
``ratio`` 0.5) go through InstanceNorm (affine), the rest through BatchNorm; stage 4 keeps
BatchNorm only. Layout otherwise torchvision's ResNet-50 (resnet.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model
from .resnet import Bottleneck, ResNet

__all__ = ["IBN", "ibn_resnet50_a"]


class IBN(nn.Module):
    """InstanceNorm on the first ``int(planes * ratio)`` channels, BatchNorm on the rest.
    Shapes: (N, planes, H, W) -> same."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], 1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], 1)


def ibn_resnet50_a(num_classes: int = 1000) -> ResNet:
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes)
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            block.bn1 = IBN(block.bn1.num_features)
    return model


register_model("ibn_resnet50_a", family="ibn_resnet",
               paper="Pan et al. 2018, IBN-Net (arXiv:1807.09441)")(ibn_resnet50_a)
