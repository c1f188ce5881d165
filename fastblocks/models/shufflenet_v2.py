"""ShuffleNet V2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), from plain PyTorch modules.

Laid out exactly as ``torchvision.models.shufflenetv2`` (module names, parameter shapes,
default initialisation, forward), so torchvision's checkpoints load with ``load_state_dict``
as they are; tests/data/torchvision_keys/shufflenet_v2_*.json hold torchvision's keys and
shapes, which the tests compare against.

Registered: ``shufflenet_v2_x0_5``, ``shufflenet_v2_x1_0``, ``shufflenet_v2_x1_5``,
``shufflenet_v2_x2_0`` (the paper's Table 5 widths; 224x224 input).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["channel_shuffle", "ShuffleV2Unit", "ShuffleNetV2"]

PAPER = ("Ma, Zhang, Zheng, Sun. ShuffleNet V2: Practical Guidelines for Efficient CNN "
         "Architecture Design. ECCV 2018 (arXiv:1807.11164)")


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Channel shuffle (Zhang et al., ShuffleNet, 2018): view the C channels as a
    (groups, C // groups) grid, transpose it, flatten back, so output channel ``j * groups + g``
    is input channel ``g * (C // groups) + j``.

    Written in the plain reshape -> transpose -> reshape form of torchvision's
    ``shufflenetv2.channel_shuffle`` (and ``torch.nn.ChannelShuffle``'s semantics), which
    ``fastblocks.optimize`` recognises and replaces by a fused kernel.

    Shapes: (N, C, H, W) -> (N, C, H, W), any floating dtype; C must be divisible by ``groups``
    (the view raises otherwise).
    """
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class ShuffleV2Unit(nn.Module):
    """The ShuffleNet V2 unit (Ma et al. 2018, Fig. 3c/d); torchvision's ``InvertedResidual``.

    stride 1: channel split into halves; the second goes through 1x1 conv-BN-ReLU -> dw 3x3-BN
    -> 1x1 conv-BN-ReLU (``branch2``), the first is kept; concat, then channel shuffle (2 groups).
    stride 2: no split; ``branch1`` (dw 3x3 stride 2-BN -> 1x1 conv-BN-ReLU) and ``branch2``
    both see the whole input; concat doubles the channels; shuffle.

    Shapes: (N, inp, H, W) -> (N, oup, ceil(H / stride), ceil(W / stride)).

    Raises: ValueError if stride is not 1 or 2, oup is odd, or stride 1 with inp != oup.
    """

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if oup % 2:
            raise ValueError(f"oup must be even (two branches of oup // 2), got {oup}")
        if stride == 1 and inp != oup:
            raise ValueError(f"a stride-1 unit needs inp == oup, got inp={inp}, oup={oup}")
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, 1, 0, bias=False), nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            _depthwise(branch, stride), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, 1, 0, bias=False), nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 (Ma et al. 2018, Table 5): conv1 3x3/2 -> max pool 3x3/2 -> stages 2-4
    (first unit stride 2) -> conv5 1x1 -> global average pool -> fc.

    Args:
        stages_repeats: units per stage (3 ints; the paper's 4, 8, 4).
        stages_out_channels: output channels of conv1, stages 2-4 and conv5 (5 ints).
        num_classes: outputs of ``fc``.

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits; any H, W >= 1 (the net downsamples
    by 32 and pools globally).

    Raises: ValueError for lists of the wrong length or a non-positive ``num_classes``.
    """

    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError(f"stages_repeats must hold 3 ints, got {stages_repeats}")
        if len(stages_out_channels) != 5:
            raise ValueError(f"stages_out_channels must hold 5 ints, got {stages_out_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self._stage_out_channels = list(stages_out_channels)
        inp = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (repeats, oup) in enumerate(zip(stages_repeats, stages_out_channels[1:4]), 2):
            units = [ShuffleV2Unit(inp, oup, 2)] + [ShuffleV2Unit(oup, oup, 1)
                                                    for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            inp = oup
        out = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(inp, out, 1, 1, 0, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))
        self.fc = nn.Linear(out, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])  # global average pool
        return self.fc(x)


# Ma et al. 2018, Table 5 (the output channels of conv1, stages 2-4, conv5), as torchvision.
_WIDTHS = {
    "x0_5": [24, 48, 96, 192, 1024],
    "x1_0": [24, 116, 232, 464, 1024],
    "x1_5": [24, 176, 352, 704, 1024],
    "x2_0": [24, 244, 488, 976, 2048],
}


def _register(tag: str) -> None:
    @register_model(f"shufflenet_v2_{tag}", family="shufflenet", paper=PAPER)
    def build(num_classes: int = 1000) -> ShuffleNetV2:
        return ShuffleNetV2([4, 8, 4], _WIDTHS[tag], num_classes=num_classes)
    build.__doc__ = (f"ShuffleNet V2 {tag[1:].replace('_', '.')}x (Ma et al. 2018), torchvision's "
                     f"layout; (N, 3, 224, 224) -> (N, num_classes).")


for _tag in _WIDTHS:
    _register(_tag)
