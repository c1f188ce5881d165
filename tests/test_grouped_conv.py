"""Grouped convolution with a fused activation and shuffled output: seeded fuzz against the
eager composition (F.conv2d, activation, F.channel_shuffle) per backend, forward and the
gradients of x, weight and bias; gradcheck; compile; bad inputs; the GroupedConv2d module."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks import nn as fbnn
from fastblocks.ops import grouped_conv2d
from fastblocks.ops.grouped_conv import reference_grouped_conv2d
from fastblocks.testing import needs_reference
from tolerances import KERNEL_BACKENDS_CPU, KERNEL_BACKENDS_CUDA, assert_parity

ACTIVATIONS = (None, "relu", "relu6", "hardswish", "hardsigmoid", "silu")


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def make_configs(count, seed):
    """Random valid grouped convolutions: groups 1-8, 1-3 channels per group in and out,
    1x1 (ShuffleNet), 3x3 (ResNeXt) and odd kernels, strides, paddings ("same" and "valid"
    too), dilation, batch 0, both layouts, bias or not, every activation, and a shuffle over
    any divisor of C_out (None a quarter of the time), a channels_last weight now and then."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        groups = rng.choice([1, 2, 3, 4, 8])
        c_in, c_out = groups * rng.choice([1, 2, 3]), groups * rng.choice([1, 2, 3])
        k = rng.choice([(1, 1), (1, 1), (3, 3), (3, 3), (1, 3), (2, 2)])
        stride = rng.choice([1, 1, 2, (1, 2)])
        padding = rng.choice([0, 1, (1, 0), "same", "valid"])
        if padding == "same":
            stride = 1
        shuffle = rng.choice([None] + _divisors(c_out) * 3)
        cfg = dict(n=rng.choice([0, 1, 2]), c_in=c_in, c_out=c_out, h=rng.choice([1, 3, 5, 7]),
                   w=rng.choice([1, 2, 5, 8]), k=k, stride=stride, padding=padding,
                   dilation=rng.choice([1, 1, 2]), groups=groups, bias=rng.random() < 0.7,
                   activation=rng.choice(ACTIVATIONS), shuffle_groups=shuffle,
                   channels_last=rng.random() < 0.5, weight_channels_last=rng.random() < 0.2)
        if k == (1, 1) and cfg["dilation"] > 1:
            # eager F.conv2d with a bias segfaults on some of these (torch 2.13.0+cpu, oneDNN):
            # 2x12x3x1 channels_last, 1x1, stride (1, 2), padding 1, dilation 2, groups 4
            continue
        try:  # keep only configurations F.conv2d accepts
            F.conv2d(torch.empty(1, c_in, cfg["h"], cfg["w"]), torch.empty(c_out, c_in // groups, *k),
                     None, stride, padding, cfg["dilation"], groups)
        except RuntimeError:
            continue
        configs.append(cfg)
    return configs


FUZZ = make_configs(220, seed=316)


def make_inputs(cfg, dtype, device="cpu"):
    x = torch.randn(cfg["n"], cfg["c_in"], cfg["h"], cfg["w"], device=device).to(dtype)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cfg["c_out"], cfg["c_in"] // cfg["groups"], *cfg["k"], device=device).to(dtype)
    if cfg.get("weight_channels_last"):  # the output is channels_last then, as PyTorch's conv
        w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(cfg["c_out"], device=device).to(dtype) if cfg["bias"] else None
    return x, w, b


def check_config(cfg, backend, dtype, device="cpu"):
    x, w, b = make_inputs(cfg, dtype, device)
    tensors = [t for t in (x, w, b) if t is not None]
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
              groups=cfg["groups"], activation=cfg["activation"], shuffle_groups=cfg["shuffle_groups"])

    def run(fn, ts, g=None):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        out = fn(ts[0], ts[1], ts[2] if len(ts) == 3 else None, **kw)
        return out, ts

    with fastblocks.backend(backend):
        out, ts = run(grouped_conv2d, tensors)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, ts, g)
        with torch.no_grad():  # inference: every activation fused (triton: the GEMM kernel)
            inference = grouped_conv2d(*tensors[:2], b, **kw)
    eager, tse = run(reference_grouped_conv2d, tensors)
    grads_e = torch.autograd.grad(eager, tse, g)
    hi = hi_grads = None
    if needs_reference(dtype):
        hi, tsh = run(reference_grouped_conv2d, [t.double() for t in tensors])
        hi_grads = torch.autograd.grad(hi, tsh, g.double())
    if out.numel() and min(out.shape[1:]) > 1:
        assert out.stride() == eager.stride(), f"layout {out.stride()} vs eager {eager.stride()} {cfg}"
    assert_parity(out, eager, None if dtype == torch.float32 else hi, f"forward {cfg}")
    assert_parity(inference, eager.detach(), None if dtype == torch.float32 else hi,
                  f"inference forward {cfg}")
    assert inference.stride() == out.stride() or out.numel() == 0 or min(out.shape[1:]) == 1
    for name, got, exp, i in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_e, range(3)):
        assert_parity(got, exp, None if hi_grads is None else hi_grads[i], f"{name} {cfg}",
                      reduction=name != "grad_x")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch", "auto"))  # auto: CPU policy
