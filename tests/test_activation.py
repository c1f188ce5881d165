"""Activation family: parity with eager per backend, dtype and layout; gradients; gradcheck;
opcheck; torch.compile; bad inputs; modules."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks
from fastblocks import ops
from tolerances import KERNEL_BACKENDS_CPU, KERNEL_BACKENDS_CUDA, assert_parity

NAMES = ("hardswish", "hardsigmoid", "relu6", "silu")
EAGER = {"hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "relu6": F.relu6, "silu": F.silu}
MODULES = {"hardswish": (fastblocks.nn.Hardswish, nn.Hardswish),
           "hardsigmoid": (fastblocks.nn.Hardsigmoid, nn.Hardsigmoid),
           "relu6": (fastblocks.nn.ReLU6, nn.ReLU6), "silu": (fastblocks.nn.SiLU, nn.SiLU)}


def _input(kind: str, dtype, device="cpu"):
    """Inputs spanning the kinks: values in [-8, 8] plus the exact kink points."""
    base = torch.randn(2, 6, 7, 5, device=device) * 4
    base.view(-1)[:6] = torch.tensor([-3.0, 3.0, 0.0, 6.0, -6.0, 2.5])
    base = base.to(dtype)
    if kind == "contiguous":
        return base
    if kind == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # a non-dense view: every other channel
        return base[:, ::2]
    if kind == "transposed":  # dense but permuted
        return base.transpose(1, 3)
    if kind == "empty":
        return base[:0]
    if kind == "odd_1d":
        return (torch.randn(113, device=device) * 4).to(dtype)
    if kind == "scalar":
        return torch.tensor(-2.0, device=device, dtype=dtype)
    raise ValueError(kind)


LAYOUTS = ("contiguous", "channels_last", "strided", "transposed", "empty", "odd_1d", "scalar")


def _check(name, backend, x):
    """Forward, strides and gradient of fastblocks vs eager on x (dtype of x)."""
    xe = x.detach().clone().requires_grad_()
    xf = x.detach().clone().requires_grad_()
    eager = EAGER[name](xe)
    with fastblocks.backend(backend):
        out = getattr(ops, name)(xf)
    g = torch.randn_like(eager)
    (ge,) = torch.autograd.grad(eager, xe, g)
    with fastblocks.backend(backend):
        (gf,) = torch.autograd.grad(out, xf, g)
    assert out.stride() == eager.stride(), f"output strides {out.stride()} != eager {eager.stride()}"
    hi = x.detach().double().requires_grad_()
    ref = EAGER[name](hi)
    (gref,) = torch.autograd.grad(ref, hi, g.double())
    assert_parity(out, eager, ref, "forward")
    assert_parity(gf, ge, gref, "grad_input")


def _cpu_dtypes(backend):
    # The Triton interpreter computes with numpy, which has no bfloat16.
    return (torch.float32, torch.float64, torch.float16) if backend == "triton" else (
        torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
@pytest.mark.parametrize("name", NAMES)
def test_parity_cpu(name, backend):
    for dtype in _cpu_dtypes(backend):
        for layout in LAYOUTS:
            _check(name, backend, _input(layout, dtype))


# NaN, infinities, signed zeros, the kinks and values between them: three times over, so the
# vector loops see them as well as the scalar tails.
SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -3.0, 3.0, 6.0, -6.0, 1.5, -1.5] * 3


# Eager's own gradient at a NaN input depends on where the NaN sits for these two (torch 2.13,
# CPU: g from the scalar tail loop, 0 (relu6) or NaN (hardswish) from the vector loop), so
# there is no one answer to match there. Ours: g for hardswish, 0 for relu6, at every position.
EAGER_GRAD_AT_NAN_VARIES = ("relu6", "hardswish")


def assert_same_specials(ours, eager, what):
    """Values as eager (NaN where eager has NaN), and zeros of the same sign."""
    torch.testing.assert_close(ours, eager, equal_nan=True, msg=what)
    zero = eager == 0
    assert torch.equal(torch.signbit(ours[zero]), torch.signbit(eager[zero])), f"{what}: sign of zero"


def check_specials(name, backend, device="cpu", dtypes=None):
    for dtype in dtypes or _cpu_dtypes(backend):
        x = torch.tensor(SPECIAL, dtype=dtype, device=device)
        g = torch.linspace(-2, 2, x.numel(), dtype=dtype, device=device)
        xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        eager = EAGER[name](xe)
        (ge,) = torch.autograd.grad(eager, xe, g)
        with fastblocks.backend(backend):
            out = getattr(ops, name)(xf)
            (gf,) = torch.autograd.grad(out, xf, g)
        assert_same_specials(out, eager, f"{name} {backend} {dtype} forward")
        if name in EAGER_GRAD_AT_NAN_VARIES:
            gf, ge = gf[~x.isnan()], ge[~x.isnan()]
        assert_same_specials(gf, ge, f"{name} {backend} {dtype} grad_input")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU + ("torch",))
@pytest.mark.parametrize("name", NAMES)
def test_special_values(name, backend):
    """relu6(NaN) and hardsigmoid(NaN) are NaN in eager: a kernel that clamps NaN to 0 would
    hide a diverging run."""
    check_specials(name, backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CPU)
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name, backend):
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 4).requires_grad_()
    # keep away from the kinks, where finite differences are meaningless
    with torch.no_grad():
        for k in (-3.0, 0.0, 3.0, 6.0):
            x[(x - k).abs() < 1e-3] += 0.01
    with fastblocks.backend(backend):
        assert torch.autograd.gradcheck(getattr(ops, name), (x,))


@pytest.mark.parametrize("name", NAMES)
def test_opcheck(name):
    code = fastblocks.ops._activation_codes.ACTIVATION_CODES[name]
    for x in (torch.randn(2, 3, 4, 5, requires_grad=True),
              torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()):
        torch.library.opcheck(torch.ops.fastblocks.activation.default, (x, code))
        torch.library.opcheck(torch.ops.fastblocks.activation_backward.default,
                              (torch.randn_like(x), x.detach(), code))


@pytest.mark.parametrize("backend", ("cpu", "triton"))
def test_compile_fullgraph(backend):
    def f(x):
        return ops.silu(ops.hardswish(x) * 2) + ops.relu6(x) - ops.hardsigmoid(x)

    def ref(x):
        return F.silu(F.hardswish(x) * 2) + F.relu6(x) - F.hardsigmoid(x)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with fastblocks.backend(backend):
        out = compiled(x)
        out.sum().backward()
    xr = x.detach().clone().requires_grad_()
    expected = ref(xr)
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.slow
def test_compile_inductor():
    compiled = torch.compile(lambda x: ops.hardswish(x) + 1, fullgraph=True)
    x = torch.randn(4, 8, 16, 16)
    torch.testing.assert_close(compiled(x), F.hardswish(x) + 1)


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"x must have a floating dtype.*torch.int64"):
        ops.hardswish(torch.arange(4))
    with pytest.raises(TypeError, match=r"x must have a floating dtype.*complex64"):
        ops.silu(torch.randn(4, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        ops.relu6([1.0, 2.0])
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'gelu'"):
        ops.apply_activation(torch.randn(3), "gelu")


def test_mismatched_devices():
    # The backward receives the gradient and the saved input; they must share a device.
    with pytest.raises(ValueError, match=r"grad is on meta but x is on cpu"):
        torch.ops.fastblocks.activation_backward(torch.randn(3, device="meta"), torch.randn(3), 3)
    with pytest.raises(TypeError, match=r"grad has dtype torch.float64 but x has torch.float32"):
        torch.ops.fastblocks.activation_backward(torch.randn(3, dtype=torch.float64), torch.randn(3), 3)


@pytest.mark.parametrize("name", NAMES)
def test_modules_drop_in(name):
    ours_cls, torch_cls = MODULES[name]
    for inplace in (False, True):
        theirs = torch_cls(inplace=inplace)
        ours = ours_cls.from_module(theirs)
        assert ours.inplace == inplace and repr(ours).endswith(repr(theirs)[len(type(theirs).__name__):])
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        ours.load_state_dict(theirs.state_dict())
        for train in (True, False):
            ours.train(train)
            theirs.train(train)
            x = torch.randn(2, 3, 9, 9)
            torch.testing.assert_close(ours(x), theirs(x.clone()))
    with pytest.raises(TypeError, match="expects"):
        ours_cls.from_module(nn.ReLU())


# ---- GPU ------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_parity_cuda(name, backend, dtype):
    for layout in LAYOUTS:
        _check(name, backend, _input(layout, dtype, "cuda"))
    # Several tiles per program and an unaligned tail: 2^20 + 3 elements, and an offset view
    # whose data pointer is not 16-byte aligned (the CUDA kernel's scalar path).
    big = (torch.randn(2**20 + 4, device="cuda") * 4).to(dtype)
    _check(name, backend, big[:-1])
    _check(name, backend, big[1:])
    _check(name, backend, (torch.randn(32, 72, 56, 56, device="cuda") * 4).to(dtype)
           .contiguous(memory_format=torch.channels_last))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
@pytest.mark.parametrize("name", NAMES)
def test_special_values_cuda(name, backend):
    check_specials(name, backend, "cuda", (torch.float32, torch.float16, torch.bfloat16))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", KERNEL_BACKENDS_CUDA)
def test_gradcheck_cuda(backend):
    x = (torch.randn(3, 4, 5, dtype=torch.float64, device="cuda") * 4).requires_grad_()
    with fastblocks.backend(backend):
        for name in NAMES:
            assert torch.autograd.gradcheck(getattr(ops, name), (x,))
