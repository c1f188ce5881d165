"""The layer shapes the benchmarks run: real tensors of the architectures, at 224x224 input.

Derived from the papers' layer tables (input resolution 224x224, width multiplier 1.0):

- MobileNetV2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks"
  (2018), Table 2. Every bottleneck has a 3x3 depthwise conv on ``t * c_in`` channels (t = 1 in
  the first block: no expansion), stride ``s`` on the first layer of a block and 1 on its
  repeats; activation ReLU6.
- MobileNetV3-Large: Howard et al., "Searching for MobileNetV3" (2019), Table 1. A bneck's
  depthwise conv runs on its "exp size" channels with the listed kernel and stride; NL "RE"
  is ReLU, "HS" hard-swish. Bnecks are numbered 1..15 in table order.
- EfficientNet-B0: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (2019),
  Table 1 ("Resolution" is a stage's input resolution). Strides of stages 2..8 are
  1, 2, 2, 2, 1, 2, 1 (the reference implementation); MBConv6 expands 6x, MBConv1 does not;
  activation SiLU (swish).

Padding is ``(k - 1) // 2``, as torchvision builds these networks. Each list is deduplicated
within its network: a shape that repeats (e.g. the repeats of a stage) is listed once, with
every layer it stands for in ``source``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepthwiseLayer:
    channels: int      # depthwise channels (input = output; channel multiplier 1)
    size: int          # input H = W
    kernel: int
    stride: int
    activation: str    # the activation that follows it (after BN) in that network
    net: str
    source: str

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


def _dw(net, act, rows):
    return tuple(DepthwiseLayer(c, h, k, s, act if a is None else a, net, src)
                 for c, h, k, s, a, src in rows)


MOBILENET_V2 = _dw("mobilenet_v2", "relu6", [
    # C,  H, k, s, act, layers of Table 2 (block = row of the table; t=6 unless noted)
    (32, 112, 3, 1, None, "block 1 (t=1, c=16): the only layer"),
    (96, 112, 3, 2, None, "block 2 (c=24), first layer: 16*6 channels"),
    (144, 56, 3, 1, None, "block 2 (c=24), repeat: 24*6 channels"),
    (144, 56, 3, 2, None, "block 3 (c=32), first layer"),
    (192, 28, 3, 1, None, "block 3 (c=32), 2 repeats"),
    (192, 28, 3, 2, None, "block 4 (c=64), first layer"),
    (384, 14, 3, 1, None, "block 4 (c=64) 3 repeats; block 5 (c=96) first layer"),
    (576, 14, 3, 1, None, "block 5 (c=96), 2 repeats"),
    (576, 14, 3, 2, None, "block 6 (c=160), first layer"),
    (960, 7, 3, 1, None, "block 6 (c=160) 2 repeats; block 7 (c=320)"),
])

MOBILENET_V3_LARGE = _dw("mobilenet_v3_large", "hardswish", [
    # C, H, k, s, act, bneck (exp size / #out)
    (16, 112, 3, 1, "relu", "bneck 1 (exp 16, out 16; no expansion)"),
    (64, 112, 3, 2, "relu", "bneck 2 (exp 64, out 24)"),
    (72, 56, 3, 1, "relu", "bneck 3 (exp 72, out 24)"),
    (72, 56, 5, 2, "relu", "bneck 4 (exp 72, out 40, SE)"),
    (120, 28, 5, 1, "relu", "bnecks 5-6 (exp 120, out 40, SE)"),
    (240, 28, 3, 2, None, "bneck 7 (exp 240, out 80)"),
    (200, 14, 3, 1, None, "bneck 8 (exp 200, out 80)"),
    (184, 14, 3, 1, None, "bnecks 9-10 (exp 184, out 80)"),
    (480, 14, 3, 1, None, "bneck 11 (exp 480, out 112, SE)"),
    (672, 14, 3, 1, None, "bneck 12 (exp 672, out 112, SE)"),
    (672, 14, 5, 2, None, "bneck 13 (exp 672, out 160, SE)"),
    (960, 7, 5, 1, None, "bnecks 14-15 (exp 960, out 160, SE)"),
])

EFFICIENTNET_B0 = _dw("efficientnet_b0", "silu", [
    # C, H, k, s, act, stage of Table 1
    (32, 112, 3, 1, None, "stage 2 (MBConv1 k3, 16 ch): no expansion"),
    (96, 112, 3, 2, None, "stage 3 (MBConv6 k3, 24 ch), first layer: 16*6 channels"),
    (144, 56, 3, 1, None, "stage 3, repeat: 24*6 channels"),
    (144, 56, 5, 2, None, "stage 4 (MBConv6 k5, 40 ch), first layer"),
    (240, 28, 5, 1, None, "stage 4, repeat"),
    (240, 28, 3, 2, None, "stage 5 (MBConv6 k3, 80 ch), first layer"),
    (480, 14, 3, 1, None, "stage 5, 2 repeats"),
    (480, 14, 5, 1, None, "stage 6 (MBConv6 k5, 112 ch), first layer"),
    (672, 14, 5, 1, None, "stage 6, 2 repeats"),
    (672, 14, 5, 2, None, "stage 7 (MBConv6 k5, 192 ch), first layer"),
    (1152, 7, 5, 1, None, "stage 7, 3 repeats"),
    (1152, 7, 3, 1, None, "stage 8 (MBConv6 k3, 320 ch)"),
])

DEPTHWISE_NETS = {
    "mobilenet_v2": MOBILENET_V2,
    "mobilenet_v3_large": MOBILENET_V3_LARGE,
    "efficientnet_b0": EFFICIENTNET_B0,
}


def _union(*nets):
    """Every distinct (channels, size, kernel, stride) over the networks, first one kept."""
    seen, out = set(), []
    for net in nets:
        for layer in net:
            key = (layer.channels, layer.size, layer.kernel, layer.stride)
            if key not in seen:
                seen.add(key)
                out.append(layer)
    return tuple(out)


# All three networks' depthwise layers, deduplicated across networks (the GPU default).
DEPTHWISE_ALL = _union(MOBILENET_V2, MOBILENET_V3_LARGE, EFFICIENTNET_B0)

# One layer per (kernel, stride) kind plus the extremes of channels and resolution: the CPU
# default and --quick, so a run stays short.
DEPTHWISE_REPRESENTATIVE = (
    MOBILENET_V2[1],         # 96 x 112^2, k3 s2
    MOBILENET_V2[2],         # 144 x 56^2, k3 s1
    MOBILENET_V3_LARGE[3],   # 72 x 56^2, k5 s2
    EFFICIENTNET_B0[4],      # 240 x 28^2, k5 s1
    MOBILENET_V3_LARGE[8],   # 480 x 14^2, k3 s1
    EFFICIENTNET_B0[10],     # 1152 x 7^2, k5 s1
)


@dataclass(frozen=True)
class ActivationTensor:
    channels: int
    size: int          # H = W
    source: str


# Activation tensors (N, C, H, W) of MobileNetV3-Large / EfficientNet-B0 at 224x224: the
# outputs an activation actually runs on, from large-and-shallow to small-and-deep.
ACTIVATION_TENSORS = (
    ActivationTensor(16, 112, "MobileNetV3-Large stem conv 3x3/2 output (hard-swish)"),
    ActivationTensor(96, 112, "EfficientNet-B0 stage 3 expand output (SiLU), its largest; "
                              "MobileNetV2 block 2 expand (ReLU6)"),
    ActivationTensor(72, 56, "MobileNetV3-Large bneck 3-4 expand output (ReLU there)"),
    ActivationTensor(240, 28, "MobileNetV3-Large bneck 7 expand output (hard-swish); "
                              "EfficientNet-B0 stage 4-5 (SiLU)"),
    ActivationTensor(480, 14, "MobileNetV3-Large bneck 11 expand (hard-swish); EfficientNet-B0 "
                              "stage 5-6 (SiLU)"),
    ActivationTensor(960, 7, "MobileNetV3-Large last 1x1 conv output (hard-swish)"),
    ActivationTensor(672, 1, "MobileNetV3-Large SE gate of bnecks 12-13 (hard-sigmoid): "
                             "launch-bound"),
)

# Element counts of the bandwidth sweep (1-d tensors).
SWEEP_GPU = tuple(2 ** e for e in range(16, 27))          # 2^16 .. 2^26, every power of 2
SWEEP_GPU_QUICK = tuple(2 ** e for e in range(16, 27, 2))  # 2^16 .. 2^26, every 4x
SWEEP_CPU = tuple(2 ** e for e in range(16, 23, 2))        # 2^16 .. 2^22, every 4x
SWEEP_CPU_QUICK = (2 ** 16, 2 ** 20)


# ---- shuffle family: ShuffleNet v1/v2 and ResNeXt-50 32x4d, 224x224 -----------------------------
#
# - ShuffleNet v1: Zhang et al. (CVPR 2018), Table 1. Stage outputs 28, 14, 7 with 240/480/960
#   channels (g = 3) or 384/768/1536 (g = 8); a unit's bottleneck is a quarter of its output.
#   Its first 1x1 GConv (-> BN -> ReLU) is followed by the channel shuffle (fused here); in
#   stage 2's first unit that conv is ungrouped (24 input channels), where the shuffle folds
#   into the weight. The second 1x1 GConv (-> BN, no activation) expands back; in a stride-2
#   unit it makes out - in channels for the concatenation with the pooled shortcut.
# - ShuffleNet v2 1.0x: Ma et al. (ECCV 2018), Table 5: stages of 116/232/464 channels at
#   28/14/7; every unit ends with concat (two halves) + channel shuffle (groups 2).
# - ResNeXt-50 32x4d: Xie et al. (CVPR 2017), Table 1: the grouped 3x3 (cardinality 32) of
#   every bottleneck, widths 128/256/512/1024 at 56/28/14/7, stride 2 on the first block of
#   conv3-5 (torchvision puts the stride on the 3x3), each followed by BN and ReLU.

@dataclass(frozen=True)
class GroupedConvLayer:
    c_in: int
    c_out: int
    size: int            # input H = W
    kernel: int
    stride: int
    groups: int
    activation: str | None
    shuffle_groups: int | None
    net: str
    source: str

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


def _shufflenet_v1(g, widths):
    c2, c3, c4 = widths
    net = f"shufflenet_v1_g{g}"
    rows = [  # (c_in, c_out, size, groups, act, shuffle, source)
        (24, c2 // 4, 56, 1, "relu", g, "stage 2 unit 1, 1x1 conv (ungrouped) + shuffle"),
        (c2 // 4, c2 - 24, 28, g, None, None, "stage 2 unit 1, 1x1 GConv expand (concat unit)"),
        (c2, c2 // 4, 28, g, "relu", g, "stage 2 units 2-4, 1x1 GConv + shuffle"),
        (c2 // 4, c2, 28, g, None, None, "stage 2 units 2-4, 1x1 GConv expand"),
        (c2, c3 // 4, 28, g, "relu", g, "stage 3 unit 1, 1x1 GConv + shuffle"),
        (c3, c3 // 4, 14, g, "relu", g, "stage 3 units 2-8, 1x1 GConv + shuffle"),
        (c3 // 4, c3, 14, g, None, None, "stage 3 units 2-8, 1x1 GConv expand"),
        (c3, c4 // 4, 14, g, "relu", g, "stage 4 unit 1, 1x1 GConv + shuffle"),
        (c4, c4 // 4, 7, g, "relu", g, "stage 4 units 2-4, 1x1 GConv + shuffle"),
        (c4 // 4, c4, 7, g, None, None, "stage 4 units 2-4, 1x1 GConv expand"),
    ]
    return tuple(GroupedConvLayer(ci, co, s, 1, 1, gr, a, sh, net, src)
                 for ci, co, s, gr, a, sh, src in rows)


SHUFFLENET_V1_G3 = _shufflenet_v1(3, (240, 480, 960))
SHUFFLENET_V1_G8 = _shufflenet_v1(8, (384, 768, 1536))

RESNEXT50_32X4D = tuple(GroupedConvLayer(w, w, s, 3, st, 32, "relu", None, "resnext50_32x4d", src)
                        for w, s, st, src in (
    (128, 56, 1, "conv2, 3 blocks"),
    (256, 56, 2, "conv3 block 1 (stride 2)"),
    (256, 28, 1, "conv3 blocks 2-4"),
    (512, 28, 2, "conv4 block 1 (stride 2)"),
    (512, 14, 1, "conv4 blocks 2-6"),
    (1024, 14, 2, "conv5 block 1 (stride 2)"),
    (1024, 7, 1, "conv5 blocks 2-3"),
))

GROUPED_CONV_NETS = {
    "shufflenet_v1_g3": SHUFFLENET_V1_G3,
    "shufflenet_v1_g8": SHUFFLENET_V1_G8,
    "resnext50_32x4d": RESNEXT50_32X4D,
}


@dataclass(frozen=True)
class ShuffleTensor:
    channels: int        # after the concatenation (split in two equal halves for concat)
    size: int
    groups: int
    source: str


# Tensors a channel shuffle runs on: ShuffleNet v2's concat + shuffle (groups 2) and
# ShuffleNet v1's shuffle after the first GConv (the unfused form).
SHUFFLE_TENSORS = (
    ShuffleTensor(116, 28, 2, "ShuffleNet v2 1.0x stage 2 (concat + shuffle)"),
    ShuffleTensor(232, 14, 2, "ShuffleNet v2 1.0x stage 3 (concat + shuffle)"),
    ShuffleTensor(464, 7, 2, "ShuffleNet v2 1.0x stage 4 (concat + shuffle)"),
    ShuffleTensor(60, 28, 3, "ShuffleNet v1 g=3 stage 2 bottleneck"),
    ShuffleTensor(120, 14, 3, "ShuffleNet v1 g=3 stage 3 bottleneck"),
    ShuffleTensor(96, 28, 8, "ShuffleNet v1 g=8 stage 2 bottleneck"),
    ShuffleTensor(384, 7, 8, "ShuffleNet v1 g=8 stage 4 bottleneck"),
)

# ---- squeeze-and-excitation ------------------------------------------------------------------
#
# SE runs on a block's expanded tensor at the depthwise conv's output resolution.
# - MobileNetV3-Large (Table 1, bnecks with SE): squeeze = make_divisible(exp / 4, 8) as in
#   torchvision; ReLU, hard-sigmoid gate.
# - EfficientNet-B0 (Table 1; every MBConv has SE): squeeze = max(1, int(block input * 0.25)),
#   as in torchvision and the reference implementation; SiLU, sigmoid gate.
# - SE-ResNet-50: Hu et al., "Squeeze-and-Excitation Networks" (2018), Table 1: SE on each
#   bottleneck's output (4 x planes), reduction 16; ReLU, sigmoid gate.

@dataclass(frozen=True)
class SeLayer:
    channels: int      # C of the SE input
    squeeze: int       # C_r
    size: int          # H = W
    activation: str
    gate: str
    net: str
    source: str


def _se(net, act, gate, rows):
    return tuple(SeLayer(c, r, h, act, gate, net, src) for c, r, h, src in rows)


SE_MOBILENET_V3_LARGE = _se("mobilenet_v3_large", "relu", "hardsigmoid", [
    (72, 24, 28, "bneck 4 (exp 72, s2)"),
    (120, 32, 28, "bnecks 5-6 (exp 120)"),
    (480, 120, 14, "bneck 11 (exp 480)"),
    (672, 168, 14, "bneck 12 (exp 672)"),
    (672, 168, 7, "bneck 13 (exp 672, s2)"),
    (960, 240, 7, "bnecks 14-15 (exp 960)"),
])

SE_EFFICIENTNET_B0 = _se("efficientnet_b0", "silu", "sigmoid", [
    (32, 8, 112, "stage 2 (MBConv1, 32 -> 16)"),
    (96, 4, 56, "stage 3, first layer (16 * 6, s2)"),
    (144, 6, 56, "stage 3, repeat (24 * 6)"),
    (144, 6, 28, "stage 4, first layer (24 * 6, s2)"),
    (240, 10, 28, "stage 4, repeat (40 * 6)"),
    (240, 10, 14, "stage 5, first layer (40 * 6, s2)"),
    (480, 20, 14, "stage 5, 2 repeats; stage 6, first layer (80 * 6)"),
    (672, 28, 14, "stage 6, 2 repeats (112 * 6)"),
    (672, 28, 7, "stage 7, first layer (112 * 6, s2)"),
    (1152, 48, 7, "stage 7, 3 repeats; stage 8 (192 * 6)"),
])

SE_RESNET_50 = _se("se_resnet_50", "relu", "sigmoid", [
    (256, 16, 56, "conv2_x, 3 blocks"),
    (512, 32, 28, "conv3_x, 4 blocks"),
    (1024, 64, 14, "conv4_x, 6 blocks"),
    (2048, 128, 7, "conv5_x, 3 blocks"),
])

SE_NETS = {"mobilenet_v3_large": SE_MOBILENET_V3_LARGE, "efficientnet_b0": SE_EFFICIENTNET_B0,
           "se_resnet_50": SE_RESNET_50}
SE_ALL = SE_MOBILENET_V3_LARGE + SE_EFFICIENTNET_B0 + SE_RESNET_50
# CPU default and --quick: a large map with few channels, a mid one, a small map with many
SE_REPRESENTATIVE = (SE_EFFICIENTNET_B0[0], SE_MOBILENET_V3_LARGE[1], SE_RESNET_50[1],
                     SE_MOBILENET_V3_LARGE[5], SE_EFFICIENTNET_B0[9])


# ---- conv -> BN -> activation layers (dense and 1x1 convs; depthwise ones are above) --------

@dataclass(frozen=True)
class ConvBNActLayer:
    in_channels: int
    out_channels: int
    size: int          # input H = W
    kernel: int
    stride: int
    activation: str    # "none" for the linear projections of inverted residuals
    net: str
    source: str

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


def _cba(net, act, rows):
    return tuple(ConvBNActLayer(ci, co, h, k, s, act if a is None else a, net, src)
                 for ci, co, h, k, s, a, src in rows)


# ResNet-50 (He et al. 2016, Table 1; torchvision's v1.5: stride on the 3x3), bottleneck
# convs of each stage (first block and repeats), the stem and the downsample projection.
RESNET50_CBA = _cba("resnet50", "relu", [
    (3, 64, 224, 7, 2, None, "stem conv 7x7/2"),
    (64, 64, 56, 1, 1, None, "layer1 conv1 (first block)"),
    (64, 64, 56, 3, 1, None, "layer1 conv2"),
    (64, 256, 56, 1, 1, "none", "layer1 conv3 (before the residual add)"),
    (256, 64, 56, 1, 1, None, "layer1 conv1 (repeats)"),
    (256, 128, 56, 1, 1, None, "layer2 conv1 (first block)"),
    (128, 128, 56, 3, 2, None, "layer2 conv2 3x3/2"),
    (128, 128, 28, 3, 1, None, "layer2 conv2 (repeats)"),
    (512, 128, 28, 1, 1, None, "layer2 conv1 (repeats)"),
    (256, 256, 14, 3, 1, None, "layer3 conv2 (repeats)"),
    (1024, 256, 14, 1, 1, None, "layer3 conv1 (repeats)"),
    (512, 2048, 7, 1, 1, "none", "layer4 conv3"),
    (512, 512, 7, 3, 1, None, "layer4 conv2 (repeats)"),
])

# MobileNetV2 (Table 2): stem, the 1x1 expansions (ReLU6) and linear projections (no act).
MOBILENET_V2_CBA = _cba("mobilenet_v2", "relu6", [
    (3, 32, 224, 3, 2, None, "stem conv 3x3/2"),
    (16, 96, 112, 1, 1, None, "block 2 expand"),
    (96, 24, 56, 1, 1, "none", "block 2 project"),
    (24, 144, 56, 1, 1, None, "block 2-3 expand"),
    (192, 32, 28, 1, 1, "none", "block 3 project (repeats)"),
    (64, 384, 14, 1, 1, None, "block 4-5 expand"),
    (576, 96, 14, 1, 1, "none", "block 5 project (repeats)"),
    (160, 960, 7, 1, 1, None, "block 6-7 expand"),
    (320, 1280, 7, 1, 1, None, "last conv 1x1"),
])

# EfficientNet-B0 (Table 1): stem, 1x1 expansions (SiLU), projections (no act), head.
EFFICIENTNET_B0_CBA = _cba("efficientnet_b0", "silu", [
    (3, 32, 224, 3, 2, None, "stem conv 3x3/2"),
    (32, 16, 112, 1, 1, "none", "stage 2 project"),
    (24, 144, 56, 1, 1, None, "stage 3 expand (repeats)"),
    (40, 240, 28, 1, 1, None, "stage 4 expand (repeats)"),
    (480, 80, 14, 1, 1, "none", "stage 5 project"),
    (112, 672, 14, 1, 1, None, "stage 6 expand (repeats)"),
    (1152, 192, 7, 1, 1, "none", "stage 7 project (repeats)"),
    (320, 1280, 7, 1, 1, None, "head conv 1x1"),
])

CONV_BN_ACT_NETS = {
    "resnet50": RESNET50_CBA,
    "mobilenet_v2": MOBILENET_V2_CBA,
    "efficientnet_b0": EFFICIENTNET_B0_CBA,
}
CONV_BN_ACT_ALL = RESNET50_CBA + MOBILENET_V2_CBA + EFFICIENTNET_B0_CBA
