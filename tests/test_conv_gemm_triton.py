"""The Triton implicit-GEMM convolution (kernels/conv_gemm.py) behind conv_bias_act's triton
backend: the launcher against the eager F.conv2d + bias + activation (1x1 GEMM, kxk implicit
GEMM, stride, padding, dilation, groups, odd tails and several tiles per dimension, NCHW /
channels_last / a channels_last weight / a strided view, fp32 and fp16, every activation,
batch 0) under TRITON_INTERPRET=1 on tiny shapes; the op-level path (forward and backward
through the registered autograd); the TF32 choice; the autotune configs; on a GPU, multi-tile
shapes in every dtype."""
from __future__ import annotations

import importlib

import pytest
import torch

import fastblocks
from fastblocks import ops
from fastblocks.ops._activation_codes import activation_code
from fastblocks.ops._layout import is_channels_last
from fastblocks.ops.conv_bn_act import reference_conv_bias_act, reference_conv_bn_act
from fastblocks.testing import check
from tolerances import assert_parity

CL = torch.channels_last
ACTS = (None, "relu", "relu6", "hardswish", "hardsigmoid", "silu")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _fp32_without_tf32():
    """On a GPU, float32 convolutions without TF32 on both sides (eager's cuDNN and the
    kernel, which follows the same flag): TF32 results of two different algorithms are not
    comparable at assert_close's rtol. Nothing changes in the interpreter (no TF32)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if not torch.cuda.is_available() or conv is None:
        yield
        return
    old = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = old


def _conv_gemm():
    if "triton" not in fastblocks.available_backends(DEV):
        pytest.skip("triton backend unavailable (TRITON_INTERPRET=1 and triton needed)")
    return importlib.import_module("fastblocks.kernels.conv_gemm")


def _inputs(n, c_in, c_out, h, w, kernel, groups, layout, dtype, device=DEV, scale=1.0):
    x = torch.randn(n, c_in, h, w, device=device).mul_(scale)
    if layout == "view":  # a non-dense view: every other column of a wider tensor
        x = torch.randn(n, c_in, h, 2 * w, device=device)[..., ::2].mul_(scale)
    x = x.to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    wt = (torch.randn(c_out, c_in // groups, *kernel, device=device)
          * (c_in // groups * kernel[0] * kernel[1]) ** -0.5).to(dtype)
    if layout == "w_cl":  # NCHW x with a channels_last weight: the output is channels_last
        wt = wt.contiguous(memory_format=CL)
    b = torch.randn(c_out, device=device).to(dtype)
    return x, wt, b


def _run_kernel(cg, x, wt, b, stride, padding, dilation, groups, act):
    cl = is_channels_last(x) or is_channels_last(wt)
    return cg.conv_bias_act_forward(x, wt, b, stride, padding, dilation, groups,
                                    activation_code(act), cl)


def _assert_matches_eager(y, x, wt, b, stride, padding, dilation, groups, act):
    args = (stride, padding, dilation, groups, act)
    eager = reference_conv_bias_act(x, wt, b, *args)
    hi = reference_conv_bias_act(x.double(), wt.double(), None if b is None else b.double(), *args)
    assert y.shape == eager.shape and y.dtype == eager.dtype
    fmt = CL if eager.is_contiguous(memory_format=CL) and not eager.is_contiguous() \
        else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), "output layout differs from F.conv2d's"
    assert_parity(y, eager, hi)


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, layout, activation)
CASES = {
    "1x1 gemm, odd tails": (2, 5, 7, 6, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, "cl", "relu6"),
    "3x3 s1 p1 nchw": (1, 6, 9, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, "nchw", "relu"),
    "3x3 s2 p1": (2, 4, 6, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, "cl", "hardswish"),
    "3x3 dilation 2": (1, 4, 5, 9, 9, (3, 3), (1, 1), (2, 2), (2, 2), 1, "w_cl", "silu"),
    # 18 channels per group: two K blocks per tap; 17 outputs per group: two N tiles
    "groups 2, several tiles": (1, 36, 34, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, "cl", None),
    "1x1 groups 4 nchw": (1, 8, 12, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 4, "nchw",
                          "hardsigmoid"),
    "1x3 s(2,1) strided view": (1, 3, 17, 6, 7, (1, 3), (2, 1), (0, 1), (1, 1), 1, "view",
                                "relu"),
    # channel counts and strides multiples of 16 bytes: the kernel's ALIGN > 1 path
    "3x3 aligned fp32": (2, 8, 12, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, "cl", "relu"),
    "1x1 aligned fp16": (1, 16, 16, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, "cl", "silu"),
    # 19 channels (2 K blocks per tap), 18 outputs (2 N tiles), 36 pixels (2 M tiles)
    "3x3 several tiles": (1, 19, 18, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, "cl", "relu"),
}


# every case in float32 (assert_close defaults); two in float16 (storage only, fp32
# accumulation: at most 2x eager's own error against float64)
DTYPE_CASES = ([(case, torch.float32) for case in CASES if "fp16" not in case]
               + [(case, torch.float16) for case in ("3x3 s2 p1", "groups 2, several tiles",
                                                     "1x1 aligned fp16")])


@pytest.mark.parametrize("case,dtype", DTYPE_CASES,
                         ids=[f"{c}-{str(d)[6:]}" for c, d in DTYPE_CASES])
def test_kernel_matches_eager(case, dtype):
    cg = _conv_gemm()
    n, ci, co, h, w, k, s, p, d, g, layout, act = CASES[case]
    x, wt, b = _inputs(n, ci, co, h, w, k, g, layout, dtype)
    y = _run_kernel(cg, x, wt, b, s, p, d, g, act)
    _assert_matches_eager(y, x, wt, b, s, p, d, g, act)
    if "aligned" in case:  # the case is there to take the vectorized (ALIGN > 1) path
        wp = wt.contiguous(memory_format=CL) if k != (1, 1) else wt
        assert cg.vector_align(x.element_size(), ci // g, co // g, cg._strides(x),
                               cg._strides(wp), cg._strides(y)) == 16 // x.element_size()


def test_kernel_every_activation_without_bias():
    """Inputs scaled so the pre-activations cross every kink (0, +-3, 6)."""
    cg = _conv_gemm()
    x, wt, _ = _inputs(1, 3, 5, 5, 4, (3, 3), 1, "cl", torch.float32, scale=4.0)
    for act in ACTS:
        y = _run_kernel(cg, x, wt, None, (1, 1), (1, 1), (1, 1), 1, act)
        _assert_matches_eager(y, x, wt, None, (1, 1), (1, 1), (1, 1), 1, act)


@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_empty_batch(channels_last):
    cg = _conv_gemm()
    x, wt, b = _inputs(0, 4, 6, 5, 5, (3, 3), 1, "nchw", torch.float32)
    y = cg.conv_bias_act_forward(x, wt, b, (2, 2), (1, 1), (1, 1), 1, 1, channels_last)
    assert y.shape == (0, 6, 3, 3)
    assert y.stride() == torch.empty(y.shape, memory_format=CL if channels_last
                                     else torch.contiguous_format).stride()


def test_kernel_rejects_float64():
    cg = _conv_gemm()
    x, wt, b = _inputs(1, 2, 2, 3, 3, (1, 1), 1, "nchw", torch.float64)
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        _run_kernel(cg, x, wt, b, (1, 1), (0, 0), (1, 1), 1, None)


def _spy(monkeypatch, cg):
    """Count the launcher's calls, so a test knows the op ran the kernel, not ATen."""
    calls = []
    real = cg.conv_bias_act_forward

    def spy(*args):
        calls.append(args[7])
        return real(*args)
    monkeypatch.setattr(cg, "conv_bias_act_forward", spy)
    return calls


