"""Channel shuffle and concat + shuffle: seeded fuzz against eager F.channel_shuffle (and
torch.cat) per backend, forward and gradients; the fused bias + activation epilogue of the
registered op; gradcheck; opcheck; torch.compile; autocast; bad inputs; the ChannelShuffle
module."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks import nn as fbnn
from fastblocks.ops import channel_shuffle, concat_shuffle
from fastblocks.ops._activation_codes import ACTIVATION_CODES
from fastblocks.ops.shuffle import _reference_forward, reference_concat_shuffle
from fastblocks.testing import needs_reference
from tolerances import KERNEL_BACKENDS_CPU, KERNEL_BACKENDS_CUDA, assert_parity

BACKENDS = KERNEL_BACKENDS_CPU + ("torch",)


def _layout(t, kind):
    """t in NCHW, channels_last, or a non-dense view (every other column of a wider tensor)."""
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def make_configs(count, seed):
    """Random shuffles: groups 1-8 (ShuffleNet's 2, 3, 4, 8 among them), odd channel counts,
    sizes 1/2/3/7 (113 now and then), batch 0, three layouts; for concat, a split point and
    whether a is a channel slice of a wider tensor (x.chunk(2, dim=1))."""
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        g = rng.choice([1, 2, 2, 3, 4, 8])
        c = g * rng.choice([1, 2, 3, 5])
        h, w = rng.choice([1, 2, 3, 7]), rng.choice([1, 2, 5, 7])
        if rng.random() < 0.03:
            h, w = 1, 113
        configs.append(dict(n=rng.choice([0, 1, 1, 2]), c=c, g=g, h=h, w=w,
                            layout=rng.choice(["nchw", "channels_last", "channels_last", "strided"]),
                            split=rng.randint(0, c), a_slice=rng.random() < 0.5))
    return configs


FUZZ = make_configs(240, seed=16)


def _grads(fn, tensors, g):
    ts = [t.detach().requires_grad_() for t in tensors]
    out = fn(*ts)
    return out, torch.autograd.grad(out, ts, g)


def check_shuffle(cfg, backend, dtype, device="cpu"):
    """channel_shuffle vs F.channel_shuffle: a permutation, so forward and gradient are equal
    bit for bit, and the output keeps eager's memory format."""
    x = _layout(torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"], device=device).to(dtype), cfg["layout"])
    g = torch.randn(x.shape, device=device).to(dtype)
    with fastblocks.backend(backend):
        out, (gx,) = _grads(lambda t: channel_shuffle(t, cfg["g"]), [x], g)
    ref, (gr,) = _grads(lambda t: F.channel_shuffle(t, cfg["g"]), [x], g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, msg=f"forward {cfg}")
    torch.testing.assert_close(gx, gr, rtol=0, atol=0, msg=f"grad {cfg}")
    if out.numel() and min(out.shape[1:]) > 1:
        assert out.stride() == ref.stride(), f"layout {out.stride()} vs eager {ref.stride()} {cfg}"


def check_concat(cfg, backend, dtype, device="cpu"):
    """concat_shuffle vs torch.cat + F.channel_shuffle, bit for bit, gradients of a and b."""
    n, c, h, w, split = cfg["n"], cfg["c"], cfg["h"], cfg["w"], cfg["split"]
    if cfg["a_slice"]:  # a = the first half of a wider tensor, read in place
        a = _layout(torch.randn(n, 2 * split, h, w, device=device).to(dtype), cfg["layout"])[:, :split]
    else:
        a = _layout(torch.randn(n, split, h, w, device=device).to(dtype), cfg["layout"])
    b = _layout(torch.randn(n, c - split, h, w, device=device).to(dtype), cfg["layout"])
    g = torch.randn(n, c, h, w, device=device).to(dtype)
    with fastblocks.backend(backend):
        out, grads = _grads(lambda p, q: concat_shuffle(p, q, cfg["g"]), [a, b], g)
    ref, grads_r = _grads(lambda p, q: reference_concat_shuffle(p, q, cfg["g"]), [a, b], g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, msg=f"forward {cfg}")
    for name, got, exp in zip("ab", grads, grads_r):
        torch.testing.assert_close(got, exp, rtol=0, atol=0, msg=f"grad {name} {cfg}")
    if cfg["layout"] == "channels_last" and out.numel() and min(out.shape[1:]) > 1 and min(a.shape[1:]) > 1 \
            and min(b.shape[1:]) > 1:
        assert out.is_contiguous(memory_format=torch.channels_last), f"layout {cfg}"


def _subset(backend):
    # the interpreter runs ~5 ms per launch: every 4th configuration (60) there
    return {"cpu": FUZZ, "triton": FUZZ[::4]}.get(backend, FUZZ[:40])


@pytest.mark.parametrize("backend", BACKENDS + ("auto",))  # auto: the CPU policy's ATen calls
def test_fuzz_channel_shuffle(backend):
    for cfg in _subset(backend):
        check_shuffle(cfg, backend, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS + ("auto",))
def test_fuzz_concat_shuffle(backend):
    for cfg in _subset(backend):
        check_concat(cfg, backend, torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_fuzz_other_dtypes(backend):
    # the interpreter has no bf16 arithmetic; a permutation has none, but loads still convert
    dtypes = (torch.float64, torch.float16) + ((torch.bfloat16,) if backend == "cpu" else ())
    for dtype in dtypes:
        for cfg in FUZZ[::6] if backend == "cpu" else FUZZ[::16]:
            check_shuffle(cfg, backend, dtype)
            check_concat(cfg, backend, dtype)


def _aten_ran(fn):
    """fn()'s result and whether ATen's channel_shuffle ran in it (the profiler sees ATen ops
    called from C++, where fastblocks._C.shuffle_eager makes its choice)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, any(e.name in ("aten::channel_shuffle", "aten::native_channel_shuffle")
                    for e in prof.events())


def test_auto_cpu_policy():
    """Under `auto`, plain eager CPU calls run ATen's channel_shuffle where it measured faster
    (ops/shuffle.py, CPU policy) and ours elsewhere; both bit-exact with eager's layout, forward
    and gradient. backend("cpu") always runs ours."""
    cl = torch.channels_last
    # (shape, groups, layout, training, ATen's expected)
    cases = [((1, 12, 5, 5), 3, "nchw", False, False),          # NCHW inference: ours
             ((2, 12, 3, 3), 4, "nchw", True, False),           # small NCHW training: ours
             ((1, 64, 64, 64), 4, "nchw", True, True),          # 2^18 elements training: ATen
             ((2, 12, 3, 3), 2, "channels_last", False, True),  # g = 2: fbgemm's fast transpose
             ((2, 64, 3, 3), 8, "channels_last", True, True),   # 8 x 8 blocks
             ((2, 12, 3, 3), 3, "channels_last", False, False),  # 3 x 4: ours
             ((2, 24, 3, 3), 8, "channels_last", True, False),   # 8 x 3: ours
             ((2, 12, 3, 6), 3, "strided", False, True)]         # not read in place: Python rule
    for shape, g, layout, training, want in cases:
        for backend in ("auto", "cpu"):
            x = _layout(torch.randn(shape), layout).requires_grad_(training)
            gy = torch.randn(shape)

            def run():
                with fastblocks.backend(backend):
                    y = channel_shuffle(x, g)
                    return (y, torch.autograd.grad(y, x, gy)[0]) if training else (y, None)
            (out, gx), aten_ran = _aten_ran(run)
            assert aten_ran == (want and backend == "auto"), (shape, g, layout, training, backend)
            ref = F.channel_shuffle(x, g)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
            assert out.stride() == ref.stride() and out.is_contiguous(memory_format=cl) == (layout == "channels_last")
            if training:
                torch.testing.assert_close(gx, F.channel_shuffle(gy, shape[1] // g), rtol=0, atol=0)


def test_auto_cpu_policy_concat(monkeypatch):
    """concat_shuffle in plain eager CPU code runs ours (fastblocks._C.shuffle_eager) under
    `auto`, training included; where that entry declines (here: b is not read in place),
    training below 2^18 elements runs torch.cat + ATen's shuffle; bit-exact."""
    ran = []
    aten = torch.channel_shuffle
    monkeypatch.setattr(torch, "channel_shuffle", lambda x, g: ran.append(g) or aten(x, g))
    for n, c, h, w, g, layout, training, want in (
            (2, 12, 3, 3, 2, "nchw", True, False), (2, 12, 3, 3, 2, "channels_last", True, False),
            (2, 12, 3, 3, 2, "nchw", False, False), (2, 12, 3, 3, 2, "strided", True, True),
            (1, 16, 128, 128, 2, "strided", True, False)):
        cfg = dict(n=n, c=c, g=g, h=h, w=w, layout=layout, split=c // 2, a_slice=True)
        for backend in ("auto", "cpu"):
            ran.clear()
            if training:
                check_concat(cfg, backend, torch.float32)
            else:
                a, b = (_layout(torch.randn(n, c // 2, h, w), layout) for _ in range(2))
                with fastblocks.backend(backend):
                    out = concat_shuffle(a, b, g)
                torch.testing.assert_close(out, reference_concat_shuffle(a, b, g), rtol=0, atol=0)
            assert bool(ran) == (want and backend == "auto"), (n, c, g, layout, training, backend)


def test_plain_eager_cpu_double_backward():
    """Plain eager CPU training runs a C++ autograd node (fastblocks._C.shuffle_eager) whose
    backward, under create_graph, goes through ATen's differentiable ops: second derivatives
    of the shuffle, concat + shuffle and the fused relu epilogue are exact (the Python node
    used before raised)."""
    x = torch.randn(1, 6, 2, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    b = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    x, b = x.requires_grad_(), b.requires_grad_()
    w = torch.randn(9, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    from fastblocks.ops import grouped_conv2d
    for backend in ("auto", "cpu"):  # auto: ours on these shapes too
        with fastblocks.backend(backend):
            assert torch.autograd.gradgradcheck(lambda t: channel_shuffle(t, 3), (x,), fast_mode=True)
            assert torch.autograd.gradgradcheck(lambda p, q: concat_shuffle(p, q, 5),
                                                (x.detach().contiguous().requires_grad_(), b), fast_mode=True)
            assert torch.autograd.gradgradcheck(
                lambda t, k: grouped_conv2d(t, k, groups=3, activation="relu", shuffle_groups=3),
                (x[:, :, :1].detach().requires_grad_(), w), fast_mode=True)


def test_other_ranks():
    """(N, C, L) and (N, C, D, H, W) shuffle dim 1, as torch.nn.ChannelShuffle."""
    for shape in ((2, 6, 5), (1, 6, 2, 3, 4)):
        x = torch.randn(shape)
        torch.testing.assert_close(channel_shuffle(x, 3), F.channel_shuffle(x, 3), rtol=0, atol=0)


# ---- the fused epilogue: act(cat(a, b) + bias), shuffled ------------------------------------

EPILOGUE = [(n, ca, cb, g, h, w, act, bias, cl)
            for n, ca, cb, g, h, w in ((2, 6, 0, 3, 3, 4), (1, 5, 7, 4, 2, 5), (2, 8, 8, 2, 1, 1),
                                       (0, 4, 2, 3, 3, 3), (1, 24, 0, 8, 3, 2))
            for act in ACTIVATION_CODES for bias in (False, True) for cl in (False, True)][::2]


def _epilogue_inputs(cfg, dtype, device="cpu"):
    n, ca, cb, g, h, w, act, bias, cl = cfg
    fmt = torch.channels_last if cl else torch.contiguous_format
    a = torch.randn(n, ca, h, w, device=device).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(n, cb, h, w, device=device).to(dtype).contiguous(memory_format=fmt) if cb else None
    bb = torch.randn(ca + cb, device=device).to(dtype) if bias else None
    return a, b, bb, g, ACTIVATION_CODES[act]


def check_epilogue(cfg, backend, dtype, device="cpu"):
    """The registered op (as grouped_conv2d uses it) vs the eager composition, forward and the
    gradients of a, b and bias, training through the op's autograd with every activation."""
    a, b, bias, g, code = _epilogue_inputs(cfg, dtype, device)
    tensors = [t for t in (a, b, bias) if t is not None]

    def unpack(ts):
        it = iter(ts)
        return next(it), (next(it) if b is not None else None), (next(it) if bias is not None else None)

    def ours(*ts):
        aa, bb, cc = unpack(ts)
        return torch.ops.fastblocks.channel_shuffle(aa, bb, cc, g, code)

    def eager(*ts):
        aa, bb, cc = unpack(ts)
        return _reference_forward(aa, bb, cc, g, code, cfg[-1])

    grad = torch.randn(a.shape[0], a.shape[1] + (0 if b is None else b.shape[1]), *a.shape[2:],
                       device=device).to(dtype)
    with fastblocks.backend(backend):
        out, grads = _grads(ours, tensors, grad)
        with torch.no_grad():  # inference: every activation fused
            torch.testing.assert_close(ours(*tensors), out, rtol=0, atol=0)
    ref, grads_r = _grads(eager, tensors, grad)
    hi = hi_grads = None
    if needs_reference(dtype):
        hi, hi_grads = _grads(eager, [t.double() for t in tensors], grad.double())
    assert_parity(out, ref, None if dtype == torch.float32 else hi, f"forward {cfg}")
    for i, (got, exp) in enumerate(zip(grads, grads_r)):
        reduction = bias is not None and i == len(grads) - 1
        assert_parity(got, exp, None if hi_grads is None else hi_grads[i], f"grad {i} {cfg}",
                      reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epilogue(backend):
    for cfg in EPILOGUE:
        check_epilogue(cfg, backend, torch.float32)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_epilogue_low_precision(backend):
    dtypes = (torch.float16,) + ((torch.bfloat16,) if backend == "cpu" else ())
    for dtype in dtypes:
        for cfg in EPILOGUE[::3]:
            if cfg[0]:
                check_epilogue(cfg, backend, dtype)


def test_epilogue_nonfinite():
    """NaN and infinities go through the epilogue as eager's add + activation gives them."""
    a = torch.randn(2, 16, 3, 3)
    a[0, 0, 0, 0], a[0, 3, 1, 1], a[1, 7, 2, 2] = float("nan"), float("inf"), -float("inf")
    bias = torch.randn(16)
    for cl in (False, True):
        x = a.contiguous(memory_format=torch.channels_last) if cl else a
        for act, code in ACTIVATION_CODES.items():
            with fastblocks.backend("cpu"), torch.no_grad():
                y = torch.ops.fastblocks.channel_shuffle(x, None, bias, 4, code)
            torch.testing.assert_close(y, _reference_forward(x, None, bias, 4, code, cl),
                                       equal_nan=True, msg=f"{act} cl={cl}")


# ---- registration: gradcheck, opcheck, compile, autocast -------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_gradcheck(backend):
    # the interpreter pays ~5 ms per launch and gradcheck launches once per input element
    hw = (3, 4) if backend == "cpu" else (1, 2)
    x = torch.randn(2, 6, *hw, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, *hw, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(10, dtype=torch.float64, requires_grad=True)
    with fastblocks.backend(backend):
        assert torch.autograd.gradcheck(lambda t: channel_shuffle(t, 3), (x,))
        assert torch.autograd.gradcheck(lambda p, q: concat_shuffle(p, q, 5), (x, b))
        for code in (1, 3, 5) if backend == "cpu" else (1, 5):  # relu fused; others recomputed
            assert torch.autograd.gradcheck(
                lambda p, q, r: torch.ops.fastblocks.channel_shuffle(p, q, r, 2, code), (x, b, bias))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
def test_opcheck(backend):
    cases = [(torch.randn(2, 6, 3, 4), None, None, 3, 0),
             (torch.randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last),
              torch.randn(2, 2, 3, 4).contiguous(memory_format=torch.channels_last), torch.randn(8), 4, 1),
             (torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(8), 2, 2),
             (torch.randn(1, 4, 2, 2), None, torch.randn(4), 2, 5)]
    with fastblocks.backend(backend):
        for a, b, bias, g, code in cases:
            for grad in (False, True):
                args = [t.clone().requires_grad_(grad) if isinstance(t, torch.Tensor) else t
                        for t in (a, b, bias, g, code)]
                torch.library.opcheck(torch.ops.fastblocks.channel_shuffle.default, args)
        grad = torch.randn(2, 8, 3, 4)
        y = torch.randn(2, 8, 3, 4)
        torch.library.opcheck(torch.ops.fastblocks.channel_shuffle_backward.default,
                              (grad, y, 6, 4, 1, False))
        torch.library.opcheck(torch.ops.fastblocks.channel_shuffle_backward.default,
                              (grad.contiguous(memory_format=torch.channels_last), None, 8, 2, 0, True))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
def test_compile_fullgraph(backend):
    def f(x, a, b):
        return channel_shuffle(x, 4).sum(1) + concat_shuffle(a, b, 2).mean(1)

    x = torch.randn(2, 8, 3, 5).contiguous(memory_format=torch.channels_last)
    a, b = torch.randn(2, 3, 3, 5), torch.randn(2, 5, 3, 5)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with fastblocks.backend(backend):
        ins = [t.clone().requires_grad_() for t in (x, a, b)]
        out = compiled(*ins)
        out.sum().backward()
    ref_ins = [t.clone().requires_grad_() for t in (x, a, b)]
    ref = F.channel_shuffle(ref_ins[0], 4).sum(1) + reference_concat_shuffle(ref_ins[1], ref_ins[2], 2).mean(1)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for t, r in zip(ins, ref_ins):
        torch.testing.assert_close(t.grad, r.grad)


def test_autocast_concat_promotes_like_cat_shuffle_keeps_dtype():
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = concat_shuffle(a, b, 2)
        ref = reference_concat_shuffle(a, b, 2)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # channel_shuffle keeps its dtype, as ATen's
        for x in (a, b):
            for backend in ("cpu", "auto"):
                with fastblocks.backend(backend):
                    out = channel_shuffle(x, 2)
                assert out.dtype == x.dtype
                torch.testing.assert_close(out, F.channel_shuffle(x, 2), rtol=0, atol=0)


# ---- bad inputs -----------------------------------------------------------------------------

def test_bad_inputs():
    x = torch.randn(2, 6, 3, 3)
    with pytest.raises(ValueError, match=r"groups=4 must divide the channels of x \(6\)"):
        channel_shuffle(x, 4)
    with pytest.raises(ValueError, match="groups must be positive, got 0"):
        channel_shuffle(x, 0)
    with pytest.raises(ValueError, match="groups must be positive, got -2"):
        channel_shuffle(x, -2)
    with pytest.raises(TypeError, match="groups must be an int"):
        channel_shuffle(x, 2.0)
    with pytest.raises(ValueError, match="x must have at least 3 dims"):
        channel_shuffle(torch.randn(4, 6), 2)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        channel_shuffle(torch.ones(1, 4, 2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"groups=4 must divide the channels of cat\(a, b\) \(10\)"):
        concat_shuffle(x, torch.randn(2, 4, 3, 3), 4)
    with pytest.raises(ValueError, match="b has shape .* they must agree"):
        concat_shuffle(x, torch.randn(2, 4, 3, 2))
    with pytest.raises(TypeError, match="b has dtype torch.float64 but a has torch.float32"):
        concat_shuffle(x, torch.randn(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="a must be 4-d"):
        concat_shuffle(torch.randn(6, 3, 3), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="groups must be positive"):
        fbnn.ChannelShuffle(0)


# ---- module ---------------------------------------------------------------------------------

def test_module():
    m = fbnn.ChannelShuffle(3)
    assert isinstance(m, nn.ChannelShuffle) and repr(m) == repr(nn.ChannelShuffle(3))
    assert fbnn.ChannelShuffle.from_module(nn.ChannelShuffle(3)).groups == 3
    assert m.state_dict() == {}
    x = torch.randn(2, 9, 4, 4).contiguous(memory_format=torch.channels_last)
    for mode in (True, False):
        m.train(mode)
        torch.testing.assert_close(m(x), nn.ChannelShuffle(3)(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="expects nn.ChannelShuffle"):
        fbnn.ChannelShuffle.from_module(nn.ReLU())


# ---- GPU --------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_cuda_parity(backend):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for cfg in FUZZ[::4]:
            check_shuffle(cfg, backend, dtype, "cuda")
            check_concat(cfg, backend, dtype, "cuda")
        for cfg in EPILOGUE:
            if dtype == torch.float32 or cfg[0]:
                check_epilogue(cfg, backend, dtype, "cuda")
    # sizes that need many programs/blocks: ShuffleNet v2 stage 2 at batch 32, both layouts
    for layout in ("nchw", "channels_last"):
        cfg = dict(n=32, c=116, g=2, h=28, w=28, layout=layout, split=58, a_slice=True)
        check_shuffle(cfg, backend, torch.bfloat16, "cuda")
        check_concat(cfg, backend, torch.bfloat16, "cuda")
