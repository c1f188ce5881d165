"""Octave ResNet-50 (Chen, Fan, Xu, Yan, Kalantidis, Rohrbach, Yan & Feng, "Drop an Octave:
Reducing Spatial Redundancy in Convolutional Neural Networks with Octave Convolution", ICCV
2019, arXiv:1904.05049).

What is specific: octave convolution. A feature map is held as a high-frequency part X_H at
full resolution and a low-frequency part X_L at half resolution; a fraction ``alpha`` of the
channels is low frequency (alpha = 0.25 here, the paper's main ResNet-50 setting). An octave
conv with weights split as W_HH, W_HL, W_LH, W_LL computes (section 3.2, Eq. 3)

    Y_H = f(X_H; W_HH) + upsample(f(X_L; W_LH), 2)        (nearest)
    Y_L = f(X_L; W_LL) + f(pool(X_H, 2); W_HL)             (2x2 average pool)

and a stride-2 octave conv average-pools both inputs first (section 3.3, "strided"). The first
octave conv of the network has alpha_in = 0 (only Y_H, Y_L from X), the last has alpha_out = 0
(both parts merged into one full-resolution map), section 3.3. Here every convolution of
ResNet-50's stages 1-3 (and the shortcuts) is an octave conv; stage 4's first block merges back
to one resolution (its conv1 and shortcut have alpha_out = 0) and the rest of stage 4 is a plain
ResNet (our reading of section 3.3; the authors' code was not consulted for where exactly the
merge sits, which does not change the count). The weights are those of a ResNet-50 split four
ways, so the parameter count is ResNet-50's 25.6M (the paper's ImageNet comparison lists
Oct-ResNet-50 at 25.6M).

Tensors: blocks pass ``(x_h, x_l)`` tuples: x_h (N, (1 - alpha) C, H, W), x_l
(N, alpha C, H // 2, W // 2) (the 2x2 pools floor odd sizes; upsampling goes back to x_h's size).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["OctaveConv", "OctResNet"]

Pair = tuple[Tensor, "Tensor | None"]


def _split(channels: int, alpha: float) -> tuple[int, int]:
    low = int(alpha * channels)
    return channels - low, low


class OctaveConv(nn.Module):
    """Octave convolution (module docstring, Eq. 3), no bias.

    Input ``(x_h, x_l)`` (x_l None when alpha_in = 0); output ``(y_h, y_l)`` (y_l None when
    alpha_out = 0). ``conv_h2h``, ``conv_h2l``, ``conv_l2h``, ``conv_l2l`` are None where their
    side has no channels. stride 1 or 2; kernel_size odd with "same" padding.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, alpha_in: float, alpha_out: float,
                 stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"OctaveConv: stride must be 1 or 2, got {stride}")
        self.stride = stride
        hin, lin = _split(cin, alpha_in)
        hout, lout = _split(cout, alpha_out)
        pad = kernel_size // 2

        def conv(a: int, b: int):
            return nn.Conv2d(a, b, kernel_size, 1, pad, bias=False) if a and b else None
        self.conv_h2h, self.conv_h2l = conv(hin, hout), conv(hin, lout)
        self.conv_l2h, self.conv_l2l = conv(lin, hout), conv(lin, lout)

    def forward(self, x: Pair) -> Pair:
        x_h, x_l = x
        if self.stride == 2:
            x_h = F.avg_pool2d(x_h, 2)
        y_h = self.conv_h2h(x_h)
        y_l = self.conv_h2l(F.avg_pool2d(x_h, 2)) if self.conv_h2l is not None else None
        if x_l is not None:
            if self.conv_l2h is not None:
                # strided: X_L is already at the output's resolution (section 3.3)
                # (to y_h's size: odd sizes floor in the pools, and so round-trip exactly)
                lh = self.conv_l2h(x_l)
                y_h = y_h + (F.interpolate(lh, size=y_h.shape[-2:], mode="nearest")
                             if self.stride == 1 else lh)
            if self.conv_l2l is not None:
                ll = self.conv_l2l(F.avg_pool2d(x_l, 2) if self.stride == 2 else x_l)
                y_l = ll if y_l is None else y_l + ll
        return y_h, y_l


class OctConvBN(OctaveConv):
    """OctaveConv -> BatchNorm on each frequency part (``bn_h``, ``bn_l``) -> ReLU (unless
    ``relu=False``). One module holding the convs and the BNs as its own children, so that
    where a part has a single conv (alpha_in = alpha_out = 0 in stage 4) torch.fx sees a plain
    conv -> BN -> ReLU chain and ``fastblocks.optimize`` fuses it."""

    def __init__(self, cin: int, cout: int, k: int, alpha_in: float, alpha_out: float,
                 stride: int = 1, relu: bool = True) -> None:
        super().__init__(cin, cout, k, alpha_in, alpha_out, stride)
        h, low = _split(cout, alpha_out)
        self.bn_h = nn.BatchNorm2d(h)
        self.bn_l = nn.BatchNorm2d(low) if low else None
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: Pair) -> Pair:
        y_h, y_l = super().forward(x)
        return self.act(self.bn_h(y_h)), (None if self.bn_l is None else self.act(self.bn_l(y_l)))


class OctBottleneck(nn.Module):
    """ResNet-50 bottleneck (stride on the 3x3, torchvision's v1.5) of octave convs.
    ``alpha_in`` / ``alpha_out``: the low-frequency fraction of the block's input / output
    (the inner convs use alpha_out). Shapes: (x_h, x_l) pairs as in the module docstring."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, alpha_in: float, alpha_out: float) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = OctConvBN(cin, width, 1, alpha_in, alpha_out)
        self.conv2 = OctConvBN(width, width, 3, alpha_out, alpha_out, stride)
        self.conv3 = OctConvBN(width, cout, 1, alpha_out, alpha_out, relu=False)
        self.downsample = (OctConvBN(cin, cout, 1, alpha_in, alpha_out, stride, relu=False)
                           if stride != 1 or cin != cout or alpha_in != alpha_out else None)

    def forward(self, x: Pair) -> Pair:
        y_h, y_l = self.conv3(self.conv2(self.conv1(x)))
        s_h, s_l = x if self.downsample is None else self.downsample(x)
        y_h = F.relu(y_h + s_h)
        return y_h, (None if y_l is None else F.relu(y_l + s_l))


class OctResNet(nn.Module):
    """Shapes: (N, 3, H, W) -> (N, num_classes); 224 native, any H, W >= 32."""

    def __init__(self, layers=(3, 4, 6, 3), alpha: float = 0.25, num_classes: int = 1000) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, a_in, stages = 64, 0.0, []
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                a_out = 0.0 if i == 3 else alpha  # stage 4 merges back to one resolution
                blocks.append(OctBottleneck(cin, width, 2 if (j == 0 and i > 0) else 1, a_in, a_out))
                cin, a_in = width * 4, a_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        pair = (x, None)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            pair = layer(pair)
        return self.fc(self.avgpool(pair[0]).flatten(1))


@register_model("oct_resnet50", family="oct_resnet",
                paper="Chen et al. 2019, Drop an Octave (arXiv:1904.05049)")
def oct_resnet50(num_classes: int = 1000, alpha: float = 0.25) -> OctResNet:
    return OctResNet((3, 4, 6, 3), alpha, num_classes)
