"""Squeeze-and-excitation: seeded fuzz against torchvision's eager composition per backend,
forward and every gradient; gradcheck; opcheck; torch.compile; autocast; the fp16 overflow
case; bad inputs; the SqueezeExcite module and from_module for the SE blocks it replaces."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.models._blocks import SqueezeExcitation
from fastblocks.nn import SqueezeExcite
from fastblocks.ops import squeeze_excite
from fastblocks.ops.squeeze_excite import reference_squeeze_excite
from fastblocks.testing import needs_reference
from tolerances import KERNEL_BACKENDS_CPU, KERNEL_BACKENDS_CUDA, assert_parity

ACTIVATIONS = ("relu", "silu", "hardswish", "relu6", "hardsigmoid", None)
GATES = ("sigmoid", "hardsigmoid")
NAMES = ("x", "w1", "b1", "w2", "b2")


def make_configs(count: int, seed: int, channels=(1, 2, 3, 5, 8, 17), sizes=(1, 2, 3, 7, 13)):
    """Random configurations: C and C_r (C_r > C too), odd H, W including 1x1, batch 0, both
    layouts, both gates, every activation, biases or not, (out, in) or (out, in, 1, 1) weights."""
    rng = random.Random(seed)
    return [dict(n=rng.choice([0, 1, 1, 2, 3]), c=rng.choice(channels), r=rng.choice([1, 2, 3, 4]),
                 h=rng.choice(sizes), w=rng.choice(sizes), act=rng.choice(ACTIVATIONS),
                 gate=rng.choice(GATES), b1=rng.random() < 0.7, b2=rng.random() < 0.8,
                 conv=rng.random() < 0.5, channels_last=rng.random() < 0.5)
            for _ in range(count)]


def make_inputs(cfg, dtype, device="cpu"):
    c, r = cfg["c"], cfg["r"]
    x = torch.randn(cfg["n"], c, cfg["h"], cfg["w"], device=device)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    tail = (1, 1) if cfg["conv"] else ()
    w1 = torch.randn(r, c, *tail, device=device) / c ** 0.5
    w2 = torch.randn(c, r, *tail, device=device) / r ** 0.5
    b1 = torch.randn(r, device=device) if cfg["b1"] else None
    b2 = torch.randn(c, device=device) if cfg["b2"] else None
    return [None if t is None else t.to(dtype) for t in (x, w1, b1, w2, b2)]


def run(fn, tensors, cfg, g=None):
    """fn(x, w1, b1, w2, b2, act, gate) and, given g, the gradients of every tensor."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    if cfg["channels_last"]:
        leaves[0] = leaves[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = fn(*leaves, cfg["act"], cfg["gate"])
    if g is None:
        return out, None
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, g))
    return out, [None if t is None else next(grads) for t in leaves]


def check_config(cfg, backend, dtype, device="cpu"):
    tensors = make_inputs(cfg, dtype, device)
    eager, _ = run(reference_squeeze_excite, tensors, cfg)
    g = torch.randn(eager.shape, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last if cfg["channels_last"] else torch.contiguous_format)
    with fastblocks.backend(backend), torch.autograd.set_multithreading_enabled(False):
        out, grads = run(squeeze_excite, tensors, cfg, g)
    eager, grads_e = run(reference_squeeze_excite, tensors, cfg, g)
    hi = hi_grads = None
    if needs_reference(dtype):
        hi, hi_grads = run(reference_squeeze_excite,
                           [None if t is None else t.double() for t in tensors], cfg, g.double())
    assert out.stride() == eager.stride() or out.numel() == 0, \
        f"layout differs from eager: strides {out.stride()} vs {eager.stride()} ({cfg})"
    assert_parity(out, eager, None if dtype == torch.float32 else hi, f"forward {cfg}")
    for name, got, exp, ref in zip(NAMES, grads, grads_e, hi_grads or [None] * 5):
        if exp is None:
            continue
        assert_parity(got, exp, ref, f"grad {name} {cfg}", reduction=name != "x")


