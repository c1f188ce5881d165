"""fastblocks.optimize's squeeze-excite and channel-shuffle swaps (rules/squeeze_excite.py,
rules/shuffle.py): on the zoo's SE and ShuffleNet models (report, state_dict keys, parity with
the plain model in float64 train/eval and float32 eval, revert), on user-style blocks (an SE
class with another forward stays eager, inline shuffles, nn.ChannelShuffle), and train/eval
switching."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.models._blocks import SqueezeExcitation
from fastblocks.models.shufflenet_v2 import channel_shuffle
from fastblocks.optimize._inline_module import InlineFused
from fastblocks.optimize.rules.shuffle import SwappedChannelShuffle
from fastblocks.optimize.rules.squeeze_excite import SwappedSqueezeExcite

from _optimize_helpers import assert_same_model, one_thread  # noqa: F401 (autouse fixture)
from zoo_checks import check_architecture


# name -> (input size, report pattern, count). 64x64 where 32x32 leaves 1x1 maps: train-mode BN
# over 2 values there turns float64 rounding of two summation orders into ~1e-3 differences
# (se_resnet50, efficientnet_b0, measured; as tests/test_models_efficient_a.py notes)
ZOO = {
    "mobilenet_v3_large": (32, "squeeze-excite relu/hardsigmoid (SqueezeExcitation)", 8),
    "efficientnet_b0": (64, "squeeze-excite silu/sigmoid (SqueezeExcitation)", 16),
    "se_resnet50": (64, "squeeze-excite relu/sigmoid (SqueezeExcitation)", 16),
    "shufflenet_v2_x1_0": (32, "inline concat + channel shuffle (groups=2)", 16),
    # the shuffle after each unit's compress chain runs in that chain (rules/chain_shuffle.py);
    # stage 2's first compress conv is not grouped (1 more, "conv -> BN -> relu -> ...")
    "shufflenet_v1_g3": (32, "grouped conv -> BN -> relu -> channel shuffle (groups=3)", 15),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_report_parity_and_revert(name):
    size, pattern, count = ZOO[name]
    torch.manual_seed(0)
    plain = fastblocks.create_model(name, fused=False)
    fused = fastblocks.optimize(plain)
    counts = fused.fastblocks_report.counts()
    assert counts.get(pattern) == count, str(fused.fastblocks_report)
    assert list(fused.state_dict()) == list(plain.state_dict())
    back = fastblocks.revert(copy.deepcopy(fused))
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]
    assert list(back.state_dict()) == list(plain.state_dict())
    check_architecture(name, size)


class OddSE(SqueezeExcitation):
    """SE children, but its forward adds a residual: not the SE composition."""

    def forward(self, x):
        return self._scale(x) * x + x


class LinearSE(nn.Module):
    """The classic SE-ResNet SELayer: Linear FCs in a Sequential, the view in forward."""

    def __init__(self, c, r):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(inplace=True), nn.Linear(c // r, c),
                                nn.Sigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class InlineSE(nn.Module):
    """A user's block with SE written inline (mean pooling, F.silu, torch.sigmoid)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        y = self.conv(x)
        s = F.silu(self.reduce(y.mean((2, 3), keepdim=True)))
        return torch.sigmoid(self.expand(s)) * y


