"""Depthwise convolution: seeded fuzz against eager F.conv2d(groups=C) per backend, forward and
every gradient; gradcheck; opcheck; torch.compile; bad inputs; the DepthwiseConv2d module."""
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.ops import depthwise_conv2d
from fastblocks.ops._activation_codes import activation_code
from fastblocks.ops.depthwise import reference_depthwise_conv2d
from fastblocks.testing import needs_reference
from tolerances import KERNEL_BACKENDS_CPU, KERNEL_BACKENDS_CUDA, assert_parity

ACTIVATIONS = (None, "relu", "relu6", "hardswish", "hardsigmoid", "silu")
KERNELS = ((1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (1, 7), (7, 1), (2, 2), (4, 3), (3, 5))


def make_configs(count: int, seed: int, max_hw: int = 13, **choices):
    """Random valid configurations: kernel, stride, padding (int, pair, "same", "valid"),
    dilation, multiplier, odd sizes (1, 7, 13, and 113 now and then), batch 0, both layouts,
    bias or not, every activation. choices overrides the lists drawn from (kernels, strides,
    dilations, channels, heights, widths, multipliers) and the chance of a thin 113-wide plane
    (thin)."""
    pick = dict(kernels=KERNELS, strides=[1, 1, 2, 2, 3, (1, 2), (2, 1)], dilations=[1, 1, 1, 2, (1, 2), 3],
                channels=[1, 2, 3, 5], heights=[1, 2, 7, 13, max_hw], widths=[1, 3, 8, 13, max_hw],
                multipliers=[1, 1, 2, 3], thin=0.03)
    pick.update(choices)
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        kh, kw = rng.choice(pick["kernels"])
        stride = rng.choice(pick["strides"])
        dilation = rng.choice(pick["dilations"])
        padding = rng.choice([0, 1, 2, 3, (0, 1), (2, 0), "same", "valid"])
        if padding == "same":
            stride = 1
        n = rng.choice([0, 1, 1, 2])
        c = rng.choice(pick["channels"])
        h = rng.choice(pick["heights"])
        w = rng.choice(pick["widths"])
        if rng.random() < pick["thin"]:  # a long thin plane: odd width 113
            h, w, c, n = rng.choice([1, 3]), 113, 1, 1
        cfg = dict(n=n, c=c, h=h, w=w, m=rng.choice(pick["multipliers"]), k=(kh, kw), stride=stride,
                   padding=padding, dilation=dilation, bias=rng.random() < 0.7,
                   activation=rng.choice(ACTIVATIONS), channels_last=rng.random() < 0.5)
        try:  # keep only configurations F.conv2d accepts
            F.conv2d(torch.empty(1, c, h, w), torch.empty(c * cfg["m"], 1, kh, kw), None, stride,
                     padding, dilation, groups=c)
        except RuntimeError:
            continue
        configs.append(cfg)
    return configs


def make_inputs(cfg, dtype, device="cpu"):
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], device=device).to(dtype)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cfg["c"] * cfg["m"], 1, *cfg["k"], device=device).to(dtype)
    b = torch.randn(cfg["c"] * cfg["m"], device=device).to(dtype) if cfg["bias"] else None
    return x, w, b


def args_of(cfg):
    return cfg["stride"], cfg["padding"], cfg["dilation"], cfg["activation"]