def test_op_forward_and_backward_through_triton(monkeypatch):
    """conv_bias_act with backend("triton"): the forward is the kernel, the backward the
    registered autograd (hardswish: the pre-activation is recomputed through the kernel)."""
    cg = _conv_gemm()
    calls = _spy(monkeypatch, cg)
    x, wt, b = _inputs(2, 6, 8, 5, 4, (3, 3), 2, "cl", torch.float32)
    args = (2, 1, 1, 2, "hardswish")
    with fastblocks.backend("triton"):
        res = check(lambda x, w, b: ops.conv_bias_act(x, w, b, *args),
                    lambda x, w, b: reference_conv_bias_act(x, w, b, *args),
                    [x, wt, b], grad_idx=(0, 1, 2), names=("x", "weight", "bias"))
    assert res.ok, res.messages
    assert calls == [3, 0]  # the forward, then backward's recomputed pre-activation
    # and through the registered op (the dispatcher path torch.compile and autocast take)
    calls.clear()
    xr = x.detach().requires_grad_()
    with fastblocks.backend("triton"):
        y = torch.ops.fastblocks.conv_bias_act(xr, wt, b, [2, 2], [1, 1], [1, 1], 2, 3)
        y.sum().backward()
    assert len(calls) == 2 and xr.grad is not None


def test_conv_bn_act_eval_runs_the_kernel(monkeypatch):
    """The eval chain (BN folded into the conv) goes to the kernel under backend("triton")."""
    cg = _conv_gemm()
    calls = _spy(monkeypatch, cg)
    x, wt, _ = _inputs(2, 5, 7, 6, 5, (1, 1), 1, "cl", torch.float32)
    bw, bb = torch.rand(7, device=DEV) + 0.5, torch.randn(7, device=DEV) * 0.1
    rm, rv = torch.randn(7, device=DEV) * 0.1, torch.rand(7, device=DEV) + 0.5
    kw = dict(training=False, activation="relu6")
    with fastblocks.backend("triton"):
        y = ops.conv_bn_act(x, wt, None, bw, bb, rm, rv, **kw)
    assert len(calls) == 1
    assert_parity(y, reference_conv_bn_act(x, wt, None, bw, bb, rm, rv, **kw))


