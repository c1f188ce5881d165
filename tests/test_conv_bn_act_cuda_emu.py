"""The CUDA kernels of csrc/cuda/conv_bn_act.cu under the CPU emulation of csrc/emu/ (see
test_cuda_emu.py for the method: guarded buffers, NaN-filled outputs and workspace, shuffled
block and thread order), through their launchers, against eager PyTorch: F.batch_norm with
batch statistics followed by the activation (forward, and its autograd backward), and the
convolution bias add followed by the activation (the inference epilogue).

Covered: the training forward (partial shifted sums, the finalize pass, the normalisation) and
backward (partial sums of g' and g' * (z - mean), its finalize, grad_z; and grad_z skipped)
with 1, 2 and 5 ranges per channel, one of them left empty; NCHW (a block of 256 threads per
channel walking rows across plane borders, planes shorter and longer than the block) and NHWC
(32-channel blocks, a partial last one); the 16-byte packed elementwise passes and the
one-element ones (odd sizes); every activation; fp32/fp16/bf16 and fp64."""
from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

from fastblocks.ops.activation import reference_forward
from test_cuda_emu import (ACTS, DTYPE_CODE, DTYPES, Guarded, _check_launch, _fn,  # noqa: F401
                           _inputs, assert_family_kernels_launched, emu)
from tolerances import assert_parity

pytestmark = pytest.mark.cuda_emu
vp, cint, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
EPS = 1e-5


class BnShape(ctypes.Structure):
    """csrc/cuda/launchers.h"""
    _fields_ = [(f, ctypes.c_int64) for f in ("n", "c", "hw", "split")] + [
        ("channels_last", ctypes.c_bool)]


# (N, C, H, W): NCHW planes of 143 (< 256 threads: a block's rows cross plane borders, 429
# rows in two passes) with odd sizes (one-element passes); 37 channels (two NHWC blocks, the
# second partial) over 12 rows, whose 5 ranges of 3 leave the last empty; planes of 288 (> 256)
# with C and H*W multiples of 8 (16-byte packs in both layouts).
CASES = [(3, 5, 11, 13), (2, 37, 3, 2), (2, 16, 16, 18)]
SPLITS = (1, 2, 5)


def every_case(test):
    """Parametrizes a training-kernel test over CASES x both layouts x DTYPES."""
    for mark in (pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES]),
                 pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"]),
                 pytest.mark.parametrize("dtype", DTYPES, ids=str)):
        test = mark(test)
    return test


def _ws_bytes(emu, shape, dtype) -> int:
    fn = _fn(emu, "bn_act_workspace_bytes", [ctypes.POINTER(BnShape), cint], i64)
    return fn(ctypes.byref(shape), DTYPE_CODE[dtype])


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _act_for(case_idx: int, split_idx: int) -> int:
    """Every activation over the 3 cases x 3 splits."""
    return (case_idx * len(SPLITS) + split_idx) % len(ACTS)


def _bn_inputs(case, channels_last, dtype):
    n, c, h, w = case
    acc = _acc(dtype)
    z = Guarded(case, dtype, channels_last, fill=(torch.randn(case, dtype=torch.float64) * 2 + 3)
                .to(dtype))  # a mean of 1.5 spreads: the pivot matters
    # weights large enough that the normalised values reach every activation's kinks
    weight = Guarded((c,), acc, fill=(torch.rand(c, dtype=torch.float64) * 3 + 0.5).to(acc))
    bias = Guarded((c,), acc, fill=torch.randn(c, dtype=torch.float64).to(acc))
    return z, weight, bias


def _eager(z, weight, bias, act, grad=None):
    """F.batch_norm (batch statistics) + the activation, and its autograd backward w.r.t. z,
    weight and bias for `grad`: (y, (grad_z, grad_weight, grad_bias) or None)."""
    z = z.detach().clone().requires_grad_(grad is not None)
    w = weight.detach().clone().requires_grad_(grad is not None)
    b = bias.detach().clone().requires_grad_(grad is not None)
    y = reference_forward(F.batch_norm(z, None, None, w, b, True, 0.0, EPS), act)
    if grad is None:
        return y, None
    return y, torch.autograd.grad(y, (z, w, b), grad)


@every_case
def test_bn_act_train_forward(emu, case, channels_last, dtype):  # noqa: F811
    n, c, h, w = case
    acc = _acc(dtype)
    fwd = _fn(emu, "bn_act_train_forward",
              [vp] * 7 + [ctypes.POINTER(BnShape), ctypes.c_double, cint, cint, vp])
    z, weight, bias = _bn_inputs(case, channels_last, dtype)
    hi = [t.t.double() for t in (z, weight, bias)]
    for i, split in enumerate(SPLITS):
        act = _act_for(CASES.index(case), i)
        s = BnShape(n, c, h * w, split, channels_last)
        y = Guarded(case, dtype, channels_last)
        mean, invstd = Guarded((c,), acc), Guarded((c,), acc)
        ws = Guarded((_ws_bytes(emu, s, dtype),), torch.uint8)
        _check_launch(emu, fwd(z.ptr(), weight.ptr(), bias.ptr(), y.ptr(), mean.ptr(), invstd.ptr(),
                               ws.ptr(), ctypes.byref(s), EPS, act, DTYPE_CODE[dtype], None))
        what = f"split {split} act {act}"
        assert y.ok() and mean.ok() and invstd.ok() and ws.ok(), f"{what}: wrote outside an output"
        assert_parity(y.t, _eager(z.t, weight.t, bias.t, act)[0], _eager(*hi, act)[0], f"{what} y")
        _, e_mean, e_invstd = torch.ops.aten._native_batch_norm_legit.no_stats(
            z.t, weight.t, bias.t, True, 0.0, EPS)
        var_hi = hi[0].var((0, 2, 3), correction=0)
        assert_parity(mean.t, e_mean, hi[0].mean((0, 2, 3)), f"{what} mean", reduction=True)
        assert_parity(invstd.t, e_invstd, (var_hi + EPS).rsqrt(), f"{what} invstd", reduction=True)
    assert z.ok() and weight.ok() and bias.ok(), "inputs were written"