def check_config(cfg, backend, dtype, device="cpu"):
    """fastblocks vs eager on one configuration: output (values, shape, memory format) and the
    gradients of x, weight and bias."""
    x, w, b = make_inputs(cfg, dtype, device)
    stride, padding, dilation, act = args_of(cfg)
    tensors = [t for t in (x, w, b) if t is not None]

    def run(fn, ts):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        xx, ww, bb = ts[0], ts[1], (ts[2] if len(ts) == 3 else None)
        if cfg["channels_last"]:
            xx = xx.contiguous(memory_format=torch.channels_last)
        out = fn(xx, ww, bb, stride, padding, dilation, act)
        return out, ts

    with fastblocks.backend(backend):
        out, ts = run(depthwise_conv2d, tensors)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, ts, g)
    eager, tse = run(reference_depthwise_conv2d, tensors)
    grads_e = torch.autograd.grad(eager, tse, g)
    hi = hi_grads = None
    if needs_reference(dtype):
        hi, tsh = run(reference_depthwise_conv2d, [t.double() for t in tensors])
        hi_grads = torch.autograd.grad(hi, tsh, g.double())
    assert out.is_contiguous(memory_format=torch.channels_last) == eager.is_contiguous(
        memory_format=torch.channels_last) or out.numel() == 0 or min(out.shape[1:]) == 1, \
        f"memory format differs from eager: strides {out.stride()} vs {eager.stride()}"
    assert_parity(out, eager, None if dtype == torch.float32 else hi, f"forward {cfg}")
    for name, got, exp, i in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_e, range(3)):
        assert_parity(got, exp, None if hi_grads is None else hi_grads[i], f"{name} {cfg}",
                      reduction=name != "grad_x")


# ---- CPU: C++ kernels and the Triton interpreter ------------------------------------------

FUZZ = make_configs(220, seed=2026)
# Channels of one vector and more (16 fp32 lanes with AVX-512, 8 with AVX2, 4 with SSE2), which
# FUZZ's C <= 5 never reaches: the channels_last row kernels (read in place or through the ring,
# border blocks included), channel chunks with an overlapping last vector (24, 40, 72), and the
# blocked NCHW kernels.
WIDE = make_configs(150, seed=11, kernels=KERNELS + ((3, 3), (5, 5), (7, 7)) * 3, channels=(16, 24, 40, 72), strides=(1, 1, 2, (1, 2), (2, 1)),
                    dilations=(1, 1, 1, 1, 2, (2, 1)), multipliers=(1, 1, 1, 1, 2), thin=0,
                    heights=(1, 3, 7, 13), widths=(1, 2, 3, 5, 9, 17, 30))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