def test_cpu_auto_and_float64_do_not_take_the_kernel(monkeypatch):
    cg = _conv_gemm()
    calls = _spy(monkeypatch, cg)
    x, wt, b = _inputs(1, 4, 6, 5, 5, (3, 3), 1, "cl", torch.float32, device="cpu")
    ops.conv_bias_act(x, wt, b, 1, 1, 1, 1, "relu")  # auto on CPU: oneDNN / ATen as before
    with fastblocks.backend("triton"):
        ops.conv_bias_act(x.double(), wt.double(), b.double(), 1, 1, 1, 1, "relu")
    assert calls == []


def test_fp32_precision_follows_cudnn_flag():
    cg = _conv_gemm()
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        pytest.skip("torch without torch.backends.cudnn.conv.fp32_precision")
    old = conv.fp32_precision
    try:
        conv.fp32_precision = "tf32"
        assert cg.fp32_precision() == "tf32"
        conv.fp32_precision = "ieee"
        assert cg.fp32_precision() == "ieee"
    finally:
        conv.fp32_precision = old


def test_autotune_configs(monkeypatch):
    """One small config in the interpreter; on a GPU every tile meets tl.dot's 16 minimum and
    pruning keeps at least one config and drops tiles far wider than the layer."""
    cg = _conv_gemm()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert len(cg._configs()) == 1
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gpu = cg._configs()
    assert 3 <= len(gpu) <= 6
    assert all(min(c.kwargs.values()) >= 16 for c in gpu)
    narrow = cg._prune(gpu, {"J": 24, "CG": 24})
    assert narrow and all(c.kwargs["BLOCK_N"] <= 32 and c.kwargs["BLOCK_K"] <= 32 for c in narrow)
    assert len(cg._prune(gpu, {"J": 1152, "CG": 192})) == len(gpu)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [
    (8, 24, 144, 28, 28, (1, 1), (1, 1), (0, 0), (1, 1), 1, "cl", "relu6"),
    (4, 64, 64, 28, 28, (3, 3), (1, 1), (1, 1), (1, 1), 1, "cl", "relu"),
    (4, 32, 96, 29, 27, (3, 3), (2, 2), (1, 1), (1, 1), 1, "nchw", "hardswish"),
    (4, 64, 128, 14, 14, (3, 3), (1, 1), (2, 2), (2, 2), 4, "cl", "silu"),
])
def test_kernel_cuda_multi_tile(dtype, case):
    """On a GPU, the autotuned kernel over several tiles per dimension (float32 without TF32:
    the autouse fixture)."""
    cg = _conv_gemm()
    n, ci, co, h, w, k, s, p, d, g, layout, act = case
    x, wt, b = _inputs(n, ci, co, h, w, k, g, layout, dtype, device="cuda")
    y = _run_kernel(cg, x, wt, b, s, p, d, g, act)
    _assert_matches_eager(y, x, wt, b, s, p, d, g, act)


_AOT = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastblocks.kernels.conv_gemm as cg
fn = cg._conv_gemm_kernel.fn
names = fn.arg_names
cfg = cg._configs()[1]  # 128 x 64 x 64, 4 warps, 4 stages
const = dict(KH=3, KW=3, PADDED=True, HAS_BIAS=True, ACT=3, PRECISION="tf32", ALIGN=8, sx_c=1,
             sw_c=1, sy_c=1, **cfg.kwargs)
sig = {n: "*bf16" if n.endswith("_ptr") else "constexpr" if n in const else "i32" for n in names}
src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()},
                attrs={(names.index(n),): [["tt.divisibility", 16]] for n in names
                       if n.endswith("_ptr")})
k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
ptx = k.asm["ptx"]
print("wgmma" in ptx, "cp.async" in ptx, "st.global.v4" in ptx, k.metadata.shared)
"""


def test_kernel_compiles_for_sm90():
    """Ahead-of-time compile for Hopper (no GPU needed: Triton's own ptxas), which the
    interpreter never does: bf16 3x3 NHWC with ALIGN = 8 (e.g. 24 channels: not divisible
    by 16, so only ALIGN proves the alignment) must lower to wgmma, cp.async pipelining and
    16-byte vector stores."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_DEFAULT_FP_FUSION": "1"}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wgmma, cp_async, st_v4, shared = out.stdout.split()
    assert wgmma == cp_async == st_v4 == "True", out.stdout
    assert int(shared) > 128 * 64 * 2 + 64 * 64 * 2  # more than one stage of A and B tiles