def test_fuzz_fp32(backend):
    configs = {"cpu": FUZZ, "triton": FUZZ[::10]}.get(backend, FUZZ[:30])
    for cfg in configs:
        check_config(cfg, backend, torch.float32)


def test_fuzz_fp64():
    for cfg in FUZZ[::4]:
        check_config(cfg, "cpu", torch.float64)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_fuzz_low_precision(dtype):
    for cfg in FUZZ[1::10]:
        if cfg["n"] and cfg["h"] * cfg["w"] >= 4:
            check_config(cfg, "cpu", dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_triton_gemm_path(dtype):
    """Inference on the triton backend runs the 1x1 GEMM kernel with the shuffled store
    (kernels/grouped_conv.py): several pixel tiles, K and output tiles per group, ragged
    edges, both layouts, every activation."""
    torch.manual_seed(5)
    for (n, ci, co, g, sg, act, h, w) in ((1, 80, 72, 2, 3, "relu", 7, 10), (2, 24, 60, 3, 3, "relu6", 5, 5),
                                          (1, 66, 96, 3, 8, "silu", 3, 9), (1, 8, 8, 8, None, "hardswish", 9, 8)):
        for cl in (False, True):
            x = torch.randn(n, ci, h, w).to(dtype)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            wt, b = (torch.randn(co, ci // g, 1, 1) / (ci // g) ** 0.5).to(dtype), torch.randn(co).to(dtype)
            with fastblocks.backend("triton"), torch.no_grad():
                y = grouped_conv2d(x, wt, b, groups=g, activation=act, shuffle_groups=sg)
            eager = reference_grouped_conv2d(x, wt, b, groups=g, activation=act, shuffle_groups=sg)
            hi = reference_grouped_conv2d(x.double(), wt.double(), b.double(), groups=g,
                                          activation=act, shuffle_groups=sg)
            assert y.stride() == eager.stride()
            assert_parity(y, eager, hi, f"{(n, ci, co, g, sg, act, cl)} {dtype}")


def test_groups_one_folds_the_shuffle_into_the_weight():
    """An ungrouped conv followed by a shuffle is the conv with permuted output channels: no
    shuffle op runs (checked by selecting a backend that cannot run it)."""
    x, w, b = torch.randn(2, 5, 6, 6), torch.randn(12, 5, 1, 1), torch.randn(12)
    with fastblocks.backend("torch"):
        y = grouped_conv2d(x, w, b, groups=1, activation="relu", shuffle_groups=3)
    torch.testing.assert_close(y, reference_grouped_conv2d(x, w, b, groups=1, activation="relu",
                                                           shuffle_groups=3), rtol=0, atol=0)
    gm = torch.fx.experimental.proxy_tensor.make_fx(
        lambda x, w, b: grouped_conv2d(x, w, b, groups=1, shuffle_groups=3))(x, w, b)
    assert "channel_shuffle" not in str(gm.graph)
    gm = torch.fx.experimental.proxy_tensor.make_fx(
        lambda x, w, b: grouped_conv2d(x, w, b, groups=3, shuffle_groups=4))(
            torch.randn(2, 6, 6, 6), torch.randn(12, 2, 1, 1), b)
    assert "fastblocks.channel_shuffle" in str(gm.graph)


def test_unbatched_input():
    x, w, b = torch.randn(6, 5, 5), torch.randn(12, 2, 3, 3), torch.randn(12)
    y = grouped_conv2d(x, w, b, 1, 1, groups=3, activation="relu6", shuffle_groups=4)
    assert y.shape == (12, 5, 5)
    torch.testing.assert_close(y, F.channel_shuffle(F.relu6(F.conv2d(x, w, b, 1, 1, 1, 3))[None], 4)[0])


def test_gradcheck():
    for groups, sg, act, k in ((3, 4, "relu", 1), (2, 2, "silu", 3), (1, 3, "hardswish", 1)):
        x = torch.randn(1, 6, 3, 2, dtype=torch.float64, requires_grad=True)
        w = torch.randn(12, 6 // groups, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(12, dtype=torch.float64, requires_grad=True)
        with fastblocks.backend("cpu"):
            assert torch.autograd.gradcheck(
                lambda *t: grouped_conv2d(*t, padding=k // 2, groups=groups, activation=act,
                                          shuffle_groups=sg), (x, w, b), fast_mode=True)


def test_compile_fullgraph():
    def f(x, w, b):
        return grouped_conv2d(x, w, b, 1, 1, groups=4, activation="relu", shuffle_groups=4) * 2

    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, 2, 3, 3), torch.randn(16)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ins = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_ins = [t.clone().requires_grad_() for t in (x, w, b)]
    out = compiled(*ins)
    ref = reference_grouped_conv2d(*ref_ins, 1, 1, groups=4, activation="relu", shuffle_groups=4) * 2
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    for t, r in zip(ins, ref_ins):
        torch.testing.assert_close(t.grad, r.grad)


def test_autocast():
    x, w, b = torch.randn(1, 6, 4, 4), torch.randn(6, 2, 1, 1), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = grouped_conv2d(x, w, b, groups=3, activation="relu", shuffle_groups=2)
        r = reference_grouped_conv2d(x, w, b, groups=3, activation="relu", shuffle_groups=2)
    assert y.dtype == r.dtype == torch.bfloat16
    torch.testing.assert_close(y, r)


def test_bad_inputs():
    x, w = torch.randn(2, 6, 5, 5), torch.randn(6, 2, 1, 1)
    with pytest.raises(ValueError, match=r"groups=4 must divide the channels of x \(6\)"):
        grouped_conv2d(x, torch.randn(8, 1, 1, 1), groups=4)
    with pytest.raises(ValueError, match="groups must be positive, got 0"):
        grouped_conv2d(x, w, groups=0)
    with pytest.raises(ValueError, match="groups must be positive, got -3"):
        grouped_conv2d(x, w, groups=-3)
    with pytest.raises(ValueError, match="groups=3 must divide the channels of weight's output channels"):
        grouped_conv2d(x, torch.randn(4, 2, 1, 1), groups=3)
    with pytest.raises(ValueError, match=r"weight must have shape \(C_out, C_in / groups = 2"):
        grouped_conv2d(x, torch.randn(6, 3, 1, 1), groups=3)
    with pytest.raises(ValueError, match=r"shuffle_groups=4 must divide the channels of the output"):
        grouped_conv2d(x, w, groups=3, shuffle_groups=4)
    with pytest.raises(ValueError, match="shuffle_groups must be positive"):
        grouped_conv2d(x, w, groups=3, shuffle_groups=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        grouped_conv2d(x, w, groups=3, activation="gelu")
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        grouped_conv2d(x, w, torch.randn(5), groups=3)
    with pytest.raises(ValueError, match="stride must be positive"):
        grouped_conv2d(x, w, groups=3, stride=0)
    with pytest.raises(TypeError, match="weight has dtype torch.float64"):
        grouped_conv2d(x, w.double(), groups=3)
    with pytest.raises(ValueError, match="shuffle_groups=5 must divide"):
        fbnn.GroupedConv2d(6, 6, 1, groups=3, shuffle_groups=5)


# ---- module ---------------------------------------------------------------------------------

def _eager_block(conv, bn, act, sg):
    return nn.Sequential(conv, bn, act, nn.ChannelShuffle(sg))


def test_module_drop_in():
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 24, 1, groups=3, bias=False)
    m = fbnn.GroupedConv2d(12, 24, 1, groups=3, bias=False, activation="relu", shuffle_groups=3)
    assert set(m.state_dict()) == set(conv.state_dict()) == {"weight"}
    m.load_state_dict(conv.state_dict())
    conv.load_state_dict(m.state_dict())
    assert isinstance(m, nn.Conv2d) and "shuffle_groups=3" in repr(m)
    x = torch.randn(2, 12, 7, 7).contiguous(memory_format=torch.channels_last)
    for mode in (True, False):
        m.train(mode)
        torch.testing.assert_close(m(x), F.channel_shuffle(F.relu(conv(x)), 3))
    shared = fbnn.GroupedConv2d.from_conv(conv, activation="relu6", shuffle_groups=8)
    assert shared.weight is conv.weight and shared.bias is None
    torch.testing.assert_close(shared(x), F.channel_shuffle(F.relu6(conv(x)), 8))
    reflect = nn.Conv2d(6, 6, 3, padding=1, groups=2, padding_mode="reflect")
    torch.testing.assert_close(fbnn.GroupedConv2d.from_conv(reflect)(x[:, :6]), reflect(x[:, :6]))


def test_module_from_conv_with_bn():
    """ShuffleNet v1's 1x1 GConv -> BN -> ReLU -> shuffle, eval mode, as one module."""
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(24, 48, 1, groups=3, bias=False), nn.BatchNorm2d(48)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    block = _eager_block(conv, bn, nn.ReLU(), 3).eval()
    fused = fbnn.GroupedConv2d.from_conv(conv, bn.eval(), activation="relu", shuffle_groups=3)
    for cl in (False, True):
        x = torch.randn(2, 24, 9, 9)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        with torch.no_grad():
            torch.testing.assert_close(fused(x), block(x), rtol=1e-5, atol=1e-5)  # folding rounds once
    with pytest.raises(TypeError, match="expects an nn.Conv2d"):
        fbnn.GroupedConv2d.from_conv(nn.Linear(2, 2))


# ---- GPU --------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_cuda_parity(backend):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for cfg in FUZZ[::5]:
            if dtype == torch.float32 or (cfg["n"] and cfg["h"] * cfg["w"] >= 4):
                check_config(cfg, backend, dtype, "cuda")
    # ShuffleNet v1 g=8 stage 3 and ResNeXt-50 layer2 grouped 3x3, batch 32
    big = [dict(n=32, c_in=480, c_out=480, h=14, w=14, k=(1, 1), stride=1, padding=0, dilation=1,
                groups=8, bias=True, activation="relu", shuffle_groups=8, channels_last=True),
           dict(n=32, c_in=256, c_out=256, h=28, w=28, k=(3, 3), stride=1, padding=1, dilation=1,
                groups=32, bias=True, activation="relu", shuffle_groups=None, channels_last=True)]
    for cfg in big:
        check_config(cfg, backend, torch.bfloat16, "cuda")