@every_case
def test_bn_act_train_backward(emu, case, channels_last, dtype):  # noqa: F811
    n, c, h, w = case
    acc = _acc(dtype)
    bwd = _fn(emu, "bn_act_train_backward",
              [vp] * 10 + [ctypes.POINTER(BnShape), cint, cint, vp])
    z, weight, bias = _bn_inputs(case, channels_last, dtype)
    grad = _inputs(case, dtype, channels_last)
    # the forward's saved statistics, as eager computes them
    _, m, istd = torch.ops.aten._native_batch_norm_legit.no_stats(z.t, weight.t, bias.t, True, 0.0, EPS)
    mean, invstd = Guarded((c,), acc, fill=m), Guarded((c,), acc, fill=istd)
    hi = [t.t.double() for t in (z, weight, bias)]
    for i, split in enumerate(SPLITS):
        act = _act_for(CASES.index(case), i)
        with_z = i < len(SPLITS) - 1  # the last split asks for the (C,) gradients only
        s = BnShape(n, c, h * w, split, channels_last)
        gz = Guarded(case, dtype, channels_last)
        gw, gb = Guarded((c,), acc), Guarded((c,), acc)
        ws = Guarded((_ws_bytes(emu, s, dtype),), torch.uint8)
        _check_launch(emu, bwd(grad.ptr(), z.ptr(), weight.ptr(), bias.ptr(), mean.ptr(),
                               invstd.ptr(), gz.ptr() if with_z else None, gw.ptr(), gb.ptr(),
                               ws.ptr(), ctypes.byref(s), act, DTYPE_CODE[dtype], None))
        what = f"split {split} act {act}"
        assert gz.ok() and gw.ok() and gb.ok() and ws.ok(), f"{what}: wrote outside an output"
        _, eager = _eager(z.t, weight.t, bias.t, act, grad.t)
        _, ref = _eager(*hi, act, grad.t.double())
        if with_z:
            assert_parity(gz.t, eager[0], ref[0], f"{what} grad_z")
        else:
            assert torch.isnan(gz.t).all(), f"{what}: grad_z written though not asked for"
        assert_parity(gw.t, eager[1], ref[1], f"{what} grad_weight", reduction=True)
        assert_parity(gb.t, eager[2], ref[2], f"{what} grad_bias", reduction=True)
    assert all(t.ok() for t in (z, weight, bias, grad, mean, invstd)), "inputs were written"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=[str(CASES[0]), str(CASES[2])])
def test_bias_act(emu, case, channels_last, dtype):  # noqa: F811
    n, c, h, w = case
    fn = _fn(emu, "bias_act_forward", [vp, vp, i64, i64, i64, ctypes.c_bool, cint, cint, vp])
    x = torch.randn(case, dtype=torch.float64).mul(4).to(dtype)  # spans every kink
    bias = _inputs((c,), dtype, False)
    for act in ACTS:
        for with_bias in (True, False):
            y = Guarded(case, dtype, channels_last)
            y.t.copy_(x)
            _check_launch(emu, fn(y.ptr(), bias.ptr() if with_bias else None, n, c, h * w,
                                  channels_last, act, DTYPE_CODE[dtype], None))
            assert y.ok(), f"act {act} bias {with_bias}: wrote outside y"
            b = bias.t if with_bias else torch.zeros_like(bias.t)
            eager = reference_forward(x + b[:, None, None], act)
            ref = reference_forward(x.double() + b.double()[:, None, None], act)
            assert_parity(y.t, eager, ref, f"act {act} bias {with_bias}")
    assert bias.ok(), "bias was written"


def test_bn_act_split_fills_the_gpu_and_respects_limits(emu):  # noqa: F811
    """The split heuristic: several ranges for a batch-1 map with few channels, one for a wide
    map, never ranges under the minimum rows, never past gridDim.y's 65535."""
    split = _fn(emu, "bn_act_split", [i64, i64, i64, ctypes.c_bool], i64)
    assert split(1, 32, 112 * 112, False) > 1
    assert split(256, 2048, 49, False) == 1
    assert split(1, 3, 4, True) == 1 and split(1, 3, 4, False) == 1
    assert 1 <= split(1, 1, 2 ** 40, False) <= 65535


def test_every_kernel_was_launched(emu, request):  # noqa: F811
    """Runs last in this module: every __global__ kernel of conv_bn_act.cu was launched above."""
    assert_family_kernels_launched(emu, request, ("conv_bn_act",),
        {"test_bn_act_train_forward": len(CASES) * 2 * len(DTYPES),
         "test_bn_act_train_backward": len(CASES) * 2 * len(DTYPES),
         "test_bias_act": 2 * 2 * len(DTYPES)})
