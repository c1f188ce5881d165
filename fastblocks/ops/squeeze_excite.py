"""Fused squeeze-and-excitation: global average pool -> FC -> activation -> FC -> gate -> scale.

``squeeze_excite(x, w1, b1, w2, b2, activation, gate)`` computes what torchvision's
``SqueezeExcitation`` computes,
``x * gate(fc2(act(fc1(adaptive_avg_pool2d(x, 1)))))``, in two passes over x: one sums each
(n, c) plane (in float32, float64 for float64 inputs, whatever x's dtype: an fp16 plane whose
sum passes 65504 still has a finite mean), then the tiny MLP runs on the (N, C) means, then one
pass writes ``y = x * s``. The backward also makes two passes: one sums ``grad * x`` per
(n, c), the MLP backward gives the four parameter gradients and the gradient of the means, one
pass writes ``grad_x = grad * s + grad_mean / (H*W)``.

Registered ops: ``fastblocks::squeeze_excite`` returns ``(y, means)``, the float32/float64
(N, C) means being what its backward ``fastblocks::squeeze_excite_backward`` needs instead of a
third pass over x (the MLP itself is recomputed from them: 2 tiny GEMMs).

Reference: Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018); the hard-sigmoid gate and
the placement in inverted residuals from Howard et al., "Searching for MobileNetV3" (2019).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import capture, restored
from ..kernels._se_mlp import GATE_CODES, acc_dtype, mlp_backward, mlp_forward
from ._activation_codes import activation_code
from ._dispatch import run_kernel
from ._fastpath import direct_autograd, needs_grad, plain_eager
from ._layout import empty, is_channels_last, memory_format
from ._validate import check_ndim, check_same, check_tensor
from .activation import reference_forward as _act_reference

__all__ = ["squeeze_excite", "reference_squeeze_excite", "GATES"]

GATES = tuple(GATE_CODES)


# ---- eager reference ------------------------------------------------------------------------

def reference_squeeze_excite(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                             b2: Tensor | None, activation: str | None = "relu",
                             gate: str = "sigmoid") -> Tensor:
    """The eager composition of torchvision's SqueezeExcitation (what the tests compare with):
    adaptive_avg_pool2d, 1x1 conv, activation, 1x1 conv, gate, multiply. Weights as (out, in)
    or (out, in, 1, 1)."""
    c_r, c = w1.shape[0], w2.shape[0]
    s = F.adaptive_avg_pool2d(x, 1)
    s = F.conv2d(s, w1.reshape(c_r, -1, 1, 1), b1)
    code = activation_code(activation)
    s = _act_reference(s, code) if code else s
    s = F.conv2d(s, w2.reshape(c, c_r, 1, 1), b2)
    s = torch.sigmoid(s) if gate == "sigmoid" else F.hardsigmoid(s)
    return x * s


# The `torch` backend's kernels: the kernels' arguments and results (fastblocks.ops._dispatch).

def _reference_forward(x, w1, b1, w2, b2, act, gate, channels_last):
    acc = acc_dtype(x.dtype)
    pooled = x.sum(dim=(2, 3), dtype=acc) / (x.shape[2] * x.shape[3])
    s = mlp_forward(pooled, w1, b1, w2, b2, act, gate).s
    y = (x.to(acc) * s[:, :, None, None]).to(x.dtype)
    return y.contiguous(memory_format=memory_format(channels_last)), pooled


def _reference_backward(grad, x, pooled, w1, b1, w2, b2, act, gate, channels_last):
    acc = pooled.dtype
    gs = (grad.to(acc) * x.to(acc)).sum(dim=(2, 3))
    m = mlp_forward(pooled, w1, b1, w2, b2, act, gate)
    gp, gw1, gb1, gw2, gb2 = mlp_backward(gs, pooled, m, w1, w2, act, gate)
    q = gp / (x.shape[2] * x.shape[3])
    gx = (grad.to(acc) * m.s[:, :, None, None] + q[:, :, None, None]).to(x.dtype)
    return gx.contiguous(memory_format=memory_format(channels_last)), gw1, gb1, gw2, gb2


# ---- registered ops --------------------------------------------------------------------------

def _canonical(x: Tensor) -> tuple[Tensor, bool]:
    cl = is_channels_last(x)
    return x.contiguous(memory_format=memory_format(cl)), cl


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _forward_impl(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                  act: int, gate: int) -> tuple[Tensor, Tensor]:
    x, cl = _canonical(x)
    args = (x, w1.contiguous(), _opt(b1), w2.contiguous(), _opt(b2), act, gate, cl)
    return run_kernel("squeeze_excite", "squeeze_excite_forward", x.device, args, _reference_forward)


@torch.library.custom_op("fastblocks::squeeze_excite", mutates_args=())
def _se_op(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, act: int,
           gate: int) -> tuple[Tensor, Tensor]:
    """(y, means): y as x, means (N, C) float32 (float64 for float64 x), not differentiable."""
    return _forward_impl(x, w1, b1, w2, b2, act, gate)


@_se_op.register_fake
def _(x, w1, b1, w2, b2, act, gate):
    y = empty(x.shape, x, is_channels_last(x))
    return y, x.new_empty((x.shape[0], x.shape[1]), dtype=acc_dtype(x.dtype))


def _backward_impl(grad: Tensor, x: Tensor, pooled: Tensor, w1: Tensor, b1: Tensor | None,
                   w2: Tensor, b2: Tensor | None, act: int, gate: int):
    x, cl = _canonical(x)
    grad = grad.contiguous(memory_format=memory_format(cl))
    args = (grad, x, pooled.contiguous(), w1.contiguous(), _opt(b1), w2.contiguous(), _opt(b2),
            act, gate, cl)
    return tuple(run_kernel("squeeze_excite", "squeeze_excite_backward", x.device, args,
                            _reference_backward))


@torch.library.custom_op("fastblocks::squeeze_excite_backward", mutates_args=())
def _se_backward_op(grad: Tensor, x: Tensor, pooled: Tensor, w1: Tensor, b1: Tensor | None,
                    w2: Tensor, b2: Tensor | None, act: int,
                    gate: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_w1, grad_b1, grad_w2, grad_b2) from the gradient of y and the forward's
    means; the bias gradients are computed whether or not the biases exist."""
    return _backward_impl(grad, x, pooled, w1, b1, w2, b2, act, gate)


