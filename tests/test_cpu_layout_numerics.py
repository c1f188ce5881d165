"""optimize() on CPU, the numerics of the channels_last layout: a model whose multiply-adds are
mostly long kxk reductions runs those convolutions as eager NCHW does (oneDNN's channels_last
kxk kernel sums them less exactly: fastblocks/ops/_mkldnn_conv.py, ``long_reduction``), the
rest channels_last; a model that is mostly 1x1 stays on oneDNN's channels_last kernels."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.ops import _mkldnn_conv
from fastblocks.optimize import _cpu_layout

CL = torch.channels_last
pytestmark = pytest.mark.skipif(not _mkldnn_conv._AVAILABLE, reason="no oneDNN")


def _unit(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def _net(kernels: list[int], width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(_unit(3, width, 3), *[_unit(width, width, k) for k in kernels])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _units_in_and_out(opt: nn.Module, x: torch.Tensor) -> list[tuple]:
    """(unit, its input, its output) for every conv -> BN -> ReLU unit of one converted call."""
    seen, hooks = [], []
    for unit in list(opt.children()):
        hooks.append(unit.register_forward_hook(
            lambda m, a, y: seen.append((m, a[0].clone(), y.clone()))))
    with torch.no_grad():
        opt(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("threads", [1, 2])
def test_long_kxk_reductions_run_as_eager_nchw(threads):
    """9 conv -> BN -> ReLU units, 8 of them 3x3 on 32 channels (a long reduction): each unit's
    output inside the channels_last run is bit for bit its NCHW run (eager's convolution on the
    folded weight). Before the exact route, oneDNN's channels_last kernel gave other bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        opt = fastblocks.optimize(copy.deepcopy(_net([3] * 8)))
        x = torch.randn(2, 3, 12, 12)
        with torch.no_grad():
            opt(x)
        assert _cpu_layout.enabled(opt) is True
        assert _cpu_layout.exact_long_reductions(opt) is True
        units = _units_in_and_out(opt, x)
        assert len(units) == 9
        for i, (unit, inp, out) in enumerate(units):
            assert inp.is_contiguous(memory_format=CL), "the model runs channels_last inside"
            assert out.is_contiguous(memory_format=CL)
            with torch.no_grad():
                nchw = unit(inp.contiguous())
            assert torch.equal(out, nchw), f"unit {i}: {(out - nchw).abs().max().item():.3g}"
        assert not _mkldnn_conv.exact_reductions(), "the switch ends with the forward"
    finally:
        torch.set_num_threads(before)


def test_mostly_pointwise_model_keeps_onednn_channels_last():
    """Eight 1x1 units and one 3x3 on 32 channels: the long reduction carries under
    _EXACT_MIN_SHARE of the multiply-adds, so nothing changes route."""
    opt = fastblocks.optimize(copy.deepcopy(_net([1] * 8, width=64)))
    with torch.no_grad():
        opt(torch.randn(2, 3, 12, 12))
    assert _cpu_layout.enabled(opt) is True
    assert _cpu_layout.exact_long_reductions(opt) is False


def test_exact_switch_is_scoped_to_the_model_call():
    """The switch is on only while the exact model's forward runs, in that thread, and a call
    that raised leaves nothing on for the next one."""
    opt = fastblocks.optimize(copy.deepcopy(_net([3] * 8)))
    x = torch.randn(2, 3, 12, 12)
    inside = []
    opt[1].register_forward_pre_hook(lambda m, a: inside.append(_mkldnn_conv.exact_reductions()))
    with torch.no_grad():
        opt(x)  # trial run (decides) and the call itself
        opt(x)
    assert inside == [False, True, True]  # the trial run decides, so it ran without
    assert not _mkldnn_conv.exact_reductions()
    boom = opt[2].register_forward_pre_hook(lambda m, a: 1 / 0)
    with pytest.raises(ZeroDivisionError), torch.no_grad():
        opt(x)
    boom.remove()
    with torch.no_grad():
        opt(x.contiguous(memory_format=CL))  # not converted (the caller's layout): clears it
    assert not _mkldnn_conv.exact_reductions()


@pytest.mark.parametrize("cin,exact", [(16, False), (17, True)])
def test_long_reduction_rule(cin, exact):
    assert _mkldnn_conv.long_reduction(torch.empty(8, cin, 3, 3)) is exact
    assert _mkldnn_conv.long_reduction(torch.empty(8, 512, 1, 1)) is False
    assert _mkldnn_conv.long_reduction(torch.empty(8, cin, 1, 7)) is exact


def test_fused_ops_under_the_switch_equal_eager_nchw():
    """conv_pointwise, conv_add_pointwise and runner on a channels_last input, with the switch
    on: eager's NCHW convolution (bit for bit), channels_last out."""
    torch.manual_seed(0)
    x = torch.randn(2, 48, 9, 9).relu().contiguous(memory_format=CL)
    w, b = torch.randn(24, 48, 3, 3) * 0.1, torch.randn(24)
    other = torch.randn(2, 24, 9, 9).contiguous(memory_format=CL)
    args = ([1, 1], [1, 1], [1, 1], 1)
    conv = F.conv2d(x.contiguous(), w, b, 1, 1)
    run = _mkldnn_conv.runner(w, b, *args, 1, x.shape)
    _mkldnn_conv.exact_reductions_on(-1)
    try:
        outs = {"pointwise": (_mkldnn_conv.conv_pointwise(x, w, b, *args, 1), conv.relu()),
                "runner": (run(x), conv.relu()),
                "add": (_mkldnn_conv.conv_add_pointwise(x, other, w, b, *args, 1),
                        (conv + other).relu())}
    finally:
        _mkldnn_conv.exact_reductions_off(-1)
    for name, (got, want) in outs.items():
        assert got.is_contiguous(memory_format=CL), name
        assert torch.equal(got, want), name
    # off again: the runner is oneDNN's channels_last kernel, which sums 48 channels otherwise
    assert not torch.equal(run(x), conv.relu())
