"""fastblocks.optimize / revert on user-style modules: what is swapped, exact parity with the
eager model (forward and every gradient, train and eval), state_dict compatibility both ways,
train/eval switching with running statistics, and revert."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.models._blocks import ConvNormActivation
from fastblocks.optimize.rules.activation import SwappedActivation
from fastblocks.optimize._inline_module import InlineFused
from fastblocks.optimize.rules.conv_bn_act import ConvBNActHead

from _optimize_helpers import assert_same_model, one_thread  # noqa: F401 (autouse fixture)


class Swish(nn.Module):  # a library's own swish: recognised by behaviour, not by name
    def forward(self, x):
        return x * torch.sigmoid(x)


class HSwish(nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class NotAnActivation(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x) + 1e-3


class CustomTrio(nn.Module):
    """conv/bn/act under attribute names of the user's choosing, registered out of order."""

    def __init__(self, cin, cout, groups=1, act=None):
        super().__init__()
        self.gate = act if act is not None else HSwish()
        self.norm_layer = nn.BatchNorm2d(cout)
        self.spatial = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False)

    def forward(self, x):
        return self.gate(self.norm_layer(self.spatial(x)))


class InlineBlock(nn.Module):
    """Inline activation and an SE computed in forward, around a conv/bn trio and a residual."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Conv2d(c, 4, 1)
        self.fc2 = nn.Conv2d(4, c, 1)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.hardswish(self.bn(self.dw(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        y = y * s
        z = self.bn2(self.pw(y))
        return x + z * torch.sigmoid(z)


class InlineComposites(nn.Module):
    """Composite activations written out, on a conv without BN (not a chain): rewritten to one
    activation each; and a shared activation module after a fused chain: moved into it."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        a = y * F.relu6(y + 3.0) / 6.0               # hardswish
        b = torch.mul(torch.sigmoid(a), a)           # silu
        c = F.hardtanh(b + 3, 0.0, 6.0) / 6          # hardsigmoid
        return self.relu(self.bn2(self.conv2(c))) + self.relu(x)


