"""The CUDA kernels of csrc/cuda/*.cu, compiled for the CPU by the emulation of csrc/emu/
(each block's threads as fibers meeting at __syncthreads, shuffled block and thread order),
run through their launchers on CPU tensors and compared with the eager reference by the rule
of fastblocks.testing. CI has no GPU: this is where the CUDA kernels' arithmetic, indexing and
barriers are tested; speed, real concurrency and the memory model are not (bench/gpu_session.sh).

Every output buffer sits between guard bytes (0x5A) and starts out NaN, every input between
0xFF bytes (NaN in every float dtype): a kernel that writes outside its output fails the guard
check, one that leaves an element unwritten or reads outside its inputs fails the comparison.

Covered: every launcher of the activation and depthwise families; every activation, forward and
backward, vectorized and scalar (misaligned) paths; depthwise forward with every fused
activation, input and weight gradients, on shapes chosen to reach each kernel of the depthwise
family (csrc/cuda/depthwise_*.cu and depthwise_conv.cuh: NCHW tiled fixed 3/5/7 and
runtime-size, multi-tile; NHWC 1- and 2-channel packs, fixed and runtime-size; the flipped
stride-1 input gradient, the stride-2 and generic gathers; the NCHW, NHWC and generic
weight-gradient reductions; the int64 direct fallbacks), both layouts, all four dtypes.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

from fastblocks.ops.activation import reference_backward, reference_forward
from fastblocks.ops.depthwise import (_reference_backward_input, _reference_backward_weight,
                                      _reference_forward)
from tolerances import assert_parity

pytestmark = pytest.mark.cuda_emu

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_emu", ROOT / "csrc" / "emu" / "cuda_emu.py")
cuda_emu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_emu)

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ACTS = range(6)  # fastblocks/ops/_activation_codes.py
GUARD = 64  # guard bytes each side of a buffer (keeps 16-byte alignment)
OUT_GUARD = 0x5A
vp, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@pytest.fixture(scope="module")
def emu():
    try:
        lib = cuda_emu.load()
    except cuda_emu.EmuUnavailable as exc:
        pytest.skip(f"CUDA emulation cannot be built here: {exc}")
    lib.seed(1234)
    yield lib
    # bench/where_ran.py --record asks for the kernels this run launched (README table)
    log = os.environ.get("FASTBLOCKS_EMU_LAUNCH_LOG")
    if log:
        Path(log).write_text(json.dumps(lib.launched(), indent=1, sort_keys=True) + "\n")


def _fn(lib, name, argtypes, restype=cint):
    f = lib.launcher(name)
    f.argtypes, f.restype = argtypes, restype
    return f


def _check_launch(lib, err: int) -> None:
    assert err == 0, f"launch failed: cudaError {err}: {lib.last_message()}"


class Guarded:
    """A tensor in the middle of a byte buffer whose `GUARD` bytes each side (plus `shift`
    bytes of misalignment) hold one byte value; `ok()` says whether they still do. Inputs
    (`fill` given) are guarded by 0xFF, NaN in every float dtype, so reading past them
    poisons the result; outputs start as NaN (0xFF) inside and are guarded by OUT_GUARD, a
    value no kernel writes by copying an input's guard (a NaN copied past the end of an
    output would be invisible against a NaN guard)."""

    def __init__(self, shape, dtype, channels_last=False, shift=0, fill=None):
        self.byte = 0xFF if fill is not None else OUT_GUARD
        elem = torch.empty((), dtype=dtype).element_size()
        numel = 1
        for s in shape:
            numel *= s
        self.lo, self.hi = GUARD + shift, GUARD + shift + numel * elem
        self.buf = torch.full((self.hi + GUARD,), self.byte, dtype=torch.uint8)
        self.buf[self.lo:self.hi] = 0xFF
        flat = self.buf[self.lo:self.hi].view(dtype)
        if channels_last:
            n, c, h, w = shape
            self.t = flat.view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            self.t = flat.view(shape)
        if fill is not None:
            self.t.copy_(fill)

    def ptr(self) -> int:
        return self.buf.data_ptr() + self.lo

    def ok(self) -> bool:
        return bool((self.buf[:self.lo] == self.byte).all() and
                    (self.buf[self.hi:] == self.byte).all())


def _inputs(shape, dtype, channels_last, shift=0, scale=1.0):
    x = torch.randn(shape, dtype=torch.float64) * scale
    g = Guarded(shape, dtype, channels_last, shift, fill=x.to(dtype))
    return g


def _hi(t: torch.Tensor) -> torch.Tensor:
    return t.double()


# ---- activation ------------------------------------------------------------------------------

ACT_SHAPE = (2, 13, 11, 9)  # 2574 elements: several blocks, a tail for every pack width


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shift", [0, 2], ids=["aligned", "misaligned"])
def test_activation(emu, dtype, channels_last, shift):
    fwd = _fn(emu, "activation_forward", [vp, vp, i64, cint, cint, vp])
    bwd = _fn(emu, "activation_backward", [vp, vp, vp, i64, cint, cint, vp])
    if shift % torch.empty((), dtype=dtype).element_size():
        pytest.skip("a shift must keep element alignment")
    x = _inputs(ACT_SHAPE, dtype, channels_last, shift, scale=4.0)  # spans every kink
    g = _inputs(ACT_SHAPE, dtype, channels_last, shift)
    n = x.t.numel()
    for act in ACTS:
        y = Guarded(ACT_SHAPE, dtype, channels_last, shift)
        _check_launch(emu, fwd(x.ptr(), y.ptr(), n, act, DTYPE_CODE[dtype], None))
        assert y.ok(), f"act {act}: forward wrote outside y"
        assert_parity(y.t, reference_forward(x.t, act), reference_forward(_hi(x.t), act),
                      f"act {act} forward")
        gx = Guarded(ACT_SHAPE, dtype, channels_last, shift)
        _check_launch(emu, bwd(g.ptr(), x.ptr(), gx.ptr(), n, act, DTYPE_CODE[dtype], None))
        assert gx.ok(), f"act {act}: backward wrote outside grad_x"
        assert_parity(gx.t, reference_backward(g.t, x.t, act),
                      reference_backward(_hi(g.t), _hi(x.t), act), f"act {act} backward")
    assert x.ok() and g.ok(), "inputs were written"


# ---- depthwise -------------------------------------------------------------------------------

class DepthwiseShape(ctypes.Structure):
    """csrc/include/fastblocks/depthwise_shape.h"""
    _fields_ = [(f, ctypes.c_int64) for f in
                ("n", "c", "h", "w", "mult", "oh", "ow", "kh", "kw", "stride_h", "stride_w",
                 "pad_h", "pad_w", "dil_h", "dil_w")] + [("channels_last", ctypes.c_bool)]


# (N, C, H, W, mult, (KH, KW), stride, padding, dilation): the kernel each reaches, by layout.
DW_CASES = {
    # NCHW: tiled fixed 3x3 s1; NHWC: 2-channel packs; grad_x: flipped conv; grad_w: fixed
    "k3s1": (2, 6, 13, 11, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    # odd C (NHWC 1-channel), stride 2: grad_x by the stride-2 gather
    "k5s2": (2, 5, 15, 14, 1, (5, 5), (2, 2), (2, 2), (1, 1)),
    # channel multiplier 2: 1-channel packs, gather, weight gradient over 2 outputs per input
    "k3s2m2": (1, 4, 9, 10, 2, (3, 3), (2, 2), (1, 1), (1, 1)),
    # 7x7: NHWC 1-channel even for even C (register limit), flipped 7x7 in both layouts
    "k7s1": (2, 4, 11, 9, 1, (7, 7), (1, 1), (3, 3), (1, 1)),
    # runtime sizes: 1x5 with dilation and stride (1, 2): runtime-size tiles, generic gather
    # and generic weight gradient
    "k1x5": (1, 6, 10, 12, 1, (1, 5), (1, 2), (0, 2), (2, 1)),
    # several tiles per plane in both dims (OW 70 = 3 x 24 columns, OH 40 = 2 tiles of rows)
    "multitile": (1, 3, 40, 70, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    # NCHW: a 6 x 6005 input tile exceeds shared memory: the int64 direct kernel, and the
    # flipped conv falls back to the generic gather
    "direct": (1, 3, 6, 5, 1, (3, 3), (1, 1), (1, 3000), (1, 3000)),
    # coordinates past 2^27 (stride 2^21): int64 kernels in both layouts
    "int64": (1, 3, 5, 5, 1, (3, 3), (1, 2 ** 21), (1, 1), (1, 1)),
}


def _dw_shape(case, channels_last):
    n, c, h, w, m, (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return DepthwiseShape(n, c, h, w, m, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, channels_last)


def _dw_fns(emu):
    sp = ctypes.POINTER(DepthwiseShape)
    return (_fn(emu, "depthwise_forward", [vp, vp, vp, vp, sp, cint, cint, vp]),
            _fn(emu, "depthwise_backward_input", [vp, vp, vp, sp, cint, vp]),
            _fn(emu, "depthwise_backward_weight", [vp, vp, vp, vp, sp, cint, vp]),
            _fn(emu, "depthwise_backward_weight_workspace", [sp], i64))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("case", list(DW_CASES), ids=list(DW_CASES))
def test_depthwise(emu, case, channels_last, dtype):
    forward, backward_input, backward_weight, workspace = _dw_fns(emu)
    s = _dw_shape(DW_CASES[case], channels_last)
    code = DTYPE_CODE[dtype]
    oc = s.c * s.mult
    # The references get the same geometry, except that a stride along a dimension with one
    # output is capped at the padded input size (the same output): eager's bf16 CPU
    # convolution_backward segfaults with stride 2^21 (torch 2.13.0+cpu).
    ref_stride = tuple(st if o > 1 else min(st, size + 2 * p) for st, o, size, p in
                       ((s.stride_h, s.oh, s.h, s.pad_h), (s.stride_w, s.ow, s.w, s.pad_w)))
    geo = dict(stride=ref_stride, padding=(s.pad_h, s.pad_w), dilation=(s.dil_h, s.dil_w))
    x = _inputs((s.n, s.c, s.h, s.w), dtype, channels_last)
    w = _inputs((oc, 1, s.kh, s.kw), dtype, False)
    b = _inputs((oc,), dtype, False)
    grad = _inputs((s.n, oc, s.oh, s.ow), dtype, channels_last)

    # Forward with its fused activation: all six on the first case, one (rotating) elsewhere.
    acts = ACTS if case == "k3s1" else [list(DW_CASES).index(case) % 6]
    for act in acts:
        y = Guarded((s.n, oc, s.oh, s.ow), dtype, channels_last)
        _check_launch(emu, forward(x.ptr(), w.ptr(), b.ptr(), y.ptr(), ctypes.byref(s), act, code,
                                   None))
        assert y.ok(), "forward wrote outside y"
        args = (geo["stride"], geo["padding"], geo["dilation"], (s.oh, s.ow), act, channels_last)
        assert_parity(y.t, _reference_forward(x.t, w.t, b.t, *args),
                      _reference_forward(_hi(x.t), _hi(w.t), _hi(b.t), *args), f"forward act {act}")

    gx = Guarded((s.n, s.c, s.h, s.w), dtype, channels_last)
    _check_launch(emu, backward_input(grad.ptr(), w.ptr(), gx.ptr(), ctypes.byref(s), code, None))
    assert gx.ok(), "backward_input wrote outside grad_x"
    args = ((s.c, s.h, s.w), geo["stride"], geo["padding"], geo["dilation"], channels_last)
    assert_parity(gx.t, _reference_backward_input(grad.t, w.t, *args),
                  _reference_backward_input(_hi(grad.t), _hi(w.t), *args), "grad_x")

    ws = Guarded((max(workspace(ctypes.byref(s)), 1),), torch.uint8)
    gw = Guarded((oc, 1, s.kh, s.kw), dtype)
    _check_launch(emu, backward_weight(grad.ptr(), x.ptr(), gw.ptr(), ws.ptr(), ctypes.byref(s),
                                       code, None))
    assert gw.ok() and ws.ok(), "backward_weight wrote outside grad_w or its workspace"
    args = ((s.kh, s.kw), geo["stride"], geo["padding"], geo["dilation"], channels_last)
    assert_parity(gw.t, _eager_weight_grad(grad.t, x.t, args),
                  _reference_backward_weight(_hi(grad.t), _hi(x.t), *args), "grad_w",
                  reduction=True)
    assert x.ok() and w.ok() and b.ok() and grad.ok(), "inputs were written"


def _eager_weight_grad(grad, x, args):
    """Eager's weight gradient in the inputs' dtype. Eager's bf16 CPU convolution_backward at
    the int64 case's geometry now and then returns NaN from memory it never wrote (the eager
    bug of bench/repro_eager_bf16_depthwise_nan.py; seen once in eight runs here): then the
    eager side is the float32 computation rounded to bf16, which is at least as exact as a
    correct bf16 kernel, so the 2x bound only gets stricter."""
    out = _reference_backward_weight(grad, x, *args)
    if grad.dtype in (torch.float16, torch.bfloat16) and not torch.isfinite(out).all():
        out = _reference_backward_weight(grad.float(), x.float(), *args).to(grad.dtype)
    return out


# ---- the emulation itself --------------------------------------------------------------------

def test_launch_errors_are_reported(emu):
    """A launch the GPU would refuse is refused: a bad shape returns cudaErrorInvalidValue
    without launching, and every launcher names its symbol."""
    forward = _dw_fns(emu)[0]
    s = _dw_shape(DW_CASES["k3s1"], False)
    s.kh = 0
    assert forward(0, 0, 0, 0, ctypes.byref(s), 0, 0, None) == 1  # cudaErrorInvalidValue
    with pytest.raises(LookupError, match="depthwise_forward"):
        emu.launcher("no_such_launcher")


def test_emulated_warp_primitives(emu):
    """Shuffles (xor, down, up, indexed), ballot and atomicAdd follow CUDA's definitions
    (csrc/emu/emu_selftest.cu: 3 blocks of 2 warps)."""
    st = "fb_emu_selftest"
    f = emu.launcher("warp_ops", st)
    f.argtypes, f.restype = [vp] * 7 + [cint], cint
    blocks, n = 3, 3 * 64
    x = torch.randn(n)
    out = {k: torch.full((n,), float("nan")) for k in ("xor", "scan", "bcast")}
    down, total = torch.zeros(n // 32), torch.zeros(1)
    ballot32 = torch.zeros(n // 32, dtype=torch.int32)
    _check_launch(emu, f(x.data_ptr(), out["xor"].data_ptr(), down.data_ptr(),
                         out["scan"].data_ptr(), out["bcast"].data_ptr(), ballot32.data_ptr(),
                         total.data_ptr(), blocks))
    warps = x.view(-1, 32)
    sums = warps.sum(1)
    torch.testing.assert_close(out["xor"].view(-1, 32), sums[:, None].expand(-1, 32))
    torch.testing.assert_close(down, sums)
    torch.testing.assert_close(out["scan"].view(-1, 32), warps.cumsum(1))
    torch.testing.assert_close(out["bcast"].view(-1, 32), warps[:, 3:4].expand(-1, 32))
    bits = ((warps > 0).long() << torch.arange(32)).sum(1)
    assert ballot32.long().bitwise_and(0xFFFFFFFF).tolist() == bits.tolist()
    torch.testing.assert_close(total, x.sum().view(1), rtol=1e-5, atol=1e-5)  # order differs


def test_emulation_reports_barrier_misuse_and_poisons_shared_memory(emu):
    st = "fb_emu_selftest"
    div = emu.launcher("divergent_barrier", st)
    div.argtypes, div.restype = [vp], cint
    out = torch.zeros(32, dtype=torch.int32)
    assert div(out.data_ptr()) != 0
    assert "divergent __syncthreads()" in emu.last_message()
    shfl = emu.launcher("exited_lane_shuffle", st)
    shfl.argtypes, shfl.restype = [vp], cint
    assert shfl(torch.zeros(32).data_ptr()) != 0
    assert "lanes that have returned" in emu.last_message()
    smem = emu.launcher("unwritten_smem", st)
    smem.argtypes, smem.restype = [vp, cint], cint
    y = torch.zeros(40)
    _check_launch(emu, smem(y.data_ptr(), 40))
    assert torch.isnan(y).all(), "dynamic shared memory should read NaN until written"


def _kernel_templates() -> set[tuple[str, str, str]]:
    """(family, file, kernel) for every __global__ function template of the families the
    emulation builds, read from their .cu files and the csrc/cuda headers those include."""
    return {(fam, path.name, k) for fam in cuda_emu.FAMILIES
            for path, k in cuda_emu.family_kernels(fam)}


def assert_family_kernels_launched(lib, request, families, tests: dict[str, int]) -> None:
    """Every __global__ kernel of `families` was launched so far; skips unless at least
    `tests[name]` tests named `name[...]` of the calling module were selected. Each emulation
    module ends with this check for its own families (run last in that module: a module's
    tests run in file order)."""
    selected = [it.name for it in request.session.items if it.path == request.node.path]
    if any(sum(n.startswith(f"{name}[") for n in selected) < count for name, count in tests.items()):
        pytest.skip("checks coverage only when every kernel test of this module is selected")
    launched = {m.group(1) for name in lib.launched() if (m := re.search(r"::(\w+)[<(]", name))}
    missing = sorted(f"{file}: {k}" for fam, file, k in _kernel_templates()
                     if fam in families and k not in launched)
    assert not missing, f"kernels never launched by the emulation tests: {missing}"


def test_every_kernel_was_launched(emu, request):
    """Runs last: every __global__ kernel of the activation and depthwise families was launched
    by the tests above (so a kernel added to their files without a test here fails this); every
    other emulated family has its own module, tests/test_<family>_cuda_emu.py, ending with the
    same check (assert_family_kernels_launched) for its kernels."""
    own = ("activation", "depthwise")
    elsewhere = sorted(f"tests/test_{fam}_cuda_emu.py" for fam in cuda_emu.FAMILIES if fam not in own
                       and not (ROOT / "tests" / f"test_{fam}_cuda_emu.py").is_file())
    assert not elsewhere, f"emulated families without their test module: {elsewhere}"
    assert_family_kernels_launched(emu, request, own, {"test_depthwise": len(DW_CASES) * 2 * len(DTYPES),
                                                       "test_activation": 2 * 2 * len(DTYPES)})


def test_every_cuda_source_is_emulated():
    """Every csrc/cuda/*.cu is built by the emulation, in exactly one family: a new family is one
    entry in csrc/emu/cuda_emu.py (FAMILIES) plus tests of its launchers here; a new file of a
    family is one more name in its entry. Every csrc/cuda/*.cuh holding a kernel is included by
    some family's files (else its kernels would escape the coverage checks)."""
    listed = [name for names in cuda_emu.FAMILIES.values() for name in names]
    missing = sorted(cu.name for cu in cuda_emu.CUDA_SRC.glob("*.cu") if cu.name not in listed)
    assert not missing, (f"csrc/cuda/{{{','.join(missing)}}} not emulated: add each file to its "
                         "family in FAMILIES (csrc/emu/cuda_emu.py) and test its launchers")
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"files in more than one family of FAMILIES: {twice}"
    reached = {path for fam in cuda_emu.FAMILIES for path in cuda_emu.family_files(fam)}
    orphans = sorted(h.name for h in cuda_emu.CUDA_SRC.glob("*.cuh")
                     if h not in reached and "__global__" in h.read_text())
    assert not orphans, f"headers with kernels that no emulated .cu includes: {orphans}"