class InlineSEPoolNoAct(nn.Module):
    """Another spelling: F.adaptive_avg_pool2d, no activation, a Hardsigmoid gate module; and a
    look-alike whose pool reads another tensor than the one it scales (not an SE)."""

    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c, 1)
        self.gate = nn.Hardsigmoid()
        self.a = nn.Conv2d(c, 4, 1)
        self.b = nn.Conv2d(4, c, 1)

    def forward(self, x):
        x = x * self.gate(self.fc2(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(self.b(F.relu(self.a(F.adaptive_avg_pool2d(x + 1, 1)))))


class InlineShuffleBlock(nn.Module):
    """A user's unit: shuffle written inline (x.shape, reshape, method transpose, -1)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, groups=4, bias=False)
        self.conv2 = nn.Conv2d(c, c // 2, 1, bias=False)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        y = y.reshape(n, 4, -1, h, w).transpose(1, 2).reshape(n, -1, h, w)
        z = torch.cat([self.conv2(y), x[:, : c // 2]], dim=1)
        n, c, h, w = z.size()
        return channel_shuffle(z, 2) + z.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w) * 0


class NotAShuffle(nn.Module):
    """view(N, g, C/g, H, W) -> transpose(1, 2) -> view of *another* shape: not a shuffle."""

    def forward(self, x):
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, w, h)


def user_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SqueezeExcitation(16, 4, nn.SiLU),
                         OddSE(16, 4), LinearSE(16, 4), InlineShuffleBlock(16),
                         nn.ChannelShuffle(4), NotAShuffle(), InlineSE(16), InlineSEPoolNoAct(16))


def test_user_blocks_swapped_or_kept():
    plain = user_model()
    fused = fastblocks.optimize(plain)
    report = fused.fastblocks_report
    counts = report.counts()
    assert isinstance(fused[1], SwappedSqueezeExcite) and isinstance(fused[3], SwappedSqueezeExcite)
    # not an SE as a whole, but the SE inside its forward is fused inline (the "+ x" stays)
    assert isinstance(fused[2], InlineFused) and "computes something else" in str(report)
    assert counts.get("inline squeeze-excite relu/sigmoid") == 1, str(report)
    assert isinstance(fused[4], InlineFused)
    assert counts.get("inline channel shuffle (groups=4)") == 1, str(report)
    # the cat is read by the concat-shuffle and by a second shuffle: no concat fusion, 2 shuffles
    assert counts.get("inline channel shuffle (groups=2)") == 2, str(report)
    assert type(fused[5]) is SwappedChannelShuffle
    assert type(fused[6]) is NotAShuffle
    assert isinstance(fused[7], InlineFused) and isinstance(fused[8], InlineFused)
    assert counts.get("inline squeeze-excite silu/sigmoid") == 1, str(report)
    assert counts.get("inline squeeze-excite none/hardsigmoid") == 1, str(report)
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 6, 5)
    for train in (True, False):
        assert_same_model(copy.deepcopy(plain), copy.deepcopy(fused), x, train)
    back = fastblocks.revert(fused)
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]


class CatShuffle(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, a):
        return channel_shuffle(torch.cat((a, self.conv(a)), 1), 2)


def test_concat_shuffle_and_train_eval_switching():
    plain = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), SqueezeExcitation(8, 2),
                          CatShuffle(8))
    fused = fastblocks.optimize(plain)
    assert fused.fastblocks_report.counts().get("inline concat + channel shuffle (groups=2)") == 1
    x = torch.randn(2, 4, 5, 5)
    for train in (True, False, True):  # switching modes keeps running statistics exact
        plain.train(train), fused.train(train)
        assert_same_model(plain, fused, x, train, steps=2)
        torch.testing.assert_close(fused[1].running_mean, plain[1].running_mean)


def test_swapped_se_cpu_policy_fused_except_low_precision_inference(monkeypatch):
    """The CPU policy of rules/squeeze_excite.py: the fused op in training, and in fp32/fp64
    inference; the eager composition for fp16/bf16 inference."""
    se = fastblocks.optimize(SqueezeExcitation(8, 2))
    assert isinstance(se, SwappedSqueezeExcite)
    calls = []
    real = fastblocks.ops.squeeze_excite
    monkeypatch.setattr(fastblocks.ops, "squeeze_excite", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 8, 4, 4)
    se(x.requires_grad_(True)).sum().backward()
    assert calls == [1]
    with torch.no_grad():
        se(x)
    assert calls == [1, 1]
    with torch.no_grad():
        se.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert calls == [1, 1]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compile_fullgraph(train):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(4, 8, 1), SqueezeExcitation(8, 2, nn.SiLU), CatShuffle(8),
                          nn.ChannelShuffle(4), InlineSE(16))
    fused = fastblocks.optimize(plain)
    assert sum(v for k, v in fused.fastblocks_report.counts().items()
               if "squeeze-excite" in k or "shuffle" in k) == 4, str(fused.fastblocks_report)
    # aot_eager: what inductor gets (dynamo + AOT autograd), in seconds
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    assert_same_model(plain, compiled, torch.randn(2, 4, 6, 6), train=train)


def test_fused_shuffle_kernels_on_cpu_when_large(monkeypatch):
    """The CPU policy's fused branches (taken from 2**18 elements up), forced on tiny tensors:
    parity in train and eval, and the kernels are what runs."""
    from fastblocks.optimize.rules import shuffle as rule
    monkeypatch.setattr(rule, "_CPU_MIN_NUMEL", 0)
    calls = []
    for op in ("channel_shuffle", "concat_shuffle"):
        real = getattr(fastblocks.ops, op)
        monkeypatch.setattr(fastblocks.ops, op, lambda *a, _r=real, _n=op: calls.append(_n) or _r(*a))
    plain = user_model()
    fused = fastblocks.optimize(plain)
    x = torch.randn(2, 3, 6, 5)
    assert_same_model(copy.deepcopy(plain), fused, x, train=False, backward=False)
    assert "channel_shuffle" in calls
    cat = nn.Sequential(nn.Conv2d(4, 8, 1), CatShuffle(8))
    assert_same_model(cat, fastblocks.optimize(cat), torch.randn(2, 4, 5, 5), train=True)
    assert "concat_shuffle" in calls
