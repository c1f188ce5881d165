"""The early classics: LeNet-5 (LeCun et al., "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 1998), AlexNet (Krizhevsky, Sutskever & Hinton, "ImageNet
Classification with Deep Convolutional Neural Networks", NIPS 2012), ZFNet (Zeiler & Fergus,
"Visualizing and Understanding Convolutional Networks", ECCV 2014) and Network in Network
(Lin, Chen & Yan, ICLR 2014, arXiv:1312.4400).

- LeNet-5: conv 5x5 -> subsampling (2x2 average pool) -> tanh, twice, then the 120-84-10 MLP
  (tanh) on 32x32 inputs (C3's partial connection table is replaced by full connections, as
  in most reimplementations).
- AlexNet: 11x11/4 conv1, ReLU, local response normalisation (size 5, alpha 1e-4, beta
  0.75, k 2) after conv1 and conv2, overlapping 3x3/2 max pools, dropout 0.5 in the
  4096-4096 head; 227x227 input. conv2, conv4 and conv5 are grouped in two, as the paper's two
  GPU towers were connected only at conv3 and the FC layers: 60,965,224 parameters (the
  paper's "60 million").
- ZFNet: AlexNet with a 7x7/2 conv1 (and 3x3/2 conv2 stride), 224x224 input.
- NiN: mlpconv blocks (a conv followed by two 1x1 convs, ReLU after each), max pools with
  dropout between them, global average pooling over the last block's num_classes maps instead
  of FC layers.
"""
from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model

__all__ = ["LeNet5", "AlexNet", "NiN"]


class LeNet5(nn.Module):
    """Shapes: (N, 1, 32, 32) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.AvgPool2d(2), nn.Tanh(),
            nn.Conv2d(6, 16, 5), nn.AvgPool2d(2), nn.Tanh(),
            nn.Conv2d(16, 120, 5), nn.Tanh())
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class AlexNet(nn.Module):
    """AlexNet (``conv1=(11, 4)``, two towers) or ZFNet (``conv1=(7, 2)``, one tower).
    Shapes: (N, 3, 227, 227) (ZFNet 224) -> (N, num_classes); any H, W >= 63 runs (adaptive
    6x6 pooling before the head)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, conv1=(11, 4), conv2_stride=1,
                 lrn: bool = True, towers: int = 2) -> None:
        super().__init__()
        k1, s1 = conv1
        norm = (lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)) if lrn else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, k1, s1, 1 if k1 == 7 else 0), nn.ReLU(inplace=True), norm(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, conv2_stride, 2 if conv2_stride == 1 else 0, groups=towers),
            nn.ReLU(inplace=True),
            norm(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=towers), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=towers), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class NiN(nn.Module):
    """Network in Network for 32x32 images (the paper's CIFAR-10 net: mlpconv widths 192/160/96,
    192/192/192, 192/192/num_classes).
    Shapes: (N, 3, 32, 32) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()

        def mlpconv(cin, c, k, pad, out=None):
            out = out or c
            return [nn.Conv2d(cin, c, k, padding=pad), nn.ReLU(inplace=True),
                    nn.Conv2d(c, c if out == c else 192, 1), nn.ReLU(inplace=True),
                    nn.Conv2d(c if out == c else 192, out, 1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(
            *mlpconv(3, 192, 5, 2, 96), nn.MaxPool2d(3, 2, 1), nn.Dropout(dropout),
            *mlpconv(96, 192, 5, 2), nn.AvgPool2d(3, 2, 1), nn.Dropout(dropout),
            *mlpconv(192, 192, 3, 1, num_classes), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)


register_model("lenet5", family="classic", input_size=(1, 32, 32),
               paper="LeCun et al. 1998, LeNet-5")(lambda num_classes=10: LeNet5(num_classes))
register_model("alexnet", family="classic", input_size=(3, 227, 227),
               paper="Krizhevsky et al. 2012, AlexNet")(
    lambda num_classes=1000, dropout=0.5: AlexNet(num_classes, dropout))
register_model("zfnet", family="classic", input_size=(3, 224, 224),
               paper="Zeiler & Fergus 2014, ZFNet (arXiv:1311.2901)")(
    lambda num_classes=1000, dropout=0.5: AlexNet(num_classes, dropout, conv1=(7, 2), conv2_stride=2,
                                                 towers=1))
register_model("nin", family="classic", input_size=(3, 32, 32),
               paper="Lin et al. 2014, Network in Network (arXiv:1312.4400)")(
    lambda num_classes=10, dropout=0.5: NiN(num_classes, dropout))