# ---- CPU: C++ kernels and the Triton interpreter ------------------------------------------

FUZZ = make_configs(240, seed=2026)
# channels past one vector (16 fp32 lanes), several kChunk buffers of fp16/bf16 (512), and
# planes big enough for the NHWC kernels to split H*W over threads
WIDE = make_configs(24, seed=7, channels=(24, 40, 72, 600), sizes=(5, 9, 30))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
def test_fuzz_fp32(backend):
    # the Triton interpreter and the torch reference: a quarter of the configurations (time)
    configs = FUZZ if backend == "cpu" else FUZZ[::4]
    for cfg in configs:
        check_config(cfg, backend, torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_fuzz_fp64(backend):
    for cfg in FUZZ[::6]:
        check_config(cfg, backend, torch.float64)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_cpu_wide(dtype):
    for cfg in WIDE:
        check_config(cfg, "cpu", dtype)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("channels_last", (False, True))
def test_cpu_forward_in_image_groups(channels_last):
    """The CPU forward pools, MLPs and scales images in groups of at most 2 MiB: 64x96x96 fp32
    (2.25 MiB) goes one image per group; 9 images of 16x96x96 fp32 (0.56 MiB) in 3 groups of
    3; in fp16 (0.28 MiB) in a group of 7 and one of 2."""
    for n, c, dtype in ((3, 64, torch.float32), (9, 16, torch.float32), (9, 16, torch.float16)):
        cfg = dict(n=n, c=c, r=4, h=96, w=96, act="silu", gate="sigmoid", b1=True, b2=True,
                   conv=True, channels_last=channels_last)
        check_config(cfg, "cpu", dtype)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("channels_last", (False, True))
def test_cpu_forward_streams_large_fp32_outputs(channels_last):
    """fp32 outputs of 24 MiB and more are written with non-temporal stores (csrc/cpu/
    squeeze_excite.cpp, kStreamBytes): 1x7x949x951 (24.1 MiB: 25.3 MB). 7 channels, so NHWC rows
    start unaligned, and an odd H*W, so NCHW planes do too and end in a partial vector (the
    scalar head and tail of scale_stream; 950x950 planes were all 16-byte aligned and whole
    vectors). Inference only (the backward does not stream); ~0.3 s."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 7, 949, 951, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(3, 7, generator=g), torch.randn(3, generator=g)
    w2, b2 = torch.randn(7, 3, generator=g), torch.randn(7, generator=g)
    with fastblocks.backend("cpu"), torch.no_grad():
        out = squeeze_excite(x, w1, b1, w2, b2, "relu", "sigmoid")
    eager = reference_squeeze_excite(x, w1, b1, w2, b2, "relu", "sigmoid")
    assert out.stride() == eager.stride()
    assert_parity(out, eager, None, "forward")


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
def test_cpu_backward_on_both_sides_of_the_hand_mlp():
    """The CPU backward runs the MLP by hand up to se_mlp::kHandBackwardRows (4) images, ATen's
    GEMMs past it: batch 4 and 5, every gate, the activations with float constants in their
    derivatives, both layouts, in fp64 (the fuzz above stays at batch 3 or less)."""
    for n, act, gate, cl in ((4, "hardsigmoid", "hardsigmoid", False), (5, "hardsigmoid", "hardsigmoid", True),
                             (4, "hardswish", "sigmoid", True), (5, "relu6", "sigmoid", False)):
        cfg = dict(n=n, c=20, r=6, h=3, w=5, act=act, gate=gate, b1=True, b2=True, conv=False,
                   channels_last=cl)
        check_config(cfg, "cpu", torch.float64)


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
@pytest.mark.parametrize("act", ("hardsigmoid", "relu6"))
def test_cpu_hand_backward_parameter_grads_are_eagers_bit_for_bit(act):
    """One image, one channel, one hidden unit, a 1x1 map, a hard-sigmoid gate and an activation
    with a piecewise-constant slope: every parameter gradient is then a product of the same
    factors in eager and in the hand MLP backward (se_cpu_mlp.h), so they agree exactly in fp64.
    This pins what the tolerance rule cannot see: hard-sigmoid's slope is ATen's float
    1.0f / 6.0f in every dtype (act_backward_aten); the exact 1/6 moves these gradients by
    3e-8 relative and passed every fp64 parity test of this file. grad x, a sum of two
    products (an FMA or not), is held to the tolerance rule."""
    tensors = [torch.tensor(v, dtype=torch.float64)
               for v in ([[[[0.7]]]], [[0.9]], [0.4], [[1.1]], [-0.2])]
    cfg = dict(act=act, gate="hardsigmoid", channels_last=False)
    g = torch.tensor([[[[1.3]]]], dtype=torch.float64)
    with fastblocks.backend("cpu"):
        out, grads = run(squeeze_excite, tensors, cfg, g)
    eager, grads_e = run(reference_squeeze_excite, tensors, cfg, g)
    assert_parity(out, eager, None, "forward")
    assert_parity(grads[0], grads_e[0], None, "grad x")
    for name, got, want in zip(NAMES[1:], grads[1:], grads_e[1:]):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.skipif("cpu" not in KERNEL_BACKENDS_CPU, reason="fastblocks._C CPU kernels not built")
def test_cpu_kernels_split_over_threads():
    """The C++ kernels' multi-thread paths, which the suite's one-thread pytest-xdist workers
    (tests/conftest.py) never take otherwise: 3 threads split a batch-1 NHWC plane's rows into
    3 partial sums (reduce_planes: 1x32x56x56 is 3 grains of 32768), and the hand MLP's FC rows
    into several tasks (se_cpu_mlp.h fc_rows: 1152 x 48 weights are 2 grains of multiply-adds),
    forward and backward, fp32 and fp16."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for n, c, r, h, cl in ((1, 32, 8, 56, True), (2, 1152, 48, 3, False), (1, 1152, 48, 2, True)):
            cfg = dict(n=n, c=c, r=r, h=h, w=h, act="hardswish", gate="sigmoid", b1=True,
                       b2=False, conv=False, channels_last=cl)
            for dtype in (torch.float32, torch.float16):
                check_config(cfg, "cpu", dtype)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_fuzz_low_precision(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic (bf16 runs on the GPU tests)")
    for cfg in FUZZ[1::4] if backend == "cpu" else FUZZ[1:40:3]:
        check_config(cfg, backend, dtype)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
@pytest.mark.parametrize("channels_last", (False, True))
def test_fp16_sums_past_65504_stay_finite(backend, channels_last):
    """A plane of 1000s sums to 256000 (> fp16's 65504): the mean, the output and the
    gradients stay finite and match the float64 composition within the fp16 rule."""
    x = torch.full((2, 4, 16, 16), 1000.0)
    x[1] = -500.0
    x = x + torch.randn_like(x)
    cfg = dict(act="relu", gate="sigmoid", channels_last=channels_last)
    w1, w2 = torch.randn(2, 4) * 1e-3, torch.randn(4, 2) * 1e-3
    tensors = [t.half() for t in (x, w1, torch.zeros(2), w2, torch.zeros(4))]
    g = torch.randn(x.shape).half()
    with fastblocks.backend(backend):
        out, grads = run(squeeze_excite, tensors, cfg, g)
    hi, hi_grads = run(reference_squeeze_excite, [t.double() for t in tensors], cfg, g.double())
    assert torch.isfinite(hi).all()
    for got, ref in zip([out] + grads, [hi] + hi_grads):
        assert torch.isfinite(got).all(), "inf/NaN from an fp16 sum past 65504"
        torch.testing.assert_close(got.double(), ref, rtol=2e-3, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_non_contiguous_and_unbatched(backend):
    x = torch.randn(2, 6, 9, 10)[:, ::2, :, 1::2]  # neither NCHW nor channels_last
    w1, b1, w2, b2 = torch.randn(2, 3), torch.randn(2), torch.randn(3, 2), torch.randn(3)
    with fastblocks.backend(backend):
        torch.testing.assert_close(squeeze_excite(x, w1, b1, w2, b2),
                                   reference_squeeze_excite(x, w1, b1, w2, b2))
        torch.testing.assert_close(squeeze_excite(x[0], w1, b1, w2, b2, "silu", "hardsigmoid"),
                                   reference_squeeze_excite(x[:1], w1, b1, w2, b2, "silu",
                                                            "hardsigmoid")[0])


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
def test_gradcheck(backend):
    fast = backend == "triton"  # the interpreter: random projections of the Jacobian
    for act, gate, cl in (("relu", "sigmoid", False), ("silu", "hardsigmoid", True),
                          ("hardswish", "sigmoid", True)):
        x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        ts = [x, torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
              torch.randn(5, 3, 1, 1, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
        ts = [t.requires_grad_() for t in ts]
        with fastblocks.backend(backend):
            assert torch.autograd.gradcheck(
                lambda *a: squeeze_excite(*a, act, gate), ts, fast_mode=fast)


@pytest.mark.parametrize("backend", ("cpu", "torch"))
def test_opcheck(backend):
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    with fastblocks.backend(backend):
        for xx, bias1, act, gate in ((x, b1, 1, 0), (x_cl, None, 5, 1)):
            torch.library.opcheck(torch.ops.fastblocks.squeeze_excite.default,
                                  (xx, w1, bias1, w2, b2, act, gate))
        g = torch.randn(x.shape, dtype=torch.float64)
        torch.library.opcheck(torch.ops.fastblocks.squeeze_excite_backward.default,
                              (g, x_cl.detach(), x.detach().mean((2, 3)), w1.detach(),
                               b1.detach(), w2.detach(), None, 3, 0))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_training_paths_agree(backend):
    """Plain eager training (a Python autograd.Function around the kernels) and the registered
    op give eager's values and gradients; neither gives a silent second derivative."""
    ts = [torch.randn(2, 6, 5, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64),
          torch.randn(3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64),
          torch.randn(6, dtype=torch.float64)]
    g = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in ts]
    ref = reference_squeeze_excite(*leaves, "silu", "sigmoid")
    expected = (ref, *torch.autograd.grad(ref, leaves, g))
    with fastblocks.backend(backend):
        for route in ("direct", "registered"):
            if route == "direct":
                y = squeeze_excite(*leaves, "silu", "sigmoid")
                assert y.grad_fn.name() == "SqueezeExciteFunctionBackward"
            else:
                y = torch.ops.fastblocks.squeeze_excite(*leaves, 5, 0)[0]
            torch.testing.assert_close((y, *torch.autograd.grad(y, leaves, g)), expected)
        for y in (squeeze_excite(*leaves, "silu", "sigmoid"),
                  torch.ops.fastblocks.squeeze_excite(*leaves, 5, 0)[0]):
            (gx,) = torch.autograd.grad(y, leaves[0], g, create_graph=True)
            with pytest.raises(RuntimeError):  # no second derivative, not a silent one
                gx.sum().backward()


@pytest.mark.parametrize("backend", ("cpu", "triton"))
def test_compile_fullgraph(backend):
    def f(x, w1, b1, w2, b2):
        y = squeeze_excite(x, w1, b1, w2, b2, "hardswish", "hardsigmoid")
        return squeeze_excite(y * 2, w1, None, w2, b2, "relu", "sigmoid")

    def ref(x, w1, b1, w2, b2):
        y = reference_squeeze_excite(x, w1, b1, w2, b2, "hardswish", "hardsigmoid")
        return reference_squeeze_excite(y * 2, w1, None, w2, b2, "relu", "sigmoid")

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ts = [torch.randn(2, 4, 5, 5), torch.randn(2, 4, 1, 1), torch.randn(2), torch.randn(4, 2),
          torch.randn(4)]
    ours = [t.clone().requires_grad_() for t in ts]
    theirs = [t.clone().requires_grad_() for t in ts]
    with fastblocks.backend(backend):
        out = compiled(*ours)
        out.sum().backward()
    expected = ref(*theirs)
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a.grad, e.grad)


@pytest.mark.parametrize("x_dtype", (torch.float32, torch.bfloat16))
def test_autocast_keeps_x_dtype_like_eager(x_dtype):
    """Eager SE under autocast runs its convs in bf16 and x * s promotes back to x's dtype:
    the op gives that dtype, from mixed-dtype parameters without raising, at most as far from
    the float64 result as eager's."""
    x = torch.randn(2, 4, 5, 5).to(x_dtype)
    w1, b1, w2, b2 = torch.randn(2, 4), torch.randn(2), torch.randn(4, 2), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference_squeeze_excite(x, w1, b1, w2, b2)
        out = squeeze_excite(x, w1, b1.bfloat16(), w2, b2)
        op_out = torch.ops.fastblocks.squeeze_excite(x, w1, b1.double(), w2, b2, 1, 0)[0]
    assert expected.dtype == out.dtype == op_out.dtype == x_dtype
    hi = reference_squeeze_excite(*(t.double() for t in (x, w1, b1, w2, b2)))
    eager_err = (expected.double() - hi).abs().max()
    for got in (out, op_out):
        assert (got.double() - hi).abs().max() <= max(eager_err, 1e-6)


def test_bad_inputs():
    x = torch.randn(2, 4, 5, 5)
    w1, b1, w2, b2 = torch.randn(2, 4), torch.randn(2), torch.randn(4, 2), torch.randn(4)
    good = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    cases = [
        (dict(w1=torch.randn(2, 3)), ValueError, r"w1 must have shape \(C_r, C\) = \(C_r, 4\)"),
        (dict(w1=torch.randn(2, 4, 3, 3)), ValueError, r"w1 must have shape"),
        (dict(w2=torch.randn(4, 3)), ValueError, r"w2 must have shape \(C, C_r\) = \(4, 2\) to chain with w1"),
        (dict(w2=torch.randn(5, 2)), ValueError, r"w2 must have shape"),
        (dict(b1=torch.randn(3)), ValueError, r"b1 must have shape \(C_r,\) = \(2,\)"),
        (dict(b2=torch.randn(2)), ValueError, r"b2 must have shape \(C,\) = \(4,\)"),
        (dict(x=torch.randn(2, 4, 5)), ValueError, r"w1 must have shape"),
        (dict(x=torch.randn(4, 5)), ValueError, r"x must be 4-d"),
        (dict(x=torch.randn(2, 4, 0, 5)), ValueError, r"x must have at least one channel and H\*W >= 1"),
        (dict(x=x.long()), TypeError, r"x must have a floating dtype"),
        (dict(w2=w2.double()), TypeError, r"w2 has dtype torch.float64 but x has torch.float32"),
        (dict(b1=[0.0, 1.0]), TypeError, r"b1 must be a torch.Tensor"),
    ]
    for override, exc, pattern in cases:
        args = {**good, **override}
        with pytest.raises(exc, match=pattern):
            squeeze_excite(args["x"], args["w1"], args["b1"], args["w2"], args["b2"])
    with pytest.raises(ValueError, match=r"gate must be one of \['hardsigmoid', 'sigmoid'\], got 'tanh'"):
        squeeze_excite(x, w1, b1, w2, b2, gate="tanh")
    with pytest.raises(ValueError, match=r"activation must be one of"):
        squeeze_excite(x, w1, b1, w2, b2, activation="gelu")


@pytest.mark.skipif(fastblocks._extension.C_ERROR is not None, reason="fastblocks._C not built")
def test_kernel_contract_errors_name_the_argument():
    x = torch.randn(2, 4, 3, 3)
    w1, w2 = torch.randn(2, 4), torch.randn(4, 2)
    op = torch.ops.fastblocks_C.squeeze_excite_forward
    with pytest.raises(RuntimeError, match=r"w2 must have shape \(4, 2\)"):
        op(x, w1, None, torch.randn(4, 3), None, 1, 0, False)
    with pytest.raises(RuntimeError, match=r"unknown gate code 7"):
        op(x, w1, None, w2, None, 1, 7, False)
    with pytest.raises(RuntimeError, match=r"x must be contiguous in channels_last"):
        op(x, w1, None, w2, None, 1, 0, True)


# ---- the module ---------------------------------------------------------------------------

def _parity(fused: nn.Module, eager: nn.Module, x: torch.Tensor):
    """Same output and the same gradients for x and every parameter (by name)."""
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(xi) for m, xi in zip((fused, eager), xs)]
    torch.testing.assert_close(outs[0], outs[1])
    g = torch.randn_like(outs[0])
    params = [dict(m.named_parameters()) for m in (fused, eager)]
    assert list(params[0]) == list(params[1])
    grads = [torch.autograd.grad(o, [xi, *p.values()], g) for o, xi, p in zip(outs, xs, params)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_module_is_a_drop_in_for_torchvision_squeeze_excitation():
    torch.manual_seed(1)
    eager = SqueezeExcitation(16, 4, nn.Hardswish, nn.Hardsigmoid)
    fused = SqueezeExcite(16, 4, nn.Hardswish, nn.Hardsigmoid)
    assert list(fused.state_dict()) == list(eager.state_dict())
    fused.load_state_dict(eager.state_dict())
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(3, 16, 7, 5)
    for mode in ("train", "eval"):
        getattr(fused, mode)(), getattr(eager, mode)()
        _parity(fused, eager, x)
        _parity(fused, eager, x.contiguous(memory_format=torch.channels_last))
    assert "activation=hardswish, gate=hardsigmoid" in repr(fused)


class TimmSqueezeExcite(nn.Module):
    """timm's efficientnet_blocks.SqueezeExcite layout and forward."""

    def __init__(self, c, rd, act_layer=nn.ReLU, gate_layer=nn.Sigmoid):
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, rd, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd, c, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x):
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(x_se)


class TimmSEModule(nn.Module):
    """timm's layers.squeeze_excite.SEModule layout and forward (use_norm=False)."""

    def __init__(self, c, rd, bias=True):
        super().__init__()
        self.add_maxpool = False
        self.fc1 = nn.Conv2d(c, rd, 1, bias=bias)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, c, 1, bias=bias)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x_se = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * self.gate(x_se)


class SiLUActivation(nn.Module):
    """Hugging Face's SiLUActivation (transformers < 4.3x; later ones map "swish" to nn.SiLU)."""

    def forward(self, x):
        return F.silu(x)


class HFEfficientNetSqueezeExciteLayer(nn.Module):
    """Hugging Face's EfficientNetSqueezeExciteLayer layout and forward."""

    def __init__(self, c, rd):
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(output_size=1)
        self.reduce = nn.Conv2d(c, rd, kernel_size=1, padding="same")
        self.expand = nn.Conv2d(rd, c, kernel_size=1, padding="same")
        self.act_reduce = SiLUActivation()
        self.act_expand = nn.Sigmoid()

    def forward(self, hidden_states):
        s = self.act_expand(self.expand(self.act_reduce(self.reduce(self.squeeze(hidden_states)))))
        return torch.mul(hidden_states, s)


class SEResNetLayer(nn.Module):
    """The classic SE-ResNet SELayer: Linear layers in a Sequential, no biases."""

    def __init__(self, c, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // reduction, c, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1).expand_as(x)


@pytest.mark.parametrize("make", (
    lambda: SqueezeExcitation(12, 3),
    lambda: TimmSqueezeExcite(12, 3, nn.SiLU),
    lambda: TimmSqueezeExcite(12, 5, nn.ReLU, nn.Hardsigmoid),
    lambda: TimmSEModule(12, 3),
    lambda: TimmSEModule(12, 3, bias=False),
    lambda: HFEfficientNetSqueezeExciteLayer(12, 3),
    lambda: SEResNetLayer(12),
), ids=("torchvision", "timm-SqueezeExcite-silu", "timm-SqueezeExcite-hardsigmoid",
        "timm-SEModule", "timm-SEModule-nobias", "hf-efficientnet", "se-resnet-linear"))
def test_from_module_keeps_names_and_results(make):
    torch.manual_seed(2)
    eager = make()
    fused = SqueezeExcite.from_module(eager)
    assert list(fused.state_dict()) == list(eager.state_dict())
    for (n1, p1), (n2, p2) in zip(fused.named_parameters(), eager.named_parameters()):
        assert n1 == n2 and p1 is p2  # shared, not copied
    x = torch.randn(2, 12, 6, 5)
    _parity(fused, eager, x)
    _parity(fused, eager, x.contiguous(memory_format=torch.channels_last))
    copy = make()
    copy.load_state_dict(fused.state_dict())
    torch.testing.assert_close(copy(x), fused(x))


def test_from_module_with_transformers_efficientnet_if_installed():
    modeling = pytest.importorskip("transformers.models.efficientnet.modeling_efficientnet")
    config = pytest.importorskip("transformers").EfficientNetConfig()
    eager = modeling.EfficientNetSqueezeExciteLayer(config, in_dim=8, expand_dim=24, expand=True)
    fused = SqueezeExcite.from_module(eager)
    assert fused.act_name == "silu" and fused.gate_name == "sigmoid"
    assert list(fused.state_dict()) == list(eager.state_dict())
    _parity(fused, eager, torch.randn(2, 24, 5, 5))


def test_from_module_rejects_what_it_cannot_fuse():
    with pytest.raises(TypeError, match="does not recognise Conv2d"):
        SqueezeExcite.from_module(nn.Conv2d(3, 3, 1))
    bad = TimmSEModule(8, 2)
    bad.bn = nn.BatchNorm2d(2)
    with pytest.raises(TypeError, match="norm between its FC layers"):
        SqueezeExcite.from_module(bad)
    gelu = TimmSqueezeExcite(8, 2)
    gelu.act1 = nn.GELU()
    with pytest.raises(TypeError, match="supports activation"):
        SqueezeExcite.from_module(gelu)
    with pytest.raises(TypeError, match="supports gate"):
        SqueezeExcite(8, 2, scale_activation=nn.Tanh)


def test_module_compiles_fullgraph():
    torch._dynamo.reset()
    eager = SEResNetLayer(8)
    fused = SqueezeExcite.from_module(eager)
    x = torch.randn(2, 8, 4, 4)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager(x))


# ---- GPU -----------------------------------------------------------------------------------

CUDA_WIDE = make_configs(40, seed=5, channels=(16, 72, 240, 960), sizes=(1, 7, 14, 28, 56))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_fuzz_cuda(backend, dtype):
    for cfg in FUZZ[:80] + CUDA_WIDE:
        check_config(cfg, backend, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_fp16_overflow_cuda(backend):
    x = torch.full((4, 64, 56, 56), 60.0, device="cuda", dtype=torch.float16)  # sums 188160
    w1 = torch.randn(16, 64, device="cuda", dtype=torch.float16) * 1e-2
    w2 = torch.randn(64, 16, device="cuda", dtype=torch.float16) * 1e-2
    with fastblocks.backend(backend):
        y = squeeze_excite(x, w1, None, w2, None)
    ref = reference_squeeze_excite(*(t.double() for t in (x, w1)), None, w2.double(), None)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=1e-1)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_gradcheck_cuda(backend):
    ts = [torch.randn(2, 5, 3, 4, dtype=torch.float64, device="cuda"),
          torch.randn(3, 5, dtype=torch.float64, device="cuda"),
          torch.randn(3, dtype=torch.float64, device="cuda"),
          torch.randn(5, 3, dtype=torch.float64, device="cuda"),
          torch.randn(5, dtype=torch.float64, device="cuda")]
    ts = [t.requires_grad_() for t in ts]
    with fastblocks.backend(backend):
        assert torch.autograd.gradcheck(lambda *a: squeeze_excite(*a, "silu", "sigmoid"), ts)
