"""optimize()'s inverted-residual rule on the zoo's MobileNetV2 (rules/chain_inverted_residual.py)."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch

import fastblocks
from fastblocks.models import create_model
from fastblocks.testing import compare
from fastblocks.optimize.rules.chain_inverted_residual import FusedInvertedResidual

pytestmark = pytest.mark.skipif(
    fastblocks._extension.C_ERROR is not None
    or not hasattr(torch.ops.fastblocks_C, "inverted_residual_forward"),
    reason="fastblocks._C without inverted_residual_forward")


def _model():
    torch.manual_seed(0)
    m = create_model("mobilenet_v2", fused=False, num_classes=10, width_mult=0.35)
    with torch.no_grad():  # non-trivial BN statistics, so the fold matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def _assert_parity(out, model, x):
    """The project's tolerance rule (fastblocks.testing.compare): assert_close defaults against
    eager fp32, or, as for long reductions (the fused block folds BN and sums in another
    order), a float64 error at most LOWP_FACTOR times eager's own."""
    with torch.no_grad():
        want = model(x)
        hi = copy.deepcopy(model).double()(x.detach().double())
    ok, err, msg = compare(out, want, hi, reduction=True)
    assert ok, msg


def test_mobilenet_v2_blocks_run_fused_in_eval(monkeypatch):
    m = _model()
    opt = fastblocks.optimize(m)
    blocks = [b for b in opt.modules() if isinstance(b, FusedInvertedResidual)]
    assert len(blocks) == 17
    assert any("inverted residual" in k for k in opt.fastblocks_report.counts())
    calls = []
    real = fastblocks.ops.inverted_residual

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(fastblocks.ops, "inverted_residual", spy)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = opt(x)
    assert calls, "no block ran the fused op"
    _assert_parity(out, m, x)
    # gradients requested: the per-chain path, same values
    x.requires_grad_(True)
    n = len(calls)
    _assert_parity(opt(x), m, x)
    assert len(calls) == n