@_se_backward_op.register_fake
def _(grad, x, pooled, w1, b1, w2, b2, act, gate):
    return (empty(x.shape, x, is_channels_last(x)), w1.new_empty(w1.shape),
            w1.new_empty((w1.shape[0],)), w2.new_empty(w2.shape), w2.new_empty((w2.shape[0],)))


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, act, gate = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2, output[1])
    ctx.codes = (act, gate)
    ctx.mark_non_differentiable(output[1])
    capture(ctx)


def _make_backward(backward_kernel):
    def backward(ctx, grad: Tensor, _grad_means):
        x, w1, b1, w2, b2, pooled = ctx.saved_tensors
        with restored(ctx):
            gx, gw1, gb1, gw2, gb2 = backward_kernel(grad, x, pooled, w1, b1, w2, b2, *ctx.codes)
        return (gx, gw1, None if b1 is None else gb1, gw2, None if b2 is None else gb2, None, None)
    return backward


torch.library.register_autograd("fastblocks::squeeze_excite", _make_backward(_se_backward_op),
                                setup_context=_setup_context)

# plain eager training: the same autograd functions around direct kernel calls (_fastpath)
_se_direct = direct_autograd("SqueezeExciteFunction", _forward_impl, _setup_context,
                             _make_backward(_backward_impl))


def _autocast_cast(x: Tensor, *params):
    """Under autocast: the weights and biases in x's dtype. Eager SE under autocast runs its
    1x1 convs in the autocast dtype, and ``x * s`` then promotes to x's dtype, so the result
    has x's dtype; this op does the same without a cast pass over x, and runs the MLP in
    float32 (more exact than eager's bf16/fp16 convs)."""
    return tuple(p.to(x.dtype) if isinstance(p, Tensor) and p.is_floating_point() else p
                 for p in params)


def _register_autocast(qualname: str, device_type: str) -> None:
    """Autocast for the registered op by the rule of _autocast_cast (torch.library's
    register_autocast casts every input to one fixed dtype)."""
    op = torch._library.utils.lookup_op(qualname)
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def cast_and_call(x, w1, b1, w2, b2, *codes):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(x, *_autocast_cast(x, w1, b1, w2, b2), *codes)

    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key)
    op.py_impl(key)(cast_and_call)  # the Python dispatcher's view (tracing)
    _LIB.impl(qualname.split("::")[1], lambda _keyset, *args: cast_and_call(*args), key_name,
              with_keyset=True)