def test_fuzz_fp32(backend):
    configs = FUZZ if backend != "torch" else FUZZ[:40]
    for cfg in configs:
        check_config(cfg, backend, torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_fuzz_fp64(backend):
    for cfg in FUZZ[::4]:
        check_config(cfg, backend, torch.float64)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
def test_fuzz_vector_wide_channels():
    for cfg in WIDE:
        check_config(cfg, "cpu", torch.float32)
    for cfg in WIDE[::3]:
        check_config(cfg, "cpu", torch.float64)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("isa", ("avx2", "sse2"))
def test_narrower_isas(isa):
    """The CPU kernels are compiled for AVX-512, AVX2 and SSE2 and pick one per process;
    FASTBLOCKS_CPU_ISA forces a narrower one, in a fresh interpreter."""
    script = ("import torch, test_depthwise as t\n"
              "for cfg in t.WIDE + t.FUZZ[::4]:\n"
              "    t.check_config(cfg, 'cpu', torch.float32)\n"
              "for cfg in t.WIDE[::4]:\n"
              "    t.check_config(cfg, 'cpu', torch.float64)\n"
              # fp16/bf16 rows are converted per ISA: bit for bit against the fp32 kernel (not
              # against eager, whose bf16 channels_last conv with a channel multiplier reads
              # memory it never wrote: bench/repro_eager_bf16_depthwise_nan.py)
              "for dtype in (torch.float16, torch.bfloat16):\n"
              "    for layout in (torch.channels_last, torch.contiguous_format):\n"
              "        t.test_cpu_low_precision_is_the_fp32_kernel_rounded(dtype, layout)\n")
    env = dict(os.environ, FASTBLOCKS_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(__file__), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_fuzz_low_precision(backend):
    # The Triton interpreter has no bfloat16 arithmetic (numpy): bf16 is covered on GPU.
    dtypes = (torch.float16,) if backend == "triton" else (torch.float16, torch.bfloat16)
    for dtype in dtypes:
        for cfg in FUZZ[1::5]:
            if cfg["n"] and cfg["h"] * cfg["w"] >= 4:
                check_config(cfg, backend, dtype)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", (torch.channels_last, torch.contiguous_format))
def test_cpu_low_precision_is_the_fp32_kernel_rounded(dtype, layout):
    """fp16/bf16 layers with a vector of channels or more are widened inside the kernel (rows
    in channels_last, channel blocks or planes in NCHW) and narrowed once at the end: forward
    and input gradient must equal the fp32 kernel on the widened tensors, rounded, bit for bit
    (NaN and inf included)."""
    torch.manual_seed(7)
    cases = [(2, 16, 9, 9, 3, 1, "relu6"), (1, 40, 14, 13, 5, 2, "silu"), (2, 24, 7, 7, 7, 1, "hardswish"),
             (1, 33, 12, 12, 3, 2, None), (1, 64, 5, 5, 5, 1, "relu"), (2, 48, 11, 10, 5, 2, None),
             (1, 1040, 100, 100, 3, 1, "silu")]  # a large image: several channel chunks per row
    for n, c, h, w, k, s, act in cases:
        x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=layout)
        x[0, 0, 1, 1], x[0, 1, 2, 2] = float("nan"), float("inf")
        x[0, 2, 3, 3] = 70000.0 if dtype == torch.bfloat16 else 60000.0  # rounds away from the grid
        wt, b = torch.randn(c, 1, k, k).to(dtype), torch.randn(c).to(dtype)

        def run(xx, ww, bb):
            with fastblocks.backend("cpu"):
                with torch.no_grad():  # inference: the activation is the fused epilogue
                    y = depthwise_conv2d(xx, ww, bb, s, k // 2, 1, act)
                xx = xx.detach().requires_grad_()
                z = depthwise_conv2d(xx, ww, bb, s, k // 2, 1, None)
                g = torch.linspace(-3, 3, z.numel()).reshape(z.shape).to(dtype).to(z.dtype)  # on dtype's grid
                gx, = torch.autograd.grad(z, xx, g.contiguous(memory_format=layout))
            return y, gx

        y, gx = run(x, wt, b)
        y32, gx32 = run(x.float(), wt.float(), b.float())
        assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
        assert gx.dtype == dtype and gx.is_contiguous(memory_format=layout)
        label = f"{dtype} {(n, c, h, w, k, s, act)}"
        torch.testing.assert_close(y, y32.to(dtype), rtol=0, atol=0, equal_nan=True, msg=label)
        torch.testing.assert_close(gx, gx32.to(dtype), rtol=0, atol=0, equal_nan=True, msg=label)


# 16 and 40 channels: the CPU kernels' vector loops; 5 channels: their scalar tails
NONFINITE_CASES = ((16, torch.channels_last), (40, torch.contiguous_format), (5, torch.channels_last))


def check_nonfinite_inputs(backend, device="cpu", cases=NONFINITE_CASES, checked=("x", "weight", "bias")):
    """NaN and infinities in x reach the fused epilogue as eager's conv2d -> activation gives
    them: relu, relu6 and hardsigmoid of NaN are NaN, not 0. Inference (the fused epilogue) and
    training (forward and the gradients named in `checked`, where eager's gradient at NaN is one
    answer)."""
    torch.manual_seed(3)
    for c, layout in cases:
        x = torch.randn(2, c, 9, 9, device=device).contiguous(memory_format=layout)
        x[0, 0, 4, 4], x[0, 1, 2, 7], x[1, c - 1, 0, 0] = float("nan"), float("inf"), -float("inf")
        wt, b = torch.randn(c, 1, 3, 3, device=device), torch.randn(c, device=device)
        for act in ACTIVATIONS:
            label = f"{backend} c={c} {act}"
            expected = reference_depthwise_conv2d(x, wt, b, 1, 1, 1, act)
            with fastblocks.backend(backend), torch.no_grad():
                y = depthwise_conv2d(x, wt, b, 1, 1, 1, act)
            torch.testing.assert_close(y, expected, equal_nan=True, msg=f"{label} inference")
            if act in ("relu6", "hardswish"):  # eager's own gradient at NaN varies by position
                continue
            leaves = [t.detach().clone().requires_grad_() for t in (x, wt, b)]
            ref_leaves = [t.detach().clone().requires_grad_() for t in (x, wt, b)]
            with fastblocks.backend(backend):
                y = depthwise_conv2d(*leaves, 1, 1, 1, act)
            expected = reference_depthwise_conv2d(*ref_leaves, 1, 1, 1, act)
            g = torch.randn_like(expected)
            grads = torch.autograd.grad(y, leaves, g)
            ref_grads = torch.autograd.grad(expected, ref_leaves, g)
            torch.testing.assert_close(y, expected, equal_nan=True, msg=f"{label} training")
            for name, ours, theirs in zip(("x", "weight", "bias"), grads, ref_grads):
                if name in checked:
                    torch.testing.assert_close(ours, theirs, equal_nan=True, msg=f"{label} grad {name}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_nonfinite_inputs(backend):
    check_nonfinite_inputs(backend)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_cpu_weight_grad_next_to_inf(dtype):
    """The CPU's NCHW weight gradient (fewer channels than a vector, either layout) runs dot
    products over zero-padded gradient planes, which multiply border pixels of x by zero: an
    inf there must not make NaN of taps that never meet it (eager keeps them finite)."""
    torch.manual_seed(5)
    for c, layout in ((1, torch.contiguous_format), (5, torch.channels_last), (8, torch.contiguous_format)):
        for k, s in ((3, 1), (5, 2), (7, 1)):
            x = torch.randn(2, c, 9, 9, dtype=dtype).contiguous(memory_format=layout)
            x[1, c - 1, 0, 0], x[0, 0, 8, 8] = -float("inf"), float("inf")
            wt = torch.randn(c, 1, k, k, dtype=dtype)
            xw = [t.clone().requires_grad_() for t in (x, wt)]
            rw = [t.clone().requires_grad_() for t in (x, wt)]
            with fastblocks.backend("cpu"):
                y = depthwise_conv2d(*xw, None, s, k // 2)
            expected = reference_depthwise_conv2d(*rw, None, s, k // 2)
            g = torch.randn_like(expected)
            gw = torch.autograd.grad(y, xw[1], g)[0]
            gw_ref = torch.autograd.grad(expected, rw[1], g)[0]
            assert gw_ref.isfinite().any(), "the case must have finite taps to compare"
            torch.testing.assert_close(gw, gw_ref, equal_nan=True, msg=f"c={c} k={k} s={s} {dtype}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_real_layer_shapes(backend):
    """MobileNetV2 / EfficientNet-style layers at a small resolution, both layouts, fused BN-
    folded bias + activation, so every kernel runs over more than one tile."""
    shapes = [(2, 16, 20, 20, 3, 1, "relu6"), (1, 24, 19, 19, 5, 2, "silu"),
              (2, 8, 12, 12, 7, 1, "hardswish"), (1, 32, 9, 9, 3, 2, None)]
    for n, c, h, w, k, s, act in shapes:
        for cl in (False, True):
            cfg = dict(n=n, c=c, h=h, w=w, m=1, k=(k, k), stride=s, padding=k // 2, dilation=1,
                       bias=True, activation=act, channels_last=cl)
            check_config(cfg, backend, torch.float32)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("c, stride", ((64, 1), (40, 1), (48, 2)))
def test_cpu_channels_last_outputs_streamed_to_memory(c, stride):
    """fp32 channels_last outputs of 16 MB and more (the forward's y, the input gradient) are
    written with non-temporal stores where a pixel's channels are vector-aligned and plain stores
    where not (40 channels: 160-byte pixels); at stride 2 only the input gradient streams."""
    hw = 2 + int(((16 << 20) / (2 * c * 4)) ** 0.5) if stride == 1 else 300
    cfg = dict(n=2, c=c, h=hw, w=hw, m=1, k=(3, 3), stride=stride, padding=1, dilation=1,
               bias=True, activation="relu6", channels_last=True)
    check_config(cfg, "cpu", torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_non_contiguous_input(backend):
    x = torch.randn(2, 12, 11, 9)[:, ::2, :, 1:]  # neither NCHW nor NHWC contiguous
    w = torch.randn(6, 1, 3, 3)
    with fastblocks.backend(backend):
        out = depthwise_conv2d(x, w, None, 1, 1)
    torch.testing.assert_close(out, F.conv2d(x, w, None, 1, 1, groups=6))
    assert out.is_contiguous()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_unbatched_input(backend):
    x, w = torch.randn(4, 7, 7), torch.randn(8, 1, 3, 3)
    with fastblocks.backend(backend):
        out = depthwise_conv2d(x, w, None, 2, 1, activation="relu")
    torch.testing.assert_close(out, F.relu(F.conv2d(x, w, None, 2, 1, groups=4)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_gradcheck(backend):
    # Full gradcheck makes one backward call per output element and two forwards per input
    # element: minutes in the Triton interpreter. There it runs in fast mode (checks random
    # projections of the Jacobian: a handful of calls) on smaller inputs.
    fast = backend == "triton"
    n, h, w = (1, 5, 4) if fast else (2, 6, 7)
    for pad, stride, dil, act, k in (("same", 1, 1, "silu", (3, 3)), (1, 2, 1, None, (3, 3)),
                                     ((0, 2), 1, 2, "hardswish", (2, 3)),
                                     (1, 1, 1, "relu6", (3, 1))):
        x = torch.randn(n, 3, h, w, dtype=torch.float64, requires_grad=True)
        wt = torch.randn(6, 1, *k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        with fastblocks.backend(backend):
            assert torch.autograd.gradcheck(
                lambda x, w, b: depthwise_conv2d(x, w, b, stride, pad, dil, act), (x, wt, b),
                fast_mode=fast)


@pytest.mark.parametrize("backend", ("cpu", "torch"))
def test_opcheck(backend):
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    with fastblocks.backend(backend):
        for xx in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()):
            for act in (5, 2):  # silu: backward recomputes z; relu6: backward reads y
                torch.library.opcheck(torch.ops.fastblocks.depthwise_conv2d.default,
                                      (xx, w, b, [1, 1], [1, 0], [1, 1], [9, 7], act))
            g = torch.randn(2, 8, 9, 7, dtype=torch.float64)
            for mask in ([True, True, True], [True, False, False], [False, True, False]):
                torch.library.opcheck(torch.ops.fastblocks.depthwise_conv2d_backward.default,
                                      (g, xx.detach(), w.detach(), [1, 1], [1, 0], [1, 1], mask))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_training_paths_agree(backend):
    """Plain eager training runs a C++ autograd node around the kernels (cpu and cuda
    backends) or a Python autograd.Function (triton); the registered op runs the Python
    autograd functions through the dispatcher. relu/relu6 stay fused (backward reads the
    output), hardswish/hardsigmoid/silu run as a second pass (backward reads the saved
    pre-activation). Every route gives eager's values and gradients, and none a silent second
    derivative."""
    torch.manual_seed(3)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64)
    b = torch.randn(8, dtype=torch.float64)
    g = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    with fastblocks.backend(backend):
        for act, fused_node in (("relu6", True), ("relu", True), ("silu", False),
                                ("hardswish", False), ("hardsigmoid", False), (None, True)):
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            ref = F.conv2d(leaves[0], leaves[1], leaves[2], 1, 1, 1, 4)
            ref = ref if act is None else getattr(F, act)(ref)
            expected = (ref, *torch.autograd.grad(ref, leaves, g))
            y = depthwise_conv2d(*leaves, 1, 1, activation=act)
            node = y.grad_fn.name()
            if backend == "cpu":
                assert "DepthwiseTrain" in node, node
            else:
                assert node == ("DepthwiseConv2dFunctionBackward" if fused_node
                                else "ActivationFunctionBackward"), (act, node)
            torch.testing.assert_close((y, *torch.autograd.grad(y, leaves, g)), expected)
            code = activation_code(act)

            def registered():
                return torch.ops.fastblocks.depthwise_conv2d(*leaves, [1, 1], [1, 1], [1, 1],
                                                             [7, 6], code)
            y = registered()
            torch.testing.assert_close((y, *torch.autograd.grad(y, leaves, g)), expected)
            for y in (registered(), depthwise_conv2d(*leaves, 1, 1, activation=act)):
                (gx,) = torch.autograd.grad(y, leaves[0], g, create_graph=True)
                with pytest.raises(RuntimeError):  # no second derivative, not a silent one
                    gx.sum().backward()


@pytest.mark.parametrize("backend", ("cpu", "triton"))
def test_compile_fullgraph(backend):
    def f(x, w, b):
        y = depthwise_conv2d(x, w, b, 1, "same", activation="hardswish")
        return depthwise_conv2d(y, w, None, 2, 1) * 2

    def ref(x, w, b):
        y = F.hardswish(F.conv2d(x, w, b, 1, "same", groups=4))
        return F.conv2d(y, w, None, 2, 1, groups=4) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ts = [torch.randn(2, 4, 9, 9), torch.randn(4, 1, 3, 3), torch.randn(4)]
    ours = [t.clone().requires_grad_() for t in ts]
    theirs = [t.clone().requires_grad_() for t in ts]
    with fastblocks.backend(backend):
        out = compiled(*ours)
        out.sum().backward()
    expected = ref(*theirs)
    expected.sum().backward()
    hi = [t.double().requires_grad_() for t in ts]
    ref(*hi).sum().backward()
    torch.testing.assert_close(out, expected)
    # x's gradient at the defaults; the weight's and bias's (sums over the batch and the map)
    # by the reduction rule of fastblocks/testing.py, as everywhere in this file
    for what, a, e, h, red in zip(("x", "w", "b"), ours, theirs, hi, (False, True, True)):
        assert_parity(a.grad, e.grad, h.grad, what=f"grad {what}", reduction=red)


@pytest.mark.slow
def test_compile_inductor():
    x, w = torch.randn(2, 8, 10, 10), torch.randn(8, 1, 3, 3)
    compiled = torch.compile(lambda x, w: depthwise_conv2d(x, w, None, 1, 1, activation="silu") + 1,
                             fullgraph=True)
    torch.testing.assert_close(compiled(x, w), F.silu(F.conv2d(x, w, None, 1, 1, groups=8)) + 1)


def test_bad_inputs():
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3)
    cases = [
        (dict(weight=torch.randn(5, 1, 3, 3)), ValueError, r"weight must have shape \(C\*m, 1, kh, kw\) with C = 4"),
        (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, r"weight must have shape .* got \(4, 2, 3, 3\)"),
        (dict(weight=torch.randn(4, 3, 3)), ValueError, r"weight must have shape"),
        (dict(stride=0), ValueError, r"stride must be positive, got 0"),
        (dict(stride=(1, -2)), ValueError, r"stride must be positive"),
        (dict(dilation=0), ValueError, r"dilation must be positive, got 0"),
        (dict(padding=-1), ValueError, r"padding must be non-negative, got -1"),
        (dict(padding=(1, 2, 3)), TypeError, r"padding must be an int or a pair of ints"),
        (dict(padding="full"), ValueError, r"padding must be an int, a pair, 'same' or 'valid'"),
        (dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
        (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints"),
        (dict(x=torch.randn(1, 4, 2, 2)), ValueError, r"input H = 2 with padding 0 is smaller than the dilated kernel \(3\)"),
        (dict(x=torch.randn(4, 8)), ValueError, r"x must be 4-d \(N, C, H, W\) or 3-d"),
        (dict(x=torch.ones(1, 4, 8, 8, dtype=torch.int32)), TypeError, r"x must have a floating dtype"),
        (dict(x=torch.randn(1, 4, 8, 8, dtype=torch.complex64)), TypeError, r"x must have a floating dtype"),
        (dict(weight=w.double()), TypeError, r"weight has dtype torch.float64 but x has torch.float32"),
        (dict(weight=torch.randn(4, 1, 3, 3, device="meta")), ValueError, r"weight is on meta but x is on cpu"),
        (dict(bias=torch.randn(3)), ValueError, r"bias must have shape \(4,\), got \(3,\)"),
        (dict(bias=torch.randn(4, device="meta")), ValueError, r"bias is on meta but x is on cpu"),
        (dict(activation="gelu"), ValueError, r"activation must be one of"),
    ]
    for override, exc, pattern in cases:
        kw = dict(x=x, weight=w, bias=None, stride=1, padding=0, dilation=1, activation=None)
        kw.update(override)
        with pytest.raises(exc, match=pattern):
            depthwise_conv2d(**kw)
    # The geometry is memoized: values equal to valid ones as dict keys (True == 1, 1.0 == 1)
    # must still be refused after the valid ones were cached, and lists resolve like tuples.
    depthwise_conv2d(x, w, None, stride=(1, 1), padding=1, dilation=1)
    for bad in (dict(stride=True), dict(stride=(1, True)), dict(padding=1.0), dict(dilation=[1, 1.0])):
        with pytest.raises(TypeError, match=r"must be an int or a pair of ints"):
            depthwise_conv2d(x, w, None, **{"stride": 1, "padding": 1, "dilation": 1, **bad})
    torch.testing.assert_close(depthwise_conv2d(x, w, None, stride=[2, 1], padding=[1, 0]),
                               F.conv2d(x, w, None, (2, 1), (1, 0), groups=4))


# ---- module ---------------------------------------------------------------------------------

@pytest.mark.skipif(fastblocks._extension.C_ERROR is not None, reason="fastblocks._C not built")
def test_kernel_contract_errors_name_the_argument():
    """The fastblocks_C ops check their contract themselves (csrc/include/fastblocks/
    depthwise_args.h, shared by the CPU and CUDA kernels): callers below the Python API get an
    error naming the op and the argument, never a wrong result or a crash. (Layouts are not
    errors: a tensor in other strides is copied once into the named format, issue 12.)"""
    C = torch.ops.fastblocks_C
    x, w, b = torch.randn(2, 4, 6, 6), torch.randn(8, 1, 3, 3), torch.randn(8)
    g = torch.randn(2, 8, 6, 6)
    s, p, d, o = [1, 1], [1, 1], [1, 1], [6, 6]
    bad = [
        (lambda: C.depthwise_forward(x, w, b, [0, 1], p, d, o, 0, False), "forward: stride"),
        (lambda: C.depthwise_forward(x, w, b, s, [-1, 0], d, o, 0, False), "forward: padding"),
        (lambda: C.depthwise_forward(x, w, b, s, p, [1, 0], o, 0, False), "forward: dilation"),
        (lambda: C.depthwise_forward(x, w[:6], None, s, p, d, o, 0, False), "forward: weight"),
        (lambda: C.depthwise_forward(x, w, b[:4], s, p, d, o, 0, False), "forward: bias"),
        (lambda: C.depthwise_forward(x, w.double(), b, s, p, d, o, 0, False), "forward: weight dtype"),
        (lambda: C.depthwise_forward(x, w, b, s, p, d, o, 9, False), "forward: unknown activation"),
        (lambda: C.depthwise_forward(x[0], w, b, s, p, d, o, 0, True), "forward: x must be 4-d"),
        (lambda: C.depthwise_backward_input(g, w, [3, 6, 6], s, p, d, False), "backward_input: grad has 8 channels"),
        (lambda: C.depthwise_backward_input(g, w[:, :, :2], [3, 6, 6], s, p, d, True), "backward_input: grad has 8 channels"),
        (lambda: C.depthwise_backward_weight(g[:1], x, [3, 3], s, p, d, False), "backward_weight: grad batch"),
        (lambda: C.depthwise_backward_weight(g, x, [0, 3], s, p, d, False), "backward_weight: kernel_size"),
        (lambda: C.depthwise_backward_weight(g.half(), x, [3, 3], s, p, d, False), "backward_weight: grad dtype"),
    ]
    for call, message in bad:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_module_is_a_drop_in_for_conv2d():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6)
    torch.manual_seed(3)
    ours = fastblocks.nn.DepthwiseConv2d(6, 12, 3, stride=2, padding=1)
    # same initialisation, parameter names and shapes; state_dicts load both ways
    assert ours.state_dict().keys() == conv.state_dict().keys()
    for k in conv.state_dict():
        torch.testing.assert_close(ours.state_dict()[k], conv.state_dict()[k])
    ours.load_state_dict(conv.state_dict())
    conv.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Conv2d)
    x = torch.randn(2, 6, 11, 11)
    for train in (True, False):
        ours.train(train)
        conv.train(train)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = ours(xa), conv(xb)
        torch.testing.assert_close(out, ref)
        out.square().sum().backward()
        ref.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(ours.weight.grad, conv.weight.grad)
        torch.testing.assert_close(ours.bias.grad, conv.bias.grad)
        ours.zero_grad()
        conv.zero_grad()


def test_module_from_conv_shares_parameters_and_folds_bn():
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    ours = fastblocks.nn.DepthwiseConv2d.from_conv(conv)
    assert ours.weight is conv.weight and ours.bias is None
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    fused = fastblocks.nn.DepthwiseConv2d.from_conv(conv, bn, activation="relu6")
    x = torch.randn(2, 8, 10, 10)
    torch.testing.assert_close(fused(x), F.relu6(bn(conv(x))))
    assert "activation=relu6" in repr(fused)


def test_module_padding_modes_and_errors():
    for mode in ("reflect", "replicate", "circular"):
        conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode=mode)
        ours = fastblocks.nn.DepthwiseConv2d.from_conv(conv)
        x = torch.randn(1, 4, 7, 7)
        torch.testing.assert_close(ours(x), conv(x))
    with pytest.raises(ValueError, match=r"groups == in_channels \(4\), got 2"):
        fastblocks.nn.DepthwiseConv2d(4, 4, 3, groups=2)
    with pytest.raises(TypeError, match="groups == in_channels"):
        fastblocks.nn.DepthwiseConv2d.from_conv(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="activation must be one of"):
        fastblocks.nn.DepthwiseConv2d(4, 4, 3, activation="tanh")


# ---- GPU ------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_fuzz_cuda(backend, dtype):
    for cfg in make_configs(200, seed=7, max_hw=40):
        check_config(cfg, backend, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_real_layer_shapes_cuda(backend, dtype):
    # several tiles per program, every fast path (3x3/5x5/7x7, stride 1/2, both layouts)
    for n, c, h, k, s in ((32, 144, 56, 3, 1), (32, 144, 56, 3, 2), (8, 672, 14, 5, 1),
                          (8, 240, 28, 5, 2), (4, 96, 30, 7, 1), (2, 64, 33, 1, 1)):
        for cl in (False, True):
            cfg = dict(n=n, c=c, h=h, w=h, m=1, k=(k, k), stride=s, padding=k // 2, dilation=1,
                       bias=True, activation="hardswish", channels_last=cl)
            check_config(cfg, backend, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_nonfinite_inputs_cuda(backend):
    check_nonfinite_inputs(backend, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_gradcheck_cuda(backend):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    with fastblocks.backend(backend):
        assert torch.autograd.gradcheck(lambda x, w: depthwise_conv2d(x, w, None, 2, 1, 1, "silu"), (x, w))


def test_cpu_channels_last_batch1_large_map_takes_aten():
    """ops.depthwise.aten_faster_on_cpu: ATen's conv + in-place relu6 for a stride-1 3x3
    channels_last batch-1 map of >= 56x56 (measured faster there), our kernel otherwise; the
    result equals the eager composition either way."""
    import importlib
    dw = importlib.import_module("fastblocks.ops.depthwise")
    w, b = torch.randn(4, 1, 3, 3), torch.randn(4)

    def case(n, hw, stride=1, act="relu6", cl=True):
        x = torch.randn(n, 4, hw, hw)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        geo = dw.conv_geometry_cached((hw, hw), (3, 3), stride, 1, 1)
        args = (list(geo.stride), list(geo.padding), list(geo.dilation), list(geo.out_size))
        return x, dw.aten_faster_on_cpu(x, w, args, dw.activation_code(act))

    x, aten = case(1, 56)
    assert aten
    for other in (case(1, 28), case(2, 56), case(1, 56, stride=2), case(1, 56, act="silu"),
                  case(1, 56, cl=False)):
        assert not other[1]
    with torch.no_grad():
        got = fastblocks.ops.depthwise_conv2d(x, w, b, 1, 1, 1, "relu6")
    ref = F.relu6(F.conv2d(x, w, b, 1, 1, 1, 4))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref)