def test_train_mode_revert_and_state_dict():
    m = _model()
    keys = list(m.state_dict())
    opt = fastblocks.optimize(m)
    assert list(opt.state_dict()) == keys
    ref = fastblocks.optimize(m)
    ref.train(), opt.train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    a = opt(x)
    torch.manual_seed(1)
    b = ref(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(opt.state_dict(), ref.state_dict())
    back = fastblocks.revert(opt)
    assert not any(isinstance(b, FusedInvertedResidual) for b in back.modules())
    assert [type(b) for b in back.modules()] == [type(b) for b in m.modules()]
    assert list(back.state_dict()) == keys


def test_compiled_block_runs_the_fused_op(monkeypatch):
    """Under torch.compile an eval block calls the fused op, on channels_last, in one graph."""
    rule = importlib.import_module("fastblocks.optimize.rules.chain_inverted_residual")
    block = _model().features[2]  # expand -> depthwise (stride 2) -> project
    opt = fastblocks.optimize(block)
    assert isinstance(opt, FusedInvertedResidual)
    seen = []
    real = rule._ir_op

    def spy(x, *args):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return real(x, *args)
    monkeypatch.setattr(rule, "_ir_op", spy)
    x = torch.randn(2, 8, 20, 20)  # a batch of 2 and N * H * W >= 28 * 28: fused under compile
    with torch.no_grad():
        out = torch.compile(opt, fullgraph=True, backend="aot_eager")(x)
    assert seen == [True]
    _assert_parity(out, block, x)


def _pack_calls(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name == "fastblocks_C::pointwise_pack" for e in prof.events())


def test_eval_packs_the_1x1_weights_once_and_again_after_a_change():
    """The blocks' 1x1 weights are packed for the kernel's GEMM with the fold and reused (no
    pointwise_pack in later calls); `weight.data = t` on an expand conv refolds and repacks
    that block, and the output follows eager's."""
    m = _model()
    opt = fastblocks.optimize(copy.deepcopy(m))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _pack_calls(lambda: opt(x)) == 2 * 16 + 1  # 16 blocks expand, the first not
        assert _pack_calls(lambda: opt(x)) == 0
        new = torch.randn_like(m.features[3].conv[0][0].weight)
        m.features[3].conv[0][0].weight.data = new.clone()
        opt.features[3].conv[0][0].weight.data = new.clone()
        assert _pack_calls(lambda: _assert_parity(opt(x), m, x)) == 2


def test_compile_with_freezing_folds_the_packing(monkeypatch):
    """Under torch.compile with inductor's freezing the packed weights are constants: a
    compiled call runs the fused op on packed weights and no pointwise_pack."""
    import torch._inductor.config as inductor_config
    ir = importlib.import_module("fastblocks.ops.inverted_residual")
    block = _model().features[3]
    opt = torch.compile(fastblocks.optimize(copy.deepcopy(block)))
    x = torch.randn(2, 8, 20, 20)  # N * H * W >= 28 * 28: fused under compile
    got = []
    real = ir._impl

    def spy(*args):
        got.append(args[13:])  # packed_expand, packed_project
        return real(*args)
    monkeypatch.setattr(ir, "_impl", spy)
    with torch.no_grad(), inductor_config.patch(freezing=True):
        opt(x)
        got.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = opt(x)
    assert len(got) == 1 and len(got[0]) == 2 and all(p is not None for p in got[0])
    assert "fastblocks_C::pointwise_pack" not in [e.name for e in prof.events()]
    _assert_parity(out, block, x)


def test_efficientnet_lite_blocks_with_stochastic_depth_run_fused():
    """EfficientNet-Lite's MBConv adds x to stochastic_depth(block(x)) (identity in eval): all
    16 blocks match, the 9 residual ones included, and run the fused op in eval; with the
    stochastic depth module alone put in training mode its block runs its own forward."""
    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", fused=False, num_classes=10).eval()
    opt = fastblocks.optimize(copy.deepcopy(m))
    counts = opt.fastblocks_report.counts()
    assert counts.get("inverted residual (expand -> depthwise -> project -> + x)") == 9
    assert sum(isinstance(b, FusedInvertedResidual) for b in opt.modules()) == 16
    x = torch.randn(2, 3, 64, 64)
    calls = _count_fused_calls(opt, x)
    assert calls == 16
    _assert_parity(opt(x), m, x)
    block = next(b for b in opt.modules()
                 if isinstance(b, FusedInvertedResidual) and b.__dict__["_fb_ir"][3])
    block.stochastic_depth.train()
    assert _count_fused_calls(opt, x) == 15


def _count_fused_calls(model, x) -> int:
    """Eager calls of the fused op in one no-grad forward (after one that lets the CPU layout
    hook make its trial run)."""
    rule = importlib.import_module("fastblocks.optimize.rules.chain_inverted_residual")
    with torch.no_grad():
        model(x)
    real, calls = rule._ir_impl, []
    rule._ir_impl = lambda *a: calls.append(1) or real(*a)
    try:
        with torch.no_grad():
            model(x)
    finally:
        rule._ir_impl = real
    return len(calls)


class _UserBlock(torch.nn.Module):
    """A user's inverted residual whose residual branch ends in a dropout and an nn.Identity."""

    def __init__(self, tail):
        super().__init__()
        c = 8
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(c, 4 * c, 1, bias=False), torch.nn.BatchNorm2d(4 * c), torch.nn.ReLU6(),
            torch.nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c, bias=False),
            torch.nn.BatchNorm2d(4 * c), torch.nn.ReLU6(),
            torch.nn.Conv2d(4 * c, c, 1, bias=False), torch.nn.BatchNorm2d(c), *tail)

    def forward(self, x):
        return x + self.body(x)


@pytest.mark.parametrize("tail,fused", [
    ((torch.nn.Dropout(0.3), torch.nn.Identity()), True),
    ((torch.nn.Dropout(0.3), torch.nn.ReLU()), False),  # not an identity: no match
], ids=["dropout-identity", "relu-after-bn"])
def test_user_block_with_eval_identity_tail(tail, fused):
    torch.manual_seed(0)
    m = torch.nn.Sequential(_UserBlock(tail)).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
    opt = fastblocks.optimize(copy.deepcopy(m))
    assert isinstance(opt[0], FusedInvertedResidual) == fused
    # channels_last: a lone block is not run channels_last by optimize()'s CPU layout hook
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    assert _count_fused_calls(opt, x) == int(fused)
    _assert_parity(opt(x), m, x)
