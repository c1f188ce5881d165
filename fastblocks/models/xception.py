"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions",
CVPR 2017), from plain PyTorch modules.

Entry flow: conv 3x3/2 (32) -> conv 3x3 (64) -> three blocks of two separable convs and a
3x3/2 max pool (128, 256, 728) with 1x1/2 conv + BN shortcuts; middle flow: eight blocks of
three ReLU -> separable conv (728) -> BN with identity shortcuts; exit flow: a block of
separable convs 728 -> 1024 and a max pool with a 1x1/2 shortcut, separable convs 1536 and
2048 (each BN -> ReLU), global average pool, fc (the paper's Fig. 5). A separable conv is a
3x3 depthwise conv (``groups=in_channels``) then a 1x1 conv, without BN or activation between
them and without biases, as Keras' ``SeparableConv2D`` in the reference
``keras.applications.Xception`` (22,910,480 weights including BN's moving statistics).

Module names follow Cadene's ``pretrainedmodels`` / timm's ``legacy_xception`` port of the
Keras weights (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``block1``-``block12`` with ``skip``,
``skipbn``, ``rep``; ``conv3``, ``bn3``, ``conv4``, ``bn4``, ``fc``; a separable conv holds
``conv1`` (depthwise) and ``pointwise``). Like that port, the stride-2 max pools pad 1 on each
side where Keras' "same" pads one extra row at the bottom on even sizes.

Native input 299x299 (10x10 before the pool); the two unpadded stem convs need H, W >= 7.
"""
from __future__ import annotations

from torch import Tensor, nn

from ._blocks import init_weights
from ._registry import register_model

__all__ = ["SeparableConv2d", "XceptionBlock", "Xception"]

PAPER = ("Chollet. Xception: Deep Learning with Depthwise Separable Convolutions. CVPR 2017 "
         "(arXiv:1610.02357)")


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution: ``conv1`` = k x k conv with ``groups=in_channels``
    (one filter per channel), then ``pointwise`` = 1x1 conv mixing channels; no bias, nothing
    in between (Chollet 2017, Sec. 2; Keras ``SeparableConv2D(use_bias=False)``).

    Shapes: (N, in_channels, H, W) -> (N, out_channels, OH, OW) with the usual conv arithmetic
    of the depthwise conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                               groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


class XceptionBlock(nn.Module):
    """A residual block of ``reps`` (ReLU -> separable conv -> BN) (the first ReLU left out when
    not ``start_with_relu``), ending with a 3x3/2 max pool when ``stride`` is 2, plus a
    shortcut: identity when the shape is kept, else 1x1 conv (``stride``) -> BN.

    ``grow_first``: the first separable conv goes ``in -> out`` (entry and middle flow);
    otherwise the last does (the exit block, 728 -> 728 -> 1024).

    Shapes: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, reps: int, stride: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        widths = [in_channels] + ([out_channels] * reps if grow_first
                                  else [in_channels] * (reps - 1) + [out_channels])
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            # not inplace on the first: the block's input also feeds the shortcut
            layers += [nn.ReLU(inplace=i > 0), SeparableConv2d(cin, cout), nn.BatchNorm2d(cout)]
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    """Xception (Chollet 2017, Fig. 5): entry flow, 8 middle-flow blocks, exit flow, global
    average pool, fc.

    Args:
        num_classes: outputs of ``fc``.
        middle_blocks: repetitions of the middle flow (the paper's 8).

    Shapes: (N, 3, H, W) float -> (N, num_classes) logits; native 299x299, H, W >= 7.

    Raises: ValueError for a non-positive num_classes or a negative middle_blocks.
    """

    def __init__(self, num_classes: int = 1000, middle_blocks: int = 8) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if middle_blocks < 0:
            raise ValueError(f"middle_blocks must be >= 0, got {middle_blocks}")
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        # entry flow
        self.block1 = XceptionBlock(64, 128, 2, 2, start_with_relu=False)
        self.block2 = XceptionBlock(128, 256, 2, 2)
        self.block3 = XceptionBlock(256, 728, 2, 2)
        # middle flow
        for i in range(middle_blocks):
            setattr(self, f"block{4 + i}", XceptionBlock(728, 728, 3, 1))
        # exit flow
        self.exit_block = 4 + middle_blocks
        setattr(self, f"block{self.exit_block}", XceptionBlock(728, 1024, 2, 2, grow_first=False))
        self.conv3 = SeparableConv2d(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(1536, 2048)
        self.bn4 = nn.BatchNorm2d(2048)
        self.act4 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2048, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        for i in range(1, self.exit_block + 1):
            x = getattr(self, f"block{i}")(x)
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.act4(self.bn4(self.conv4(x)))
        return self.fc(x.mean([2, 3]))  # global average pool


@register_model("xception", family="xception", input_size=(3, 299, 299), paper=PAPER)
def xception(num_classes: int = 1000, middle_blocks: int = 8) -> Xception:
    """Xception (Chollet 2017) as keras.applications.Xception; (N, 3, 299, 299) ->
    (N, num_classes)."""
    return Xception(num_classes=num_classes, middle_blocks=middle_blocks)
