"""Depthwise 2-d convolution with a fused bias + activation epilogue.

``depthwise_conv2d(x, weight, bias, stride, padding, dilation, activation)`` computes
``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))`` in one kernel, so an
eval-mode depthwise -> BatchNorm (folded into weight and bias) -> activation chain is a single
pass over memory (MobileNetV1/V2/V3, EfficientNet, MnasNet, ShuffleNet, Xception).

Registered ops: ``fastblocks::depthwise_conv2d`` and its backward
``fastblocks::depthwise_conv2d_backward`` (input, weight and bias gradients in one op). The
backward of a fused activation recomputes the pre-activation with one more forward pass
instead of storing it: the same memory as an unfused conv that saves only its input.

Layout: NCHW or channels_last, chosen like PyTorch's convolution (channels_last when x is
channels_last-contiguous); the output keeps it. Any other strides are copied once into NCHW.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import capture, restored
from ._dispatch import run_kernel
from ._fastpath import direct_call_ok
from ._activation_codes import activation_code
from ._conv_args import conv_geometry
from ._layout import empty, is_channels_last, memory_format
from ._validate import check_ndim, check_same, check_tensor
from .activation import reference_forward as _act_reference, run_backward as _act_backward

__all__ = ["depthwise_conv2d", "reference_depthwise_conv2d"]


# ---- eager reference ------------------------------------------------------------------------

def reference_depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                               padding=0, dilation=1, activation: str | None = None) -> Tensor:
    """The eager PyTorch composition: F.conv2d(groups=C) then the activation."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[-3])
    code = activation_code(activation)
    return y if code == 0 else _act_reference(y, code)


def _pads(in_hw, kernel_size, stride, padding, dilation, out_size):
    """(top, bottom, left, right) zero padding after which a padding-0 convolution gives
    exactly `out_size`: `padding` at the top/left and as much at the bottom/right as the
    output needs. (A stride can leave the last rows unread; padding them instead of cropping
    changes nothing: the extra stays below one stride.)"""
    pads = []
    for size, k, s, p, d, o in zip(in_hw, kernel_size, stride, padding, dilation, out_size):
        pads += [p, max((o - 1) * s + d * (k - 1) + 1 - size - p, 0)]
    return pads


def _conv_backward(grad, x_or_shape, weight_or_shape, stride, dilation, groups, mask):
    """aten.convolution_backward (padding 0) where the tensor whose gradient is not wanted may
    be given by its shape alone (an expanded scalar: no memory), as torch.nn.grad does. Called
    inside custom ops, below autograd, so it cannot use autograd itself."""
    def tensor(t):
        return t if isinstance(t, Tensor) else grad.new_empty(1).expand(t)
    return torch.ops.aten.convolution_backward(
        grad, tensor(x_or_shape), tensor(weight_or_shape), None, list(stride), [0, 0],
        list(dilation), False, [0, 0], groups, mask)


# The references below take the kernels' arguments (same names, same order), so the `torch`
# backend runs through the same dispatcher (fastblocks.ops._dispatch.run_kernel).

def _reference_forward(x, weight, bias, stride, padding, dilation, out_size, act, channels_last):
    t, b, l, r = _pads(x.shape[-2:], weight.shape[-2:], stride, padding, dilation, out_size)
    y = F.conv2d(F.pad(x, (l, r, t, b)), weight, bias, stride, 0, dilation, groups=x.shape[1])
    if act:
        y = _act_reference(y, act)
    return y.contiguous(memory_format=memory_format(channels_last))


def _reference_backward_input(grad, weight, in_size, stride, padding, dilation, channels_last):
    c, h, w = in_size
    t, b, l, r = _pads((h, w), weight.shape[-2:], stride, padding, dilation, grad.shape[-2:])
    padded = (grad.shape[0], c, h + t + b, w + l + r)
    gxp = _conv_backward(grad, padded, weight, stride, dilation, c, [True, False, False])[0]
    return gxp[..., t:t + h, l:l + w].contiguous(memory_format=memory_format(channels_last))


def _reference_backward_weight(grad, x, kernel_size, stride, padding, dilation, channels_last):
    t, b, l, r = _pads(x.shape[-2:], kernel_size, stride, padding, dilation, grad.shape[-2:])
    shape = (grad.shape[1], 1, *kernel_size)
    gw = _conv_backward(grad, F.pad(x, (l, r, t, b)), shape, stride, dilation, x.shape[1],
                        [False, True, False])[1]
    return gw.contiguous()


# ---- registered ops --------------------------------------------------------------------------

def _canonical(x: Tensor) -> tuple[Tensor, bool]:
    cl = is_channels_last(x)
    return x.contiguous(memory_format=memory_format(cl)), cl


def _forward_impl(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
                  out_size, act: int) -> Tensor:
    x, cl = _canonical(x)
    bias = None if bias is None else bias.contiguous()
    args = (x, weight.contiguous(), bias, tuple(stride), tuple(padding), tuple(dilation),
            tuple(out_size), act, cl)
    return run_kernel("depthwise", "depthwise_forward", x.device, args, _reference_forward)


