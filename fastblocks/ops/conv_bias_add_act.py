"""Convolution + bias + residual add + activation: ``act(conv2d(x, weight, bias) + other)``.

The tail of a ResNet-style block (conv -> BN -> + identity -> ReLU) once BN is folded into the
conv's weight and bias, in one pass over the output. Registered as
``fastblocks::conv_bias_add_act`` (fake kernel, autograd, autocast).

CPU: oneDNN's convolution with the addition as a binary post-op and the activation as a unary
one, on a weight packed once per (tensor, version) (``_mkldnn_conv.conv_add_pointwise``;
``torch.ops.mkldnn._convolution_pointwise.binary`` with "add", as inductor's mkldnn_fusion
pass emits it under freezing). oneDNN (torch 2.13) fuses only relu (or nothing) after the
addition ("Unary Fusion behavior undefined" for hardtanh/hardswish/swish), so relu6, hardswish,
hardsigmoid and silu run in place on the primitive's output. Served: channels_last output,
float32 (and bfloat16/float16 where the CPU has them natively), ``other`` of the output's
shape, dtype and layout. Elsewhere (NCHW, float64, other devices, a broadcast ``other``):
ATen's convolution, then ``add_`` and the activation in place.

Measured (interleaved p10 of 60 rotating calls, batch 1, fp32 channels_last, 1 thread, the
shared 2-core EPYC VM at load ~5; ResNet-50's 1x1 expansions + identity + relu): against eager
conv + BN + add + relu 1.39-1.72x; against ``conv_bias_act`` then ``add_`` and ``relu_`` (the
same oneDNN conv without the binary post-op) 0.92x (64->256 at 56x56), 1.01x (128->512 at
28x28), 0.99x (256->1024 at 14x14), 1.14x (512->2048 at 7x7): the add pass it saves is small
next to these convolutions at batch 1, within this VM's spread.

Backward: grad of the pre-activation from the output (none/relu/relu6) or a recomputation
(hardswish, hardsigmoid, silu); ``other`` gets that gradient, the conv ATen's
convolution_backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import get_backend
from . import _mkldnn_conv
from ._activation_codes import activate_, activation_code
from ._fastpath import direct_autograd, needs_grad, plain_eager
from ._layout import empty, is_channels_last
from .activation import reference_forward as _act_forward
from .conv_bn_act import _FROM_OUTPUT, _check_same, _out_shape, _prepare, conv_act_backward

__all__ = ["conv_bias_add_act", "reference_conv_bias_add_act"]


def reference_conv_bias_add_act(x, weight, bias, other, stride=1, padding=0, dilation=1,
                                groups=1, activation="relu"):
    """The eager composition: F.conv2d, + other, then the activation."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups) + other
    code = activation_code(activation)
    return y if code == 0 else _act_forward(y, code)


def _impl(x, weight, bias, other, stride, padding, dilation, groups, act):
    out_cl = is_channels_last(x) or is_channels_last(weight)
    if out_cl and _mkldnn_conv.can_serve(x, weight) and get_backend() != "torch" \
            and other.dtype == x.dtype and other.is_contiguous(memory_format=torch.channels_last) \
            and tuple(other.shape) == _out_shape(x, weight, stride, padding, dilation):
        x = x.contiguous(memory_format=torch.channels_last)
        return _mkldnn_conv.conv_add_pointwise(x, other, weight, bias, stride, padding, dilation,
                                               groups, act)
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return activate_(y.add_(other), act)


@torch.library.custom_op("fastblocks::conv_bias_add_act", mutates_args=())
def _op(x: Tensor, weight: Tensor, bias: Tensor | None, other: Tensor, stride: list[int],
        padding: list[int], dilation: list[int], groups: int, act: int) -> Tensor:
    return _impl(x, weight, bias, other, stride, padding, dilation, groups, act)


@_op.register_fake
def _(x, weight, bias, other, stride, padding, dilation, groups, act):
    return empty(_out_shape(x, weight, stride, padding, dilation), x,
                 is_channels_last(x) or is_channels_last(weight))


def _setup_context(ctx, inputs, output):
    x, weight, bias, other, stride, padding, dilation, groups, act = inputs
    from_output = act in _FROM_OUTPUT
    ctx.save_for_backward(x, weight, None if from_output else bias,
                          None if from_output else other, output if act and from_output else None)
    ctx.args = (stride, padding, dilation, groups, act)
    ctx.has_bias = bias is not None


def _make_backward(forward):
    def backward(ctx, grad):
        x, weight, bias, other, y = ctx.saved_tensors
        gx, gw, gb, grad_pre = conv_act_backward(
            ctx, grad, x, weight, y, lambda: forward(x, weight, bias, other, *ctx.args[:4], 0))
        return gx, gw, gb, grad_pre if ctx.needs_input_grad[3] else None, None, None, None, None, None
    return backward


torch.library.register_autograd("fastblocks::conv_bias_add_act", _make_backward(_op),
                                setup_context=_setup_context)
_direct = direct_autograd("ConvBiasAddActFunction", _impl, _setup_context, _make_backward(_impl))
for _device, _dtype in (("cpu", torch.bfloat16), ("cuda", torch.float16)):
    torch.library.register_autocast("fastblocks::conv_bias_add_act", _device, _dtype)


def conv_bias_add_act(x: Tensor, weight: Tensor, bias: Tensor | None, other: Tensor, stride=1,
                      padding=0, dilation=1, groups: int = 1,
                      activation: str | None = "relu") -> Tensor:
    """``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups) + other)``.

    Args:
        x: (N, C_in, H, W); float16/bfloat16/float32/float64; NCHW or channels_last (the output
            is channels_last if x or weight is, as F.conv2d).
        weight: (C_out, C_in / groups, kh, kw), x's dtype and device. bias: (C_out,) or None.
        other: the residual, (N, C_out, OH, OW) (the conv output's shape), x's dtype and device.
        stride, dilation: int or pair, positive; padding: int, pair, "same" or "valid".
        groups: positive int dividing C_in and C_out.
        activation: None/"none", "relu", "relu6", "hardswish", "hardsigmoid" or "silu".

    Returns (N, C_out, OH, OW). Raises TypeError/ValueError naming the bad argument.
    On CPU: oneDNN's convolution with the add (and relu) as post-ops (module docstring).
    Residual learning: He et al. (2016).
    """
    code = activation_code(activation)
    if not isinstance(other, Tensor):
        raise TypeError(f"other must be a torch.Tensor, got {type(other).__name__}")
    x4, unbatched, st, pad, dil = _prepare(x, weight, bias, stride, padding, dilation, groups)
    if unbatched:
        raise ValueError(f"x must be 4-d (N, C_in, H, W), got shape {tuple(x.shape)}")
    _check_same(x4, "x", other, "other")
    expected = _out_shape(x4, weight, st, pad, dil)
    if tuple(other.shape) != expected:
        raise ValueError(f"other must have the conv output's shape {expected}, got "
                         f"{tuple(other.shape)}")
    args = (x4, weight, bias, other, st, pad, dil, groups, code)
    if torch.compiler.is_compiling() and x4.device.type == "cpu":
        # plain ATen ops: inductor's freezing passes fuse them into the same binary post-op
        return reference_conv_bias_add_act(x4, weight, bias, other, st, pad, dil, groups,
                                           activation)
    tensors = (x4, weight, bias, other)
    if not (plain_eager(*tensors) and not torch.is_autocast_enabled(x4.device.type)):
        return _op(*args)
    if needs_grad(*tensors):
        return _direct(*args)
    return _impl(*args)