_LIB = torch.library.Library("fastblocks", "FRAGMENT")
for _device_type in ("cpu", "cuda"):
    _register_autocast("fastblocks::squeeze_excite", _device_type)


# ---- public function -------------------------------------------------------------------------

def _fc_weight(w: Tensor, arg: str, out: int | None, inp: int, doc: str) -> Tensor:
    """`w` as an (out, in) matrix; accepts (out, in) and 1x1-conv (out, in, 1, 1) weights."""
    ok = w.dim() == 2 or (w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1)
    if not ok or w.shape[1] != inp or w.shape[0] == 0 or (out is not None and w.shape[0] != out):
        raise ValueError(f"{arg} must have shape {doc} or {doc[:-1]}, 1, 1), got {tuple(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1])


def squeeze_excite(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                   activation: str | None = "relu", gate: str = "sigmoid") -> Tensor:
    """Squeeze-and-excitation in two passes over x (forward and backward).

    Same result as ``x * gate(conv2d(act(conv2d(adaptive_avg_pool2d(x, 1), w1, b1)), w2, b2))``
    (torchvision's ``SqueezeExcitation``), with float32 accumulation (float64 for float64).

    Args:
        x: (N, C, H, W) or unbatched (C, H, W), H*W >= 1; float16, bfloat16, float32 or
            float64; NCHW or channels_last (the output keeps the layout).
        w1: (C_r, C) or (C_r, C, 1, 1): the squeeze FC (``fc1`` / ``conv_reduce``).
        b1: (C_r,) or None.
        w2: (C, C_r) or (C, C_r, 1, 1): the excitation FC (``fc2`` / ``conv_expand``).
        b2: (C,) or None.
        activation: after fc1: "relu" (SE-Net, MobileNetV3), "silu" (EfficientNet),
            "hardswish", "relu6", "hardsigmoid" or None/"none".
        gate: "sigmoid" or "hardsigmoid" (MobileNetV3).

    Returns:
        (N, C, H, W) (or (C, H, W)) in x's dtype and layout.

    Raises:
        TypeError: a non-tensor or non-floating argument, or dtypes that differ (under
            autocast the parameters are cast to x's dtype instead, and the result has x's
            dtype, as eager SE's under autocast).
        ValueError: shapes that do not chain (w1 must take C inputs, w2 must map C_r back to
            C, biases of C_r and C), an empty plane, an unknown activation or gate, tensors on
            different devices.
    """
    check_tensor(x, "x")
    if torch.is_autocast_enabled(x.device.type):  # the result has x's dtype, as eager's
        w1, b1, w2, b2 = _autocast_cast(x, w1, b1, w2, b2)
    for t, arg in ((w1, "w1"), (w2, "w2"), (b1, "b1"), (b2, "b2")):
        if t is not None or arg in ("w1", "w2"):
            check_tensor(t, arg)
            check_same(x, "x", t, arg)
    code = activation_code(activation)
    if not isinstance(gate, str) or gate not in GATE_CODES:
        raise ValueError(f"gate must be one of {sorted(GATE_CODES)}, got {gate!r}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    check_ndim(x, 4, "x", "(N, C, H, W) or 3-d (C, H, W)")
    c = x.shape[1]
    if c == 0 or x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"x must have at least one channel and H*W >= 1, got shape {tuple(x.shape)}")
    w1 = _fc_weight(w1, "w1", None, c, f"(C_r, C) = (C_r, {c})")
    c_r = w1.shape[0]
    w2 = _fc_weight(w2, "w2", c, c_r, f"(C, C_r) = ({c}, {c_r}) to chain with w1")
    if b1 is not None and tuple(b1.shape) != (c_r,):
        raise ValueError(f"b1 must have shape (C_r,) = ({c_r},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (c,):
        raise ValueError(f"b2 must have shape (C,) = ({c},), got {tuple(b2.shape)}")
    args = (x, w1, b1, w2, b2, code, GATE_CODES[gate])
    eager = plain_eager(*args[:5])
    if not needs_grad(*args[:5]):
        y = (_forward_impl if eager else _se_op)(*args)[0]
    else:
        y = (_se_direct if eager else _se_op)(*args)[0]
    return y.squeeze(0) if unbatched else y