@torch.library.custom_op("fastblocks::depthwise_conv2d", mutates_args=())
def _depthwise_op(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
                  padding: list[int], dilation: list[int], out_size: list[int], act: int) -> Tensor:
    return _forward_impl(x, weight, bias, stride, padding, dilation, out_size, act)


@_depthwise_op.register_fake
def _(x, weight, bias, stride, padding, dilation, out_size, act):
    return empty((x.shape[0], weight.shape[0], *out_size), x, is_channels_last(x))


@torch.library.custom_op("fastblocks::depthwise_conv2d_backward", mutates_args=())
def _depthwise_backward_op(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,
                           stride: list[int], padding: list[int], dilation: list[int], act: int,
                           output_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias); an entry whose output_mask is False is an empty
    placeholder (custom ops cannot return None)."""
    x, cl = _canonical(x)
    weight = weight.contiguous()
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    grad = grad.contiguous(memory_format=memory_format(cl))
    if act:
        # dL/dz = dL/dy * act'(z): recompute z = conv + bias (one forward pass) rather than
        # having stored it.
        b = None if bias is None else bias.contiguous()
        z = run_kernel("depthwise", "depthwise_forward", x.device,
                       (x, weight, b, stride, padding, dilation, tuple(grad.shape[-2:]), 0, cl),
                       _reference_forward)
        grad = _act_backward(grad, z, act)
    # distinct placeholders: outputs of a custom op must not alias each other
    gx, gw, gb = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    if output_mask[0]:
        gx = run_kernel("depthwise", "depthwise_backward_input", x.device,
                        (grad, weight, tuple(x.shape[1:]), stride, padding, dilation, cl),
                        _reference_backward_input)
    if output_mask[1]:
        gw = run_kernel("depthwise", "depthwise_backward_weight", x.device,
                        (grad, x, tuple(weight.shape[-2:]), stride, padding, dilation, cl),
                        _reference_backward_weight)
    if output_mask[2]:
        acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
        gb = grad.sum(dim=(0, 2, 3), dtype=acc).to(grad.dtype)
    return gx, gw, gb


@_depthwise_backward_op.register_fake
def _(grad, x, weight, bias, stride, padding, dilation, act, output_mask):
    gx = empty(x.shape, x, is_channels_last(x)) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0)
    gb = grad.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty(0)
    return gx, gw, gb


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, out_size, act = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.args = (stride, padding, dilation, act)
    ctx.mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
    capture(ctx)


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    stride, padding, dilation, act = ctx.args
    with restored(ctx):
        gx, gw, gb = _depthwise_backward_op(grad, x, weight, bias, stride, padding, dilation, act,
                                            ctx.mask)
    return (gx if ctx.mask[0] else None, gw if ctx.mask[1] else None,
            gb if ctx.mask[2] else None, None, None, None, None, None)


torch.library.register_autograd("fastblocks::depthwise_conv2d", _backward,
                                setup_context=_setup_context)


# ---- public function -------------------------------------------------------------------------

def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     dilation=1, activation: str | None = None) -> Tensor:
    """Depthwise convolution, then bias, then an activation, in one kernel.

    Same result as ``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))``.

    Args:
        x: (N, C, H, W) or unbatched (C, H, W); float16, bfloat16, float32 or float64;
            NCHW or channels_last (the output keeps the layout).
        weight: (C * m, 1, KH, KW), channel multiplier m >= 1: output channel ``o`` reads
            input channel ``o // m``.
        bias: (C * m,) or None.
        stride, dilation: int or (h, w), positive.
        padding: int or (h, w), non-negative; or "same" (stride 1; odd extra padding goes
            bottom/right, as in PyTorch) or "valid".
        activation: None/"none", "relu", "relu6", "hardswish", "hardsigmoid" or "silu".

    Returns:
        (N, C * m, OH, OW) with OH = (H + 2*ph - dh*(KH-1) - 1) // sh + 1 (likewise OW).

    Depthwise convolutions: Howard et al., "MobileNets" (2017); Chollet, "Xception" (2017).
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight")
    check_same(x, "x", weight, "weight")
    if bias is not None:
        check_tensor(bias, "bias")
        check_same(x, "x", bias, "bias")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    check_ndim(x, 4, "x", "(N, C, H, W) or 3-d (C, H, W)")
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] == 0 or weight.shape[0] % c:
        raise ValueError(
            f"weight must have shape (C*m, 1, kh, kw) with C = {c} input channels and m >= 1, "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if c == 0:
        raise ValueError("x must have at least one channel")
    code = activation_code(activation)
    geo = conv_geometry(tuple(x.shape[-2:]), tuple(weight.shape[-2:]), stride, padding, dilation)
    # plain eager inference skips the registered op's overhead (see _fastpath)
    op = _forward_impl if direct_call_ok(x, weight, bias) else _depthwise_op
    y = op(x, weight, bias, list(geo.stride), list(geo.padding), list(geo.dilation),
           list(geo.out_size), code)
    return y.squeeze(0) if unbatched else y
