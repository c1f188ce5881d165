"""optimize() on CPU: NCHW input runs channels_last inside in eval mode, NCHW comes back out
(fastblocks/optimize/_cpu_layout.py), and a model that cannot take channels_last keeps NCHW."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import fastblocks
from fastblocks.optimize import _cpu_layout
from fastblocks.testing import compare


class _Net(nn.Module):
    """conv -> BN -> ReLU, depthwise conv -> BN -> ReLU6 chains, then `head`."""

    def __init__(self, flatten_by_view: bool = False, feature_map: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        # enough fused convs for the conversion to pay (_cpu_layout._MIN_FUSED_CONVS)
        self.dw = nn.Sequential(*[m for _ in range(_cpu_layout._MIN_FUSED_CONVS - 1) for m in (
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())])
        self.fc = nn.Linear(8 * 5 * 5, 4)
        self.flatten_by_view = flatten_by_view
        self.feature_map = feature_map
        self.seen_layouts: list[bool] = []

    def forward(self, x):
        y = self.dw(self.stem(x))
        self.seen_layouts.append(y.is_contiguous(memory_format=torch.channels_last))
        if self.feature_map:
            return {"features": y, "pooled": y.mean((2, 3))}
        # a view merging C with H and W needs NCHW strides; flatten() copies when it must
        y = y.view(y.shape[0], -1) if self.flatten_by_view else torch.flatten(y, 1)
        return self.fc(y)


def assert_same_values(got, plain: nn.Module, x):
    """``got`` (a tensor or a dict of them) against ``plain(x)`` by fastblocks.testing's rule
    for reductions (the float64 model as the high-precision reference)."""
    with torch.no_grad():
        eager = plain(x)
        hi = copy.deepcopy(plain).double()(x.double())
    if isinstance(got, torch.Tensor):
        got, eager, hi = {"out": got}, {"out": eager}, {"out": hi}
    for k in got:
        ok, _, msg = compare(got[k], eager[k], hi[k], reduction=True)
        assert ok, f"{k}: {msg}"


def _pair(**kw):
    torch.manual_seed(0)
    model = _Net(**kw).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    opt = fastblocks.optimize(model)
    opt.seen_layouts.clear()  # torch.fx traced the forward with proxies
    return model, opt


def test_eval_nchw_runs_channels_last_inside_and_returns_nchw():
    model, opt = _pair(feature_map=True)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        out = opt(x)
        out2 = opt(x)
    assert _cpu_layout.enabled(opt) is True
    # the first call tried the model once on channels_last (True), then ran it (True), twice
    assert opt.seen_layouts == [True, True, True]
    for got in (out, out2):
        assert got["features"].is_contiguous()  # the caller's layout comes back
        assert_same_values(got, model, x)


def test_model_that_needs_nchw_strides_keeps_nchw():
    model, opt = _pair(flatten_by_view=True)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        out = opt(x)
    assert _cpu_layout.enabled(opt) is False
    assert "channels_last input" in str(opt.fastblocks_report)
    assert opt.seen_layouts[-1] is False
    assert_same_values(out, model, x)


def test_training_and_channels_last_input_are_left_alone():
    model, opt = _pair()
    opt.train()
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    opt(x).sum().backward()
    assert _cpu_layout.enabled(opt) is None and opt.seen_layouts == [False]
    opt.eval()
    with torch.no_grad():
        opt(torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last))
    assert _cpu_layout.enabled(opt) is None  # already channels_last: nothing to decide


def test_revert_deepcopy_pickle():
    model, opt = _pair()
    x = torch.randn(2, 3, 5, 5)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        with torch.no_grad():
            assert_same_values(clone(x), model, x)
        assert _cpu_layout.enabled(clone) is True
    reverted = fastblocks.revert(opt)
    assert not reverted._forward_pre_hooks and not reverted._forward_hooks
    with torch.no_grad():
        reverted(x)
    assert reverted.seen_layouts[-1] is False


@pytest.mark.parametrize("dtype", [torch.float64])
def test_dtypes_onednn_does_not_serve_stay_nchw(dtype):
    model, opt = _pair()
    opt = opt.to(dtype)
    with torch.no_grad():
        opt(torch.randn(2, 3, 5, 5, dtype=dtype))
    assert _cpu_layout.enabled(opt) is None and opt.seen_layouts == [False]


def test_a_few_fused_convs_keep_nchw():
    """One block's worth of fused convs does not pay for the two conversions."""
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU()).eval()
    opt = fastblocks.optimize(block)
    assert _cpu_layout.enabled(opt) is None and not opt._forward_pre_hooks


def test_batch_of_one_with_small_conv_inputs_keeps_nchw():
    # at batch 1, convolutions reading at most 20480 values per image run NCHW (ATen's own
    # threshold for its native kernel; resnet110_sd at 32x32 measured 0.78x channels_last)
    model, opt = _pair(feature_map=True)
    with torch.no_grad():
        small = opt(torch.randn(1, 3, 8, 8))          # the depthwise conv reads 8x8x8 = 512
        assert opt.seen_layouts == [True, False]      # trial run, then NCHW
        opt(torch.randn(2, 3, 8, 8))                  # a batch of two: channels_last
        x = torch.randn(1, 3, 52, 52)                 # the depthwise conv reads 8x52x52 = 21632
        large = opt(x)
    assert opt.seen_layouts == [True, False, True, True]
    assert _cpu_layout.enabled(opt) is True
    assert small["features"].is_contiguous() and large["features"].is_contiguous()
    assert_same_values(large, model, x)
    assert _cpu_layout.small_convs_only(opt.__dict__[_cpu_layout._STATE], torch.randn(1, 3, 8, 8))
