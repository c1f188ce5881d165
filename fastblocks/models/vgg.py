"""VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, arXiv:1409.1556): only 3x3 convolutions at stride 1 (padding 1) and
2x2 max pools, configurations A (11), B (13), D (16), E (19), with BatchNorm after every conv
in the ``_bn`` variants (as torchvision), and the 4096-4096 FC head with dropout 0.5.

Fully convolutional evaluation (paper, section 3.2): ``fully_convolutional()`` returns a
module computing the same function with the FC layers as convolutions (first FC as a 7x7
conv, the others 1x1), so it takes any input size of at least 224 and returns a class score
map; averaging that map is the paper's dense evaluation, and ``dense_evaluate`` averages the
class posteriors over several scales (multi-scale dense evaluation, section 4.2).
Names and shapes are torchvision's (``vgg16``, ``vgg16_bn`` ...), so its checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["VGG", "dense_evaluate"]

_PAPER = "Simonyan & Zisserman 2015, VGG (arXiv:1409.1556)"
_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _features(cfg, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(cin, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        cin = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG classifier.
    Shapes: (N, 3, H, W) -> (N, num_classes); H, W >= 32 (features pooled to 7x7 adaptively,
    as torchvision, so smaller inputs also run)."""

    def __init__(self, cfg, batch_norm: bool = False, num_classes: int = 1000,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.features = _features(cfg, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))

    def fully_convolutional(self) -> nn.Sequential:
        """The same function as a fully convolutional net (copies of the weights): features,
        then the FC head as conv 7x7 (512 -> 4096), conv 1x1, conv 1x1. Input (N, 3, H, W)
        with H, W >= 224; output (N, num_classes, (H/32) - 6, (W/32) - 6) class scores. At
        224x224 it equals ``forward`` (one score per class)."""
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        convs = []
        for i, fc in enumerate(fcs):
            k = 7 if i == 0 else 1
            conv = nn.Conv2d(fc.in_features // (k * k), fc.out_features, k).to(fc.weight)
            with torch.no_grad():
                conv.weight.copy_(fc.weight.view(conv.weight.shape))
                conv.bias.copy_(fc.bias)
            convs.append(conv)
        import copy
        head = [convs[0], nn.ReLU(True), nn.Dropout(self.classifier[2].p), convs[1], nn.ReLU(True),
                nn.Dropout(self.classifier[5].p), convs[2]]
        return nn.Sequential(copy.deepcopy(self.features), *head).train(self.training)


def dense_evaluate(model: VGG, x: Tensor, scales=(256, 384, 512)) -> Tensor:
    """Multi-scale dense evaluation (paper, section 3.2 / 4.2): the fully convolutional net on
    ``x`` resized to each smallest side in ``scales`` (each >= 224), class score maps averaged
    spatially into softmax posteriors, then averaged over the scales and horizontal flips.
    x: (N, 3, H, W) float; returns (N, num_classes) probabilities."""
    net = model.fully_convolutional().eval()
    probs = []
    with torch.no_grad():
        for s in scales:
            if s < 224:
                raise ValueError(f"scales must be >= 224, got {s}")
            h, w = x.shape[-2:]
            size = (s, round(w * s / h)) if h <= w else (round(h * s / w), s)
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for img in (xs, xs.flip(-1)):
                probs.append(net(img).mean((2, 3)).softmax(1))
    return torch.stack(probs).mean(0)


def _register(name: str, batch_norm: bool) -> None:
    cfg = _CFGS[name]

    def build(num_classes: int = 1000, dropout: float = 0.5) -> VGG:
        return VGG(cfg, batch_norm, num_classes, dropout)
    register_model(name + ("_bn" if batch_norm else ""), family="vgg", paper=_PAPER)(build)


for _n in _CFGS:
    _register(_n, False)
    _register(_n, True)
