"""Issue 12: faults found by replaying public bug reports against depthwise_conv2d and the
activations, each kept as a test with eager PyTorch's value, for every backend that runs on CPU
(cpu: the C++ kernels; triton: the interpreter; torch: the eager reference backend).

1. Gradients whose strides differ only where they do not matter (size-1 dimensions, empty
   tensors, expanded gradients) reach every kernel entry point and are accepted.
2. The output's memory format follows PyTorch's rule for convolutions: channels_last if the
   input or the weight is.
3. A BatchNorm in training mode is never folded silently.
4. Scratch memory and time stay bounded by the tensors whatever the stride, padding and
   dilation; an absurd geometry gets eager's answer or a clear error (tested under a memory
   cap).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks.ops._layout import same_layout
from fastblocks.ops import depthwise_conv2d
from fastblocks.ops._dispatch import run_kernel
from fastblocks.ops.activation import reference_backward, reference_forward
from fastblocks.ops.depthwise import (_reference_backward_input, _reference_backward_weight,
                                      _reference_forward)
from fastblocks.ops._activation_codes import activation_code

HAS_C = fastblocks._extension.C_ERROR is None
BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not HAS_C, reason="fastblocks._C not built")),
            "triton", "torch"]
ACTS = ("relu", "relu6", "hardswish", "silu")
CL = torch.channels_last


def eager(x, w, b, stride=1, padding=0, dilation=1, activation=None):
    y = F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[1])
    return y if activation is None else getattr(F, activation)(y)


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def train_both(backend, loss, x, w, b=None, **kw):
    """(y, grads) of loss(depthwise_conv2d(...)) on `backend` and of loss(eager(...))."""
    out = []
    for fn, ctx in ((depthwise_conv2d, fastblocks.backend(backend)), (eager, fastblocks.backend("torch"))):
        ts = leaves(x, w, b)
        with ctx:
            y = fn(*ts, **kw)
            grads = torch.autograd.grad(loss(y), [t for t in ts if t is not None])
        out.append((y.detach(), grads))
    return out


# ---- 1. layouts PyTorch considers equivalent ---------------------------------------------------

def _listed_trainings():
    """The issue's inputs, as (name, loss, x, w, kwargs)."""
    torch.manual_seed(12)
    head = nn.Linear(8, 3)
    return [
        ("1x1x1x1", lambda y: y.sum(), torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), {}),
        ("global head, linear", lambda y: head(y.flatten(1)).sum(),
         torch.randn(2, 8, 7, 7).contiguous(memory_format=CL), torch.randn(8, 1, 7, 7), {}),
        ("global head, mean", lambda y: y.mean((2, 3)).pow(2).sum(),
         torch.randn(2, 8, 7, 7).contiguous(memory_format=CL), torch.randn(8, 1, 7, 7), {}),
        ("width-1 output through a transpose", lambda y: (y.transpose(2, 3) * torch.arange(16.)).sum(),
         torch.randn(2, 8, 16, 1), torch.randn(8, 1, 3, 1), {"padding": (1, 0)}),
        ("empty batch", lambda y: y.sum(), torch.randn(0, 8, 5, 5), torch.randn(8, 1, 3, 3), {"padding": 1}),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_listed_trainings_give_eager_gradients(backend):
    # the Triton interpreter is slow: two activations there, all four elsewhere
    acts = ACTS if backend != "triton" else ("relu6", "hardswish")
    for name, loss, x, w, kw in _listed_trainings():
        for act in acts:
            (y, grads), (ye, grads_e) = train_both(backend, loss, x, w, activation=act, **kw)
            torch.testing.assert_close(y, ye, msg=f"{name} {act}")
            for g, ge in zip(grads, grads_e):
                torch.testing.assert_close(g, ge, msg=f"{name} {act}")
    # the smallest one's value, as the issue gives it
    (_, (gx, gw)), _ = train_both(backend, lambda y: y.sum(), torch.zeros(1, 1, 1, 1),
                                  torch.ones(1, 1, 1, 1), activation="relu6")
    assert gw.flatten().tolist() == [0.0]


