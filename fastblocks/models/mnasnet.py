"""MnasNet (Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
CVPR 2019, arXiv:1807.11626).

``mnasnet1_0`` is torchvision's ``mnasnet1_0``: the searched B1 network of the TF reference
(tensorflow/tpu models/official/mnasnet, ``mnasnet_b1``): a 3x3/2 stem, a depthwise-separable
block, then six stacks of MBConv (expand 1x1 -> depthwise kxk -> project 1x1, ReLU, residual
when stride 1 and widths match; expansion 3 or 6, kernels 3 and 5 as the search chose), a
1280-wide 1x1 conv, global average pool, dropout, linear. Module for module torchvision's
layout (``layers`` as one flat Sequential), so its checkpoints load as they are. (The
paper's A1 variant adds squeeze-and-excitation to some stages; torchvision, and so this file,
builds B1, which has none.)
"""
from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model
from .efficientnet import _check_knobs

__all__ = ["MNASNet", "MNASNetBlock"]

_PAPER = "Tan et al. 2019, MnasNet (arXiv:1807.11626), B1 variant as torchvision"

# BatchNorm momentum of the TF reference (decay 0.9997), in PyTorch's convention
_BN_MOMENTUM = 1 - 0.9997

# (out-channel index into the depths, kernel, first stride, expansion, repeats)
_STACKS = ((2, 3, 2, 3, 3), (3, 5, 2, 3, 3), (4, 5, 2, 6, 3), (5, 3, 1, 6, 2), (6, 5, 2, 6, 4),
           (7, 3, 1, 6, 1))


def _round_to_multiple_of(val: float, divisor: int, round_up_bias: float = 0.9) -> int:
    """Round to a multiple of ``divisor``, rounding up unless that is within 10% of ``val``
    (the reference's rule for depths: (83, 8) -> 80, (84, 8) -> 88)."""
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


def mnasnet_depths(alpha: float) -> list[int]:
    """Channel widths of the stem, first block and six stacks scaled by ``alpha``."""
    return [_round_to_multiple_of(d * alpha, 8) for d in (32, 16, 24, 40, 80, 96, 192, 320)]


class MNASNetBlock(nn.Module):
    """MBConv without SE: ``layers`` = conv 1x1, BN, ReLU, depthwise kxk, BN, ReLU, conv 1x1, BN.
    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int,
                 expansion: int, bn_momentum: float = _BN_MOMENTUM) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        mid = in_ch * expansion
        self.apply_residual = in_ch == out_ch and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=bn_momentum), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch, momentum=bn_momentum))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) + x if self.apply_residual else self.layers(x)


class MNASNet(nn.Module):
    """MnasNet-B1 classifier with depth multiplier ``alpha`` (0.5, 0.75, 1.0, 1.3 in
    torchvision). Shapes: (N, 3, H, W) float -> (N, num_classes) logits, H, W >= 1."""

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        _check_knobs(alpha=alpha, num_classes=num_classes, dropout=dropout)
        d = mnasnet_depths(alpha)
        bn = _BN_MOMENTUM
        layers: list[nn.Module] = [
            nn.Conv2d(3, d[0], 3, 2, 1, bias=False), nn.BatchNorm2d(d[0], momentum=bn),
            nn.ReLU(inplace=True),
            nn.Conv2d(d[0], d[0], 3, 1, 1, groups=d[0], bias=False),
            nn.BatchNorm2d(d[0], momentum=bn), nn.ReLU(inplace=True),
            nn.Conv2d(d[0], d[1], 1, bias=False), nn.BatchNorm2d(d[1], momentum=bn)]
        cin = d[1]
        for idx, k, s, e, n in _STACKS:
            cout = d[idx]
            layers.append(nn.Sequential(*[MNASNetBlock(cin if i == 0 else cout, cout, k,
                                                       s if i == 0 else 1, e) for i in range(n)]))
            cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280, momentum=bn),
                   nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(1280, num_classes))
        self.alpha = alpha
        self.input_size = (3, 224, 224)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, mode="fan_out", nonlinearity="sigmoid")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.layers(x).mean([2, 3]))


@register_model("mnasnet1_0", family="mnasnet", input_size=(3, 224, 224), paper=_PAPER)
def mnasnet1_0(num_classes: int = 1000, dropout: float = 0.2, alpha: float = 1.0) -> MNASNet:
    """MnasNet-B1 1.0 (torchvision's mnasnet1_0 layout)."""
    return MNASNet(alpha, num_classes, dropout)
