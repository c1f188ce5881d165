"""ShuffleNet (v1) (Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018), from plain PyTorch modules.

The unit (the paper's Fig. 2b/c): 1x1 grouped conv -> BN -> ReLU -> channel shuffle ->
3x3 depthwise conv (stride 1 or 2) -> BN -> 1x1 grouped conv -> BN, then
- stride 1: add the input, ReLU;
- stride 2: concatenate a 3x3 average-pooled (stride 2) shortcut, ReLU (the concat widens the
  unit "with little extra computation cost").
No ReLU after the depthwise conv; the bottleneck is 1/4 of the unit's output channels; the first
1x1 conv of stage 2 is not grouped (its 24 input channels are too few, Sec. 3.3).

Channel counts are the paper's Table 1 (stages 2-4 output 144/288/576 for g=1, 200/400/800 for
g=2, 240/480/960 for g=3, 272/544/1088 for g=4, 384/768/1536 for g=8; conv1 24; 4/8/4 units).
``scale`` ("ShuffleNet s x", Sec. 4.1) multiplies every width; widths are rounded with
``make_divisible`` to a multiple of 4g (stages) and of g (conv1) so every grouped conv divides
evenly (identity at scale 1; at 0.5x g=3/g=8 this gives Megvii's released 12/120/240/480 and
16/192/384/768).

Module layout is our own (there is no torchvision ShuffleNet v1): ``conv1``, ``maxpool``,
``stage2``-``stage4`` of ``ShuffleV1Unit`` (``compress``, ``depthwise``, ``expand``), ``fc``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._blocks import init_weights, make_divisible
from ._registry import register_model
from .shufflenet_v2 import channel_shuffle

__all__ = ["ShuffleV1Unit", "ShuffleNetV1", "STAGE_OUT_CHANNELS"]

PAPER = ("Zhang, Zhou, Lin, Sun. ShuffleNet: An Extremely Efficient Convolutional Neural "
         "Network for Mobile Devices. CVPR 2018 (arXiv:1707.01083)")

# Zhang et al. 2018, Table 1: output channels of stages 2, 3, 4 for each number of groups.
STAGE_OUT_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
                      4: (272, 544, 1088), 8: (384, 768, 1536)}
STEM_CHANNELS = 24
STAGE_REPEATS = (4, 8, 4)


class ShuffleV1Unit(nn.Module):
    """One ShuffleNet unit (Zhang et al. 2018, Fig. 2b for stride 1, Fig. 2c for stride 2).

    Args:
        inp: input channels.
        oup: output channels (for stride 2: shortcut ``inp`` + branch ``oup - inp``).
        stride: 1 (residual add, needs inp == oup) or 2 (avg-pooled shortcut concatenated).
        groups: groups of both 1x1 convs and of the channel shuffle.
        group_first: False for the first unit of stage 2, whose first 1x1 conv is not grouped.

    Shapes: (N, inp, H, W) -> (N, oup, ceil(H / stride), ceil(W / stride)).

    Raises: ValueError for a stride other than 1/2, stride 1 with inp != oup, or channel counts
    the groups do not divide.
    """

    def __init__(self, inp: int, oup: int, stride: int, groups: int,
                 group_first: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and inp != oup:
            raise ValueError(f"a stride-1 unit needs inp == oup, got inp={inp}, oup={oup}")
        mid = oup // 4
        branch = oup - inp if stride == 2 else oup
        first_groups = groups if group_first else 1
        for what, c, g in (("inp", inp, first_groups), ("oup // 4", mid, groups),
                           ("branch output", branch, groups)):
            if c <= 0 or c % g:
                raise ValueError(f"{what} = {c} must be a positive multiple of groups={g}")
        self.stride = stride
        self.groups = groups
        self.compress = nn.Sequential(
            nn.Conv2d(inp, mid, 1, bias=False, groups=first_groups), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False, groups=mid), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(
            nn.Conv2d(mid, branch, 1, bias=False, groups=groups), nn.BatchNorm2d(branch))
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.compress(x)
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 1:
            return F.relu(out + x)
        return F.relu(torch.cat((self.shortcut(x), out), dim=1))


class ShuffleNetV1(nn.Module):
    """ShuffleNet (Zhang et al. 2018, Table 1): conv1 3x3/2 (24) -> max pool 3x3/2 ->
    stages 2-4 of 4/8/4 units (first stride 2) -> global average pool -> fc.

    Args:
        groups: 1, 2, 3, 4 or 8 (the paper's configurations).
        scale: width multiplier s ("ShuffleNet s x"), > 0.
        num_classes: outputs of ``fc``.

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits; native input 224x224, any H, W that
    survive the 32x downsampling.

    Raises: ValueError for other groups, a non-positive scale or num_classes.
    """

    def __init__(self, groups: int = 3, scale: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        if groups not in STAGE_OUT_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(STAGE_OUT_CHANNELS)}, got {groups}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        inp = make_divisible(STEM_CHANNELS * scale, groups)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for i, (repeats, base) in enumerate(zip(STAGE_REPEATS, STAGE_OUT_CHANNELS[groups]), 2):
            oup = make_divisible(base * scale, 4 * groups)
            units = [ShuffleV1Unit(inp, oup, 2, groups, group_first=i > 2)]
            units += [ShuffleV1Unit(oup, oup, 1, groups) for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            inp = oup
        self.fc = nn.Linear(inp, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean([2, 3]))  # global average pool


def _register(groups: int) -> None:
    @register_model(f"shufflenet_v1_g{groups}", family="shufflenet", paper=PAPER)
    def build(num_classes: int = 1000, scale: float = 1.0) -> ShuffleNetV1:
        return ShuffleNetV1(groups=groups, scale=scale, num_classes=num_classes)
    build.__doc__ = (f"ShuffleNet (v1) with g={groups} (Zhang et al. 2018, Table 1), width "
                     f"``scale``; (N, 3, 224, 224) -> (N, num_classes).")


for _g in STAGE_OUT_CHANNELS:
    _register(_g)
