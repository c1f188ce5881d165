"""The CUDA kernels of csrc/cuda/squeeze_excite.cu under the CPU emulation of csrc/emu/ (see
test_cuda_emu.py for the method: guarded buffers, NaN-filled outputs, shuffled thread order),
through their launchers, against plain torch (the kernels are the two passes over x of
fastblocks.ops.squeeze_excite; its MLP runs in cuBLAS and is not a kernel here). Covered: the
reduction (sum of x, and sum of grad * x) with 1, 2 and 5 ranges of H*W, including ranges left
empty; the scale with and without the added term, out-of-place and in place (out aliasing a);
NCHW (a warp per plane, several blocks, a partial last block) and NHWC (32-channel blocks with a
partial last one, 8 row lanes meeting in shared memory); all four dtypes; odd sizes."""
from __future__ import annotations

import ctypes

import pytest
import torch

from test_cuda_emu import (DTYPE_CODE, DTYPES, Guarded, _check_launch, _fn, _inputs,  # noqa: F401
                           assert_family_kernels_launched, emu)
from tolerances import assert_parity

pytestmark = pytest.mark.cuda_emu
vp, cint = ctypes.c_void_p, ctypes.c_int


class SeShape(ctypes.Structure):
    """csrc/cuda/launchers.h"""
    _fields_ = [(f, ctypes.c_int64) for f in ("n", "c", "hw", "split")] + [
        ("channels_last", ctypes.c_bool)]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# (N, C, H, W): 74 planes over 10 NCHW blocks (last one partial), 37 channels over two NHWC
# blocks (second partial), 63 rows (two passes of a warp's lanes, eight of the row lanes); a
# small odd map whose 5 ranges of 3 rows leave none empty; a 1x1 map whose ranges are all
# empty but the first
CASES = [(2, 37, 7, 9), (1, 5, 3, 5), (3, 3, 1, 1)]
SPLITS = (1, 2, 5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_squeeze_excite_reduce(emu, case, channels_last, dtype):  # noqa: F811
    n, c, h, w = case
    hw, acc = h * w, _acc(dtype)
    fn = _fn(emu, "squeeze_excite_reduce",
             [vp, vp, vp, ctypes.POINTER(SeShape), ctypes.c_bool, cint, vp])
    a = _inputs((n, c, h, w), dtype, channels_last, scale=4.0)
    b = _inputs((n, c, h, w), dtype, channels_last)
    for split in SPLITS:
        rows = -(-hw // split)
        shape = SeShape(n, c, hw, split, channels_last)
        for product in (False, True):
            out = Guarded((split, n, c), acc)
            _check_launch(emu, fn(a.ptr(), b.ptr() if product else None, out.ptr(),
                                  ctypes.byref(shape), product, DTYPE_CODE[dtype], None))
            assert out.ok(), f"split {split} product {product}: wrote outside out"
            terms = (a.t.double() * b.t.double() if product else a.t.double()).reshape(n, c, hw)
            ref = torch.stack([terms[:, :, k * rows:(k + 1) * rows].sum(-1) for k in range(split)])
            # summed in double whatever the dtype, stored in the accumulation type
            assert_parity(out.t, ref.to(acc), ref, f"split {split} product {product}",
                          reduction=True)
    assert a.ok() and b.ok(), "inputs were written"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", CASES[:2], ids=[str(c) for c in CASES[:2]])
def test_squeeze_excite_scale(emu, case, channels_last, dtype):  # noqa: F811
    n, c, h, w = case
    acc = _acc(dtype)
    fn = _fn(emu, "squeeze_excite_scale", [vp, vp, vp, vp, ctypes.POINTER(SeShape), cint, vp])
    a = _inputs((n, c, h, w), dtype, channels_last, scale=4.0)
    s = _inputs((n, c), acc, False)
    q = _inputs((n, c), acc, False)
    shape = SeShape(n, c, h * w, 1, channels_last)
    for add in (False, True):
        ref = a.t.to(acc) * s.t[:, :, None, None]
        hi = a.t.double() * s.t.double()[:, :, None, None]
        if add:
            ref, hi = ref + q.t[:, :, None, None], hi + q.t.double()[:, :, None, None]
        for in_place in (False, True):
            out = Guarded((n, c, h, w), dtype, channels_last)
            if in_place:
                out.t.copy_(a.t)
            src = out.ptr() if in_place else a.ptr()
            _check_launch(emu, fn(src, s.ptr(), q.ptr() if add else None, out.ptr(),
                                  ctypes.byref(shape), DTYPE_CODE[dtype], None))
            assert out.ok(), f"add {add} in place {in_place}: wrote outside out"
            assert_parity(out.t, ref.to(dtype), hi, f"scale add {add} in place {in_place}")
    assert a.ok() and s.ok() and q.ok(), "inputs were written"


def test_every_kernel_was_launched(emu, request):  # noqa: F811
    """Runs last in this module: every __global__ kernel of squeeze_excite.cu was launched above."""
    assert_family_kernels_launched(emu, request, ("squeeze_excite",),
        {"test_squeeze_excite_reduce": len(CASES) * 2 * len(DTYPES),
         "test_squeeze_excite_scale": 2 * 2 * len(DTYPES)})
