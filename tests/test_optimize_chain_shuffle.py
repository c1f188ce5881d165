"""fastblocks.optimize's conv -> BN -> act -> channel shuffle fusion (rules/chain_shuffle.py) on
user-style blocks: Sequentials ending in nn.ChannelShuffle (grouped and ungrouped conv), a
block shuffling inline, and one whose chain output is also read elsewhere (not fused).
Report, classes, state_dict keys, parity of outputs and every gradient with the plain model
in train and eval, the one grouped_conv2d call per chain in inference (and the CPU policy's
other branch), revert, and torch.compile(fullgraph=True). The zoo's ShuffleNet v1 is checked
in tests/test_optimize_se_shuffle.py."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastblocks
from fastblocks.optimize import _cpu_layout
from fastblocks.optimize._inline_module import InlineFused
from fastblocks.optimize.rules import chain_shuffle as rule
from fastblocks.optimize.rules.chain_shuffle import ShuffleFusedIntoConv, ShuffledConvBNActHead
from fastblocks.optimize.rules.conv_bn_act import ConvBNActHead

from _optimize_helpers import assert_same_model, one_thread  # noqa: F401 (autouse fixture)


class InlineUnit(nn.Module):
    """ShuffleNet v1's unit head written by hand: conv -> BN -> ReLU6, shuffle inline."""

    def __init__(self, c: int, g: int):
        super().__init__()
        self.g = g
        self.conv = nn.Conv2d(c, c, 1, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        n, c, h, w = y.size()
        y = y.view(n, self.g, c // self.g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.dw(y) + x


class ChainReadTwice(InlineUnit):
    """The chain's output feeds the shuffle and the residual: the shuffle must stay apart."""

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        n, c, h, w = y.size()
        z = y.view(n, self.g, c // self.g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.dw(z) + y


def user_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(6, 12, 1, groups=2, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                      nn.ChannelShuffle(3)),
        InlineUnit(12, 4), ChainReadTwice(12, 3),
        # ungrouped: the shuffle becomes a permutation of the folded weight's output channels
        nn.Sequential(nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.ChannelShuffle(2)))
    for m in model.modules():  # running statistics that differ from the batch's
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return model


def test_fused_report_classes_parity_and_revert(monkeypatch):
    plain = user_model()
    fused = fastblocks.optimize(plain)
    counts = fused.fastblocks_report.counts()
    report = str(fused.fastblocks_report)
    assert counts.get("grouped conv -> BN -> relu -> channel shuffle (groups=3)") == 1, report
    assert counts.get("grouped conv -> BN -> relu6 -> channel shuffle (groups=4)") == 1, report
    # ChainReadTwice: its chain and its inline shuffle are fused, but separately
    assert counts.get("grouped conv -> BN -> relu6") == 1, report
    assert counts.get("inline channel shuffle (groups=3)") == 1, report
    assert counts.get("conv -> BN -> relu -> channel shuffle (groups=2)") == 1, report
    assert not any("nn.ChannelShuffle" in p for p in counts), report
    assert type(fused[0][0]) is ShuffledConvBNActHead and type(fused[0][3]) is ShuffleFusedIntoConv
    assert isinstance(fused[1], InlineFused) and type(fused[1].conv) is ShuffledConvBNActHead
    assert type(fused[2].conv) is ConvBNActHead
    assert list(fused.state_dict()) == list(plain.state_dict())

    x = torch.randn(2, 6, 5, 4)
    for train in (True, False):  # outputs, input and every parameter gradient, running stats
        assert_same_model(copy.deepcopy(plain), copy.deepcopy(fused), x, train, steps=2)

    # inference: each fused chain is one grouped_conv2d call writing the shuffled output; on
    # CPU, a channels_last output of a conv that conv_bias_act runs through oneDNN (not these
    # tiny ones) takes conv_bias_act then channel_shuffle instead (_fused_on_cpu), forced here
    calls = []
    for op in ("grouped_conv2d", "channel_shuffle"):
        real = getattr(fastblocks.ops, op)
        monkeypatch.setattr(fastblocks.ops, op,
                            lambda *a, _r=real, _n=op: calls.append((_n, a[-1])) or _r(*a))
    # (ChainReadTwice's separate shuffle runs eager on a tiny NCHW tensor, ours on channels_last).
    # Each layout as given: without optimize()'s CPU conversion of NCHW input to channels_last
    bare = copy.deepcopy(fused)
    _cpu_layout.uninstall(bare)
    gconv = [("grouped_conv2d", 3), ("grouped_conv2d", 4)]
    cases = [(torch.contiguous_format, False, gconv),
             (torch.channels_last, False, [("channel_shuffle", 3)] + gconv),
             (torch.channels_last, True, [("channel_shuffle", 3)] * 2 + [("channel_shuffle", 4)])]
    for fmt, force, want in cases:
        if force:  # the ungrouped chain keeps its permuted-weight conv
            monkeypatch.setattr(rule, "_fused_on_cpu", lambda x, conv: conv.groups == 1)
        calls.clear()
        assert_same_model(plain, bare, x.contiguous(memory_format=fmt), train=False,
                          backward=False)
        assert sorted(calls) == sorted(want), (fmt, force, calls)

    back = fastblocks.revert(copy.deepcopy(fused))
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]
    assert not any(k.startswith("_fb") for m in back.modules() for k in m.__dict__)
    assert list(back.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), plain.eval()(x), rtol=0, atol=0)


def test_compile_fullgraph_eval():
    plain = user_model().eval()
    fused = fastblocks.optimize(plain)
    counts = fused.fastblocks_report.counts()
    assert counts.get("grouped conv -> BN -> relu6 -> channel shuffle (groups=4)") == 1, counts
    # aot_eager: dynamo's capture and AOT autograd's tracing through the ops, in seconds
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    assert_same_model(plain, compiled, torch.randn(2, 6, 5, 4), train=False, backward=False)
