"""optimize on blocks written the way timm writes them (timm is not installed here; these
classes reproduce its layers' forward logic): a BatchNorm2d subclass applying its activation
in its own forward (BatchNormAct2d), ConvNormAct holding conv and bn, a conv padding
TensorFlow-"same" in its forward (Conv2dSame), a memory-efficient swish autograd Function."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.optimize.rules.conv_bn_act import ConvBNActHead
from fastblocks.optimize.rules.depthwise import SamePaddingDepthwiseConv2d

from _optimize_helpers import assert_same_model, one_thread  # noqa: F401 (autouse fixture)


class BatchNormAct2d(nn.BatchNorm2d):
    """BN statistics handled as nn.BatchNorm2d, then ``drop`` and ``act`` (timm's layout)."""

    def __init__(self, num_features, act_layer=nn.ReLU, momentum=0.1):
        super().__init__(num_features, momentum=momentum)
        self.drop = nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, use_batch, factor, self.eps)
        return self.act(self.drop(x))


class BatchNormScaledAct(BatchNormAct2d):
    """Looks like BatchNormAct2d but scales the output: must not be fused."""

    def forward(self, x):
        return super().forward(x) * 1.5


def _same_pad(x, k, s, d):
    ih, iw = x.shape[-2:]
    pads = []
    for size, kk, ss, dd in ((iw, k[1], s[1], d[1]), (ih, k[0], s[0], d[0])):
        total = max((math.ceil(size / ss) - 1) * ss + (kk - 1) * dd + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Conv2dSame(nn.Conv2d):
    """TensorFlow "SAME" padding computed from the input size in forward (timm's pad_same)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, padding=0, **kw)

    def forward(self, x):
        x = _same_pad(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvNormAct(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act_layer=nn.ReLU, same=False):
        super().__init__()
        conv = Conv2dSame if same else nn.Conv2d
        kw = {} if same else {"padding": k // 2}
        self.conv = conv(cin, cout, k, stride=stride, groups=groups, bias=False, **kw)
        self.bn = BatchNormAct2d(cout, act_layer=act_layer)

    def forward(self, x):
        return self.bn(self.conv(x))


class _SwishFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * (s * (1 + x * (1 - s)))


class SwishMe(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return _SwishFn.apply(x)


def timm_style_model():
    return nn.Sequential(
        ConvNormAct(3, 16, 3, stride=2, act_layer=nn.Hardswish, same=True),
        ConvNormAct(16, 16, 5, stride=2, groups=16, act_layer=SwishMe, same=True),
        ConvNormAct(16, 24, 1, act_layer=None),
        Conv2dSame(24, 24, 3, stride=2, groups=24),
        nn.Conv2d(24, 24, 1, bias=False), BatchNormScaledAct(24),
        nn.Conv2d(24, 24, 1, bias=False), BatchNormAct2d(24, momentum=None),
        SwishMe())


def test_timm_style_swaps():
    fused = fastblocks.optimize(timm_style_model())
    counts = fused.fastblocks_report.counts()
    assert counts["conv (TF same padding) -> BN -> hardswish"] == 1
    assert counts["depthwise conv (TF same padding) -> BN -> silu"] == 1
    assert counts["conv -> BN -> identity"] == 1
    assert counts["conv -> BN -> relu"] == 1          # BatchNormAct2d(momentum=None)
    assert counts["depthwise conv (TF same padding)"] == 1
    assert counts["activation silu (SwishMe)"] == 1
    assert isinstance(fused[3], SamePaddingDepthwiseConv2d)
    assert type(fused[4]) is nn.Conv2d and type(fused[5]) is BatchNormScaledAct  # not fused
    assert isinstance(fused[6], ConvBNActHead)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_timm_style_parity(train):
    plain = timm_style_model()
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    fused = fastblocks.optimize(plain)
    for size in (17, 16):  # odd and even sizes: the "same" padding differs
        x = torch.randn(2, 3, size, size + 1, generator=torch.Generator().manual_seed(size))
        assert_same_model(plain, fused, x, train=train, steps=2)
    back = fastblocks.revert(copy.deepcopy(fused))
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]
