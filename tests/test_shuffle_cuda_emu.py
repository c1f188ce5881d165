"""The CUDA kernels of csrc/cuda/shuffle.cu under the CPU emulation of csrc/emu/ (see
test_cuda_emu.py for the method: guarded buffers, NaN-filled outputs, shuffled thread order),
through their launchers, against the eager reference of fastblocks.ops.shuffle. Covered:
forward of one tensor and of a concatenation, with and without bias, every activation; the
backward with act none/relu/relu6 split in two; both layouts, all four dtypes; NCHW planes
whose size is a multiple of the 16-byte pack (vector path) and not (scalar path)."""
from __future__ import annotations

import ctypes

import pytest
import torch

from fastblocks.ops.shuffle import _reference_backward, _reference_forward
from test_cuda_emu import (DTYPE_CODE, DTYPES, Guarded, _check_launch, _fn, _inputs,  # noqa: F401
                           assert_family_kernels_launched, emu)
from tolerances import assert_parity

pytestmark = pytest.mark.cuda_emu
vp, cint = ctypes.c_void_p, ctypes.c_int


class ShuffleShape(ctypes.Structure):
    """csrc/include/fastblocks/shuffle_shape.h"""
    _fields_ = [(f, ctypes.c_int64) for f in
                ("n", "c", "hw", "split", "groups", "sn0", "sc0", "sp0", "sn1", "sc1", "sp1")] + [
                    ("channels_last", ctypes.c_bool)]


def _strides(c, hw, cl):
    return (hw * c, 1, c) if cl else (c * hw, hw, 1)


# (N, Ca, Cb, H, W, groups): ShuffleNet v2's halves with packable planes (4x4), a lone tensor
# with g = 3 on odd planes (scalar path), a concat with an uneven split and g = 4
CASES = [(2, 6, 6, 4, 4, 2), (2, 9, 0, 3, 5, 3), (1, 5, 7, 2, 4, 4)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_shuffle(emu, case, channels_last, dtype):  # noqa: F811
    n, ca, cb, h, w, g = case
    c, hw = ca + cb, h * w
    fwd = _fn(emu, "channel_shuffle_forward", [vp, vp, vp, vp, ctypes.POINTER(ShuffleShape), cint, cint, vp])
    bwd = _fn(emu, "channel_shuffle_backward", [vp, vp, vp, vp, ctypes.POINTER(ShuffleShape), cint, cint, vp])
    a = _inputs((n, ca, h, w), dtype, channels_last, scale=4.0)
    b = _inputs((n, cb, h, w), dtype, channels_last, scale=4.0) if cb else None
    bias = _inputs((c,), dtype, False)
    shape = ShuffleShape(n, c, hw, ca, g, *_strides(ca, hw, channels_last),
                         *_strides(cb, hw, channels_last), channels_last)
    for act in range(6):
        for with_bias in (False, True):
            y = Guarded((n, c, h, w), dtype, channels_last)
            _check_launch(emu, fwd(a.ptr(), b.ptr() if b else None, bias.ptr() if with_bias else None,
                                   y.ptr(), ctypes.byref(shape), act, DTYPE_CODE[dtype], None))
            assert y.ok(), f"act {act}: forward wrote outside y"
            args = (a.t, None if b is None else b.t, bias.t if with_bias else None)
            ref = _reference_forward(*args, g, act, channels_last)
            hi = _reference_forward(*[None if t is None else t.double() for t in args], g, act, channels_last)
            assert_parity(y.t, ref, hi, f"forward act {act} bias {with_bias}")
    grad = _inputs((n, c, h, w), dtype, channels_last)
    yv = _inputs((n, c, h, w), dtype, channels_last, scale=4.0)
    out_shape = ShuffleShape(n, c, hw, ca, g, *_strides(ca, hw, channels_last),
                             *_strides(cb, hw, channels_last), channels_last)
    for act in (0, 1, 2):
        ga, gb = Guarded((n, ca, h, w), dtype, channels_last), Guarded((n, cb, h, w), dtype, channels_last)
        _check_launch(emu, bwd(grad.ptr(), yv.ptr() if act else None, ga.ptr(), gb.ptr(),
                               ctypes.byref(out_shape), act, DTYPE_CODE[dtype], None))
        assert ga.ok() and gb.ok(), f"act {act}: backward wrote outside its outputs"
        ra, rb = _reference_backward(grad.t, yv.t, ca, g, act, channels_last)
        torch.testing.assert_close(ga.t, ra, rtol=0, atol=0, equal_nan=True, msg=f"grad a act {act}")
        torch.testing.assert_close(gb.t, rb, rtol=0, atol=0, equal_nan=True, msg=f"grad b act {act}")
    assert a.ok() and grad.ok() and yv.ok() and bias.ok(), "inputs were written"


def test_every_kernel_was_launched(emu, request):  # noqa: F811
    """Runs last in this module: every __global__ kernel of shuffle.cu was launched above."""
    assert_family_kernels_launched(emu, request, ("shuffle",),
        {"test_shuffle": len(CASES) * 2 * len(DTYPES)})