def _equivalent_gradients(shape, like):
    """Gradients of `shape` laid out differently from `like` only where it cannot matter, or
    not dense at all: contiguous, channels_last, expanded from one value, a transposed copy."""
    g = torch.randn(shape)
    yield g.contiguous()
    yield torch.tensor(0.75).expand(shape)  # y.sum().backward()
    if len(shape) == 4:
        yield g.contiguous(memory_format=CL)
        yield g.to(memory_format=CL)  # restrides size-1 dimensions too
        yield g.transpose(2, 3).contiguous().transpose(2, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_kernels_accept_equivalent_layouts(backend):
    """fastblocks_C / Triton / reference activation kernels, forward and backward, with x and
    grad in layouts that differ only in strides of size-1 dimensions, empty, or expanded."""
    shapes = [(2, 8, 1, 1), (2, 1, 5, 1), (0, 8, 5, 5), (3, 1, 1, 4), (7,)]
    for shape in shapes:
        base = torch.randn(shape)
        xs = [base.contiguous()]
        if len(shape) == 4:
            xs += [base.to(memory_format=CL), base.transpose(2, 3).contiguous().transpose(2, 3)]
        for x in xs:
            for act in (activation_code("relu6"), activation_code("hardswish")):
                with fastblocks.backend(backend):
                    y = run_kernel("activation", "activation_forward", x.device, (x, act), reference_forward)
                torch.testing.assert_close(y, reference_forward(x, act))
                for g in _equivalent_gradients(shape, x):
                    with fastblocks.backend(backend):
                        gx = run_kernel("activation", "activation_backward", x.device, (g, x, act),
                                        reference_backward)
                    torch.testing.assert_close(gx, reference_backward(g.contiguous(), x, act))
    # a non-dense x (every other channel) is copied once, not refused
    x = torch.randn(2, 8, 3, 3)[:, ::2]
    g = torch.randn(2, 4, 3, 3)
    with fastblocks.backend(backend):
        y = run_kernel("activation", "activation_forward", x.device, (x, 3), reference_forward)
        gx = run_kernel("activation", "activation_backward", x.device, (g, x, 3), reference_backward)
    torch.testing.assert_close(y, reference_forward(x, 3))
    torch.testing.assert_close(gx, reference_backward(g, x, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_kernels_accept_equivalent_layouts(backend):
    """The three depthwise kernels (forward, input gradient, weight gradient) of each backend,
    NCHW and channels_last, with x, grad, weight and bias in equivalent or expanded layouts."""
    torch.manual_seed(1)
    geo = ([1, 1], [1, 0], [1, 1])
    shapes = ((2, 8, 1, 1, 1, (1, 1)), (2, 8, 16, 1, 1, (3, 1)), (0, 4, 5, 5, 2, (3, 3)), (2, 1, 4, 5, 3, (3, 3)))
    for n, c, h, w, m, k in shapes if backend != "triton" else shapes[1:3]:  # the interpreter is slow
        x0 = torch.randn(n, c, h, w)
        w0 = torch.randn(c * m, 1, *k)
        b0 = torch.randn(c * m)
        out = [(h + 2 * geo[1][0] - k[0]) + 1, (w + 2 * geo[1][1] - k[1]) + 1]
        for cl in (False, True):
            fmt = CL if cl else torch.contiguous_format
            ref_args = (x0.contiguous(memory_format=fmt), w0, b0, *geo, out, 2, cl)
            expected = _reference_forward(*ref_args)
            x = x0.to(memory_format=CL)
            for xx, wt, b in ((x0, w0, b0), (x, w0.to(memory_format=CL), b0[:1].expand(c * m))):
                with fastblocks.backend(backend):
                    y = run_kernel("depthwise", "depthwise_forward", xx.device,
                                   (xx, wt, b, *geo, out, 2, cl), _reference_forward)
                torch.testing.assert_close(y, _reference_forward(
                    xx.contiguous(memory_format=fmt), w0, b.contiguous(), *geo, out, 2, cl))
            for g in _equivalent_gradients(tuple(expected.shape), expected):
                gref = g.contiguous(memory_format=fmt)
                with fastblocks.backend(backend):
                    gx = run_kernel("depthwise", "depthwise_backward_input", x.device,
                                    (g, w0.to(memory_format=CL), (c, h, w), *geo, cl),
                                    _reference_backward_input)
                    gw = run_kernel("depthwise", "depthwise_backward_weight", x.device,
                                    (g, x, k, *geo, cl), _reference_backward_weight)
                torch.testing.assert_close(gx, _reference_backward_input(gref, w0, (c, h, w), *geo, cl))
                torch.testing.assert_close(gw, _reference_backward_weight(
                    gref, x.contiguous(memory_format=fmt), k, *geo, cl))


# ---- 2. the output's memory format -------------------------------------------------------------

def _format_cases():
    """(name, x, w, kwargs): the issue's two inputs and the other combinations of the rule."""
    torch.manual_seed(2)
    x16 = torch.randn(2, 16, 10, 10)
    w16 = torch.randn(16, 1, 3, 3)
    return [
        ("x NCHW, weight channels_last", x16, w16.to(memory_format=CL), {"padding": 1}),
        ("C=1 m=64, weight channels_last", torch.randn(2, 1, 10, 10),
         torch.randn(64, 1, 3, 3).to(memory_format=CL), {"padding": 1}),
        ("x channels_last, weight NCHW", x16.to(memory_format=CL), w16, {"padding": 1}),
        ("both NCHW", x16, w16, {"padding": 1}),
        ("x (N, 1, H, W) channels_last", torch.randn(2, 1, 9, 9).to(memory_format=CL),
         torch.randn(3, 1, 3, 3), {"stride": 2}),
        ("x (N, C, 1, 1) channels_last", torch.randn(2, 8, 1, 1).to(memory_format=CL),
         torch.randn(8, 1, 1, 1), {}),
        ("1x1 output, weight channels_last", x16, w16.to(memory_format=CL), {"stride": 8}),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_memory_format_follows_conv_rule(backend):
    cases = _format_cases()
    for name, x, w, kw in cases if backend != "triton" else cases[:2] + cases[4:5]:
        expected = eager(x, w, None, **kw)
        for grad in (False, True):  # inference and the training paths (C++ node, autograd.Function)
            ts = leaves(x, w) if grad else (x, w)
            with fastblocks.backend(backend):
                y = depthwise_conv2d(*ts, activation="relu6", **kw)
            # strides of size-1 dims carry no layout, and eager's own vary there with the
            # convolution algorithm ATen picks (thread count): compare the rest exactly
            assert same_layout(y, expected), (name, grad, y.stride(), expected.stride())
            torch.testing.assert_close(y, F.relu6(expected), msg=name)
    # the number
    x, w = torch.randn(2, 16, 10, 10), torch.randn(16, 1, 3, 3).to(memory_format=CL)
    with fastblocks.backend(backend):
        assert depthwise_conv2d(x, w, padding=1).stride() == (1600, 1, 160, 16)


@pytest.mark.parametrize("backend", ("torch", pytest.param("cpu", marks=pytest.mark.skipif(
    not HAS_C, reason="fastblocks._C not built"))))
def test_memory_format_of_registered_op_and_module(backend):
    """The registered op's fake kernel tells torch.compile the same strides (opcheck), and a
    module converted to channels_last fed a plain tensor returns channels_last, as nn.Conv2d."""
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64).to(memory_format=CL).requires_grad_()
    with fastblocks.backend(backend):
        fake_only = ("test_schema", "test_faketensor")  # the strides the fake kernels give
        torch.library.opcheck(torch.ops.fastblocks.depthwise_conv2d.default,
                              (x, w, None, [1, 1], [1, 1], [1, 1], [6, 6], 2), test_utils=fake_only)
        torch.library.opcheck(torch.ops.fastblocks.depthwise_conv2d_backward.default,
                              (torch.randn(2, 8, 6, 6, dtype=torch.float64), x.detach(), w.detach(),
                               [1, 1], [1, 1], [1, 1], [True, True, False]), test_utils=fake_only)
        conv = nn.Conv2d(16, 16, 3, padding=1, groups=16).to(memory_format=CL)
        ours = fastblocks.nn.DepthwiseConv2d.from_conv(conv)
        xin = torch.randn(2, 16, 10, 10)
        assert ours(xin).stride() == conv(xin).stride() == (1600, 1, 160, 16)
        torch.testing.assert_close(ours(xin), conv(xin))


# ---- 3. BatchNorm folding ------------------------------------------------------------------------

def test_training_batchnorm_is_never_folded_silently():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    assert bn.training
    with pytest.raises(ValueError, match=r"bn is in training mode.*bn\.eval\(\)"):
        fastblocks.nn.DepthwiseConv2d.from_conv(conv, bn)
    with pytest.raises(ValueError, match=r"bn is in training mode"):
        fastblocks.nn.fold_batchnorm(conv.weight, conv.bias, bn)
    before = [t.clone() for t in (conv.weight, conv.bias, bn.running_mean, bn.running_var)]
    assert all(torch.equal(a, b) for a, b in
               zip(before, (conv.weight, conv.bias, bn.running_mean, bn.running_var)))
    # eval mode folds, and gives bn(conv(x)) as eval computes it
    fused = fastblocks.nn.DepthwiseConv2d.from_conv(conv, bn.eval(), activation="hardswish")
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(fused(x), F.hardswish(bn(conv(x))))
    # back in training mode it is refused again
    with pytest.raises(ValueError, match=r"training mode"):
        fastblocks.nn.DepthwiseConv2d.from_conv(conv, bn.train())


# ---- 4. absurd geometries ----------------------------------------------------------------------

# (x shape, weight shape, kwargs) with eager's answer at once; the first rows are the issue's.
GEOMETRIES = [
    ((1, 2, 5, 5), (2, 1, 3, 3), {"stride": 16384}),
    ((1, 2, 5, 5), (2, 1, 3, 3), {"stride": 65536}),
    ((1, 2, 5, 5), (2, 1, 3, 3), {"stride": 2 ** 31}),
    ((1, 2, 5, 5), (2, 1, 3, 3), {"stride": 2 ** 63 - 1}),
    ((1, 2, 5, 5), (2, 1, 3, 3), {"dilation": 2 ** 20, "padding": 2 ** 20}),
    ((1, 2, 5, 5), (2, 1, 3, 3), {"dilation": 4096, "padding": 4096}),
    ((1, 2, 5, 5), (2, 1, 3, 3), {"dilation": 2 ** 40, "padding": 2 ** 40}),
    # several outputs, most reading only padding
    ((1, 2, 5, 5), (2, 1, 3, 3), {"stride": 2 ** 20, "padding": 2 ** 20}),
    ((2, 3, 4, 6), (6, 1, 2, 3), {"stride": (2 ** 33, 3), "padding": (2 ** 33 - 1, 2 ** 30), "dilation": (1, 2 ** 30)}),
    # stride, dilation and padding all huge with two taps landing, per axis: no smaller
    # geometry of the same kind reads the same pixels; still exact
    ((1, 2, 1, 1), (2, 1, 2, 2), {"stride": 2 ** 20, "dilation": 2 ** 20, "padding": 2 ** 20}),
    ((1, 16, 3, 2), (16, 1, 2, 2), {"stride": 2 ** 31, "dilation": 2 ** 31, "padding": 2 ** 31}),
]


def check_geometry(backend, xs, ws, kw, dtype=torch.float64):
    torch.manual_seed(4)
    x = torch.randn(xs, dtype=dtype)
    w = torch.randn(ws, dtype=dtype)
    b = torch.randn(ws[0], dtype=dtype)
    for fmt in (torch.contiguous_format, CL):
        xf = x.contiguous(memory_format=fmt)
        (y, grads), (ye, grads_e) = train_both(backend, lambda y: (y * torch.arange(y.numel(), dtype=dtype)
                                                                    .view(y.shape)).sum(),
                                               xf, w, b, activation="hardswish", **kw)
        torch.testing.assert_close(y, ye, msg=f"{xs} {kw}")
        for g, ge in zip(grads, grads_e):
            torch.testing.assert_close(g, ge, msg=f"{xs} {kw}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_absurd_geometries_give_eager_values(backend):
    for xs, ws, kw in GEOMETRIES if backend != "triton" else GEOMETRIES[::2]:
        check_geometry(backend, xs, ws, kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_geometry_past_int64_is_a_clear_error(backend):
    x, w = torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3)
    with fastblocks.backend(backend):
        with pytest.raises(ValueError, match=r"padding must be below 2\*\*62"):
            depthwise_conv2d(x, w, padding=2 ** 62)
        with pytest.raises(ValueError, match=r"stride \* \(output size - 1\)"):
            depthwise_conv2d(x, w, stride=2 ** 62, padding=2 ** 62 - 1)
        with pytest.raises(ValueError, match=r"dilation \* \(kernel size - 1\)"):
            depthwise_conv2d(x, w, dilation=2 ** 61, padding=2 ** 61)


@pytest.mark.skipif(not HAS_C, reason="fastblocks._C not built")
def test_cpu_kernels_check_index_range_themselves():
    C = torch.ops.fastblocks_C
    x, w = torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3)
    with pytest.raises(RuntimeError, match=r"depthwise_forward: padding must be below 2\^62"):
        C.depthwise_forward(x, w, None, [1, 1], [2 ** 62, 0], [1, 1], [5, 3], 0, False)
    with pytest.raises(RuntimeError, match=r"depthwise_backward_input: stride x \(output size - 1\)"):
        C.depthwise_backward_input(torch.randn(1, 2, 3, 3), w, [2, 5, 5], [2 ** 62, 1], [0, 0], [1, 1], False)


# Under an address-space cap: the geometries peaked near 2.4 GB (stride 16384), raised
# std::bad_alloc (65536, dilation = padding = 2^20) or never returned (2^31) on the cpu backend,
# and the torch backend's explicit F.pad of padding 4096 failed under 3 GB.
CAPPED = textwrap.dedent("""
    import resource, sys, time
    cap = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.path.insert(0, sys.argv[2])
    import torch
    torch.set_num_threads(1)
    import test_issue12_faults as t
    start = time.perf_counter()
    for backend in sys.argv[3:]:
        for xs, ws, kw in t.GEOMETRIES:
            t.check_geometry(backend, xs, ws, kw, torch.float32)
    print(f"ok {time.perf_counter() - start:.1f} s")
""")


DIRECT_FUZZ = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    import test_depthwise as td
    for dtype, configs in ((torch.float32, td.FUZZ[:50] + td.WIDE[:20]), (torch.float64, td.FUZZ[100:120]),
                           (torch.float16, td.FUZZ[140:155]), (torch.bfloat16, td.FUZZ[170:185])):
        for cfg in configs:
            td.check_config(cfg, "cpu", dtype)
    print("ok")
""")


@pytest.mark.skipif(not HAS_C, reason="fastblocks._C not built")
def test_cpu_direct_kernels_match_eager_on_the_fuzz():
    """The scratch-free CPU kernels serve only absurd geometries in practice; forced onto the
    depthwise fuzz (every layout, multiplier, padding mode, dtype) they give eager's values."""
    env = dict(os.environ, FASTBLOCKS_CPU_DEPTHWISE_DIRECT="1")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", DIRECT_FUZZ, here], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr[-3000:]


def test_absurd_geometries_under_a_memory_cap():
    backends = (["cpu"] if HAS_C else []) + ["torch"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    here = os.path.dirname(os.path.abspath(__file__))
    # 2 GiB of address space: importing torch and fastblocks takes ~0.85 GB of it here
    proc = subprocess.run([sys.executable, "-c", CAPPED, "2048", here, *backends], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr[-3000:]