class Untraceable(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU6()

    def forward(self, x):
        if x.sum() > -1e30:
            x = self.act(self.bn(self.conv(x)))
        return x


class BNUsedTwice(nn.Module):
    """A conv whose output is used twice, and a BN output reused after the act: no chain
    may swallow either."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.Hardswish()
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act2 = nn.ReLU6()

    def forward(self, x):
        y = self.conv(x)
        a = self.act(self.bn(y)) + y
        b = self.bn2(self.conv2(a))
        return self.act2(b) + b


def user_model():
    shared_act = nn.ReLU6()
    return nn.Sequential(
        ConvNormActivation(3, 16, 3, stride=2, activation_layer=nn.Hardswish),
        CustomTrio(16, 16, groups=16, act=Swish()),
        CustomTrio(16, 24),
        InlineBlock(24),
        InlineComposites(24),
        Untraceable(24),
        BNUsedTwice(24),
        nn.Conv2d(24, 24, 5, padding=2, groups=24),          # standalone depthwise
        HSwish(),                                             # standalone custom activation
        nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), shared_act,
        nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), shared_act,
        NotAnActivation(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_swaps_and_report():
    model = user_model()
    fused = fastblocks.optimize(model)
    counts = fused.fastblocks_report.counts()
    assert counts["conv -> BN -> hardswish"] == 2      # ConvNormActivation, CustomTrio(HSwish)
    assert counts["depthwise conv -> BN -> silu"] == 1  # CustomTrio(Swish)
    assert counts["depthwise conv"] == 1
    assert counts["activation hardswish (HSwish)"] == 1
    # the ReLU6 shared by two places is never fused away; its chains stop at the BN
    assert counts["conv -> BN -> identity"] == 2
    assert counts["grouped conv -> BN -> identity"] == 1
    assert counts["conv -> BN -> relu6"] == 1          # Untraceable, proven by a probe
    assert isinstance(fused[11], SwappedActivation) and fused[11] is fused[14]
    assert isinstance(fused[15], NotAnActivation)
    # BNUsedTwice: conv's output has two users: not a chain; conv2 -> bn2 yes, act2 no
    assert type(fused[6].conv) is nn.Conv2d and isinstance(fused[6].conv2, ConvBNActHead)
    assert isinstance(fused[6].act2, SwappedActivation)  # standalone, not fused away
    assert isinstance(fused[8], SwappedActivation)
    # inline code (torch.fx): InlineBlock's F.hardswish and z * sigmoid(z) moved into its
    # chains; InlineComposites' written-out activations became one op each
    assert isinstance(fused[3], InlineFused) and isinstance(fused[4], InlineFused)
    assert counts["depthwise conv -> BN -> hardswish (inline)"] == 1
    assert counts["conv -> BN -> silu (inline)"] == 1
    assert counts["depthwise conv -> BN -> relu (inline)"] == 1  # InlineComposites' shared ReLU
    for name, n in (("hardswish", 4), ("silu", 2), ("hardsigmoid", 3)):
        assert counts[f"inline {name} ({n} ops -> 1)"] == 1
    text = str(fused.fastblocks_report)
    assert "could not trace Untraceable" in text and "left eager" in text
    assert model[0][0].__class__ is nn.Conv2d  # not inplace: the argument is untouched


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_parity_forward_backward(train):
    model = user_model()
    _randomize_bn(model)
    fused = fastblocks.optimize(model)
    assert_same_model(model, fused, torch.randn(2, 3, 16, 16), train=train, steps=2)


def test_named_parameters_and_state_dict_unchanged():
    model = user_model()
    before = [(n, p) for n, p in model.named_parameters()]
    buffers = [(n, b) for n, b in model.named_buffers()]
    fastblocks.optimize(model, inplace=True)
    assert [(n, id(p)) for n, p in model.named_parameters()] == [(n, id(p)) for n, p in before]
    assert [(n, id(b)) for n, b in model.named_buffers()] == [(n, id(b)) for n, b in buffers]


def test_state_dict_round_trips_both_ways():
    plain = user_model()
    _randomize_bn(plain)
    fused = fastblocks.optimize(user_model())
    fused.load_state_dict(plain.state_dict())           # eager checkpoint -> optimized model
    x = torch.randn(2, 3, 16, 16)
    plain.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x))
    other = user_model()
    other.load_state_dict(fused.state_dict())           # optimized checkpoint -> eager model
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), plain(x))
    # optimizer state too (indexed by parameter order)
    opt = torch.optim.SGD(fused.parameters(), lr=0.1, momentum=0.9)
    fused.train()
    fused(x).sum().backward()
    opt.step()
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())


def test_train_eval_switching_updates_running_stats_exactly():
    plain = user_model()
    fused = fastblocks.optimize(plain)
    popt = torch.optim.SGD(plain.parameters(), lr=0.05)
    fopt = torch.optim.SGD(fused.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for step in range(4):
        x = torch.randn(4, 3, 16, 16, generator=gen)
        for m, opt in ((plain, popt), (fused, fopt)):
            m.train()
            opt.zero_grad()
            torch.manual_seed(step)
            m(x).square().mean().backward()
            opt.step()
        # eval in between: the fold must follow the new weights and running statistics
        plain.eval(), fused.eval()
        with torch.no_grad():
            torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-4)
    sd_p, sd_f = plain.state_dict(), fused.state_dict()
    for k in sd_p:
        torch.testing.assert_close(sd_f[k], sd_p[k], atol=1e-5, rtol=1e-4, msg=k)
    nbt = [v for k, v in sd_f.items() if k.endswith("num_batches_tracked")]
    assert nbt and all(int(v) == 4 for v in nbt)


def test_momentum_none_and_no_running_stats():
    def make():
        return nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8, momentum=None),
                             nn.SiLU(), nn.Conv2d(8, 8, 3, groups=8),
                             nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU6())
    plain = make()
    fused = fastblocks.optimize(plain)
    assert fused.fastblocks_report.counts()["depthwise conv -> BN -> relu6"] == 1
    assert_same_model(plain, fused, torch.randn(2, 3, 9, 9), train=True, steps=3)
    assert_same_model(plain, fused, torch.randn(2, 3, 9, 9), train=False)


def test_revert_gives_plain_modules():
    plain = user_model()
    fused = fastblocks.optimize(plain)
    back = fastblocks.revert(copy.deepcopy(fused))
    types_plain = [type(m) for m in plain.modules()]
    assert [type(m) for m in back.modules()] == types_plain
    assert not hasattr(back, "fastblocks_report")
    for m in back.modules():
        assert not any(k.startswith("_fastblocks") or k.startswith("_fb_") or k == "_fold_cache"
                       for k in m.__dict__)
    x = torch.randn(2, 3, 16, 16)
    plain.eval(), back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), plain(x))
    # and optimize again after revert
    again = fastblocks.optimize(back)
    assert again.fastblocks_report.counts() == fused.fastblocks_report.counts()


def test_optimize_twice_is_harmless():
    fused = fastblocks.optimize(user_model())
    twice = fastblocks.optimize(fused)
    assert not twice.fastblocks_report.counts()


def test_bad_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fastblocks.optimize("resnet")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fastblocks.revert(None)


class StochasticBranch(nn.Module):
    """The branch taken depends on torch.rand at run time and on the mode: a trace sees one
    branch only, so the block must not be rewritten from it (and the trace must not use up
    random numbers)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        if self.training and torch.rand(()) < 0.5:
            return self.relu(x)
        out = self.bn(self.conv(x))
        if not self.training:
            out = out * 0.5
        return self.relu(out + x)


def test_block_with_random_or_mode_dependent_branches():
    plain = nn.Sequential(StochasticBranch(8), StochasticBranch(8))
    state = torch.random.get_rng_state()
    fused = fastblocks.optimize(plain)
    assert torch.equal(torch.random.get_rng_state(), state)  # tracing and probes drew nothing
    assert not any(isinstance(m, InlineFused) for m in fused.modules())
    assert "outside the traced graph (rand)" in str(fused.fastblocks_report)
    x = torch.randn(2, 8, 6, 6)
    for train in (True, False, True):
        assert_same_model(plain, fused, x, train=train, steps=3)


def test_standalone_depthwise_runs_aten_on_nchw_cpu_and_ours_on_channels_last(monkeypatch):
    """A depthwise conv with nothing fused into it is swapped (report, revert) but runs ATen's
    convolution on NCHW CPU input (rules/depthwise.py StandaloneDepthwiseConv2d says why) and
    fastblocks' kernel on channels_last; both equal the plain conv."""
    from fastblocks import ops
    from fastblocks.optimize.rules.depthwise import StandaloneDepthwiseConv2d
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten()).eval()
    fused = fastblocks.optimize(plain)
    assert fused.fastblocks_report.counts()["depthwise conv"] == 1
    assert isinstance(fused[0], StandaloneDepthwiseConv2d)
    calls = []
    real = ops.depthwise_conv2d
    monkeypatch.setattr(ops, "depthwise_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x))
        assert not calls
        xc = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused(xc), plain(xc))
        assert calls
    assert type(fastblocks.revert(fused)[0]) is nn.Conv2d
