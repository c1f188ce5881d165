"""Depthwise 2-d convolution with a fused bias + activation epilogue.

``depthwise_conv2d(x, weight, bias, stride, padding, dilation, activation)`` computes
``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))`` in one kernel, so an
eval-mode depthwise -> BatchNorm (folded into weight and bias) -> activation chain is a single
pass over memory (MobileNetV1/V2/V3, EfficientNet, MnasNet, ShuffleNet, Xception).

Registered ops: ``fastblocks::depthwise_conv2d`` and its backward
``fastblocks::depthwise_conv2d_backward`` (input, weight and bias gradients in one op, from
the gradient of the pre-activation). In training, relu and relu6 stay fused (their backward
reads the output); hardswish, hardsigmoid and silu run as a second op whose backward reads the
saved pre-activation, as eager's does. Recomputing it in backward instead would cost a whole
extra convolution pass for the memory of one activation map.

Layout: NCHW or channels_last, chosen by PyTorch's rule for convolutions (channels_last when x
or the weight is, _layout.conv_channels_last); the output has it, as eager's does. x in any
other strides is copied once into that format.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import capture, resolve, restored
from ._dispatch import run_kernel
from ._fastpath import direct_autograd, needs_grad, plain_eager
from ._activation_codes import activate_, activation_code
from ._conv_args import conv_geometry_cached
from ._layout import conv_channels_last, empty, memory_format
from ._validate import check_ndim, check_same, check_tensor
from .activation import (_activation_backward_op, _backward_impl as _activation_backward_impl,
                         apply_activation, reference_forward as _act_reference)

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


def _extra(in_hw, kernel_size, stride, padding, dilation, out_size):
    """Rows and columns of zeros to append at the bottom/right of x so that F.conv2d with the
    symmetric `padding` yields at least `out_size`: one for "same" with an even dilated kernel
    (PyTorch puts the odd padding there), none otherwise. The padding itself is never
    materialised: an explicit F.pad of padding 4096 ran out of a 3 GB cap where eager needs no
    copy (issue 12)."""
    t, b, l, r = _pads(in_hw, kernel_size, stride, padding, dilation, out_size)
    return max(b - t, 0), max(r - l, 0)


def _eager_size(in_hw, kernel_size, stride, padding, dilation):
    """Output (H, W) of F.conv2d with symmetric padding."""
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(in_hw, kernel_size, stride, padding, dilation)]


def _conv_backward(grad, x_or_shape, weight_or_shape, stride, padding, dilation, groups, mask):
    """aten.convolution_backward where the tensor whose gradient is not wanted may be given by
    its shape alone (an expanded scalar: no memory), as torch.nn.grad does. Called inside
    custom ops, below autograd, so it cannot use autograd itself."""
    def tensor(t):
        return t if isinstance(t, Tensor) else grad.new_empty(1).expand(t)
    return torch.ops.aten.convolution_backward(
        grad, tensor(x_or_shape), tensor(weight_or_shape), None, list(stride), list(padding),
        list(dilation), False, [0, 0], groups, mask)


# The references below take the kernels' arguments (same names, same order), so the `torch`
# backend runs through the same dispatcher (fastblocks.ops._dispatch.run_kernel). Each pads x
# only by _extra and lets ATen handle `padding`, then crops to out_size: memory stays that of
# the tensors whatever the geometry.

def _extended(x, eh, ew):
    return F.pad(x, (0, ew, 0, eh)) if eh or ew else x


def _grad_to_eager_size(grad, size):
    """grad (the gradient of the cropped output) as the gradient of eager's output of `size`:
    zeros for the outputs the crop dropped."""
    eh, ew = size[0] - grad.shape[-2], size[1] - grad.shape[-1]
    return F.pad(grad, (0, ew, 0, eh)) if eh or ew else grad


def _reference_forward(x, weight, bias, stride, padding, dilation, out_size, act, channels_last):
    eh, ew = _extra(x.shape[-2:], weight.shape[-2:], stride, padding, dilation, out_size)
    y = F.conv2d(_extended(x, eh, ew), weight, bias, stride, padding, dilation, groups=x.shape[1])
    y = y[..., :out_size[0], :out_size[1]]
    if act:
        y = _act_reference(y, act)
    return y.contiguous(memory_format=memory_format(channels_last))


def _reference_backward_input(grad, weight, in_size, stride, padding, dilation, channels_last):
    c, h, w = in_size
    ks = weight.shape[-2:]
    eh, ew = _extra((h, w), ks, stride, padding, dilation, grad.shape[-2:])
    hw = (h + eh, w + ew)
    g = _grad_to_eager_size(grad, _eager_size(hw, ks, stride, padding, dilation))
    gx = _conv_backward(g, (grad.shape[0], c, *hw), weight, stride, padding, dilation, c,
                        [True, False, False])[0]
    return gx[..., :h, :w].contiguous(memory_format=memory_format(channels_last))


def _reference_backward_weight(grad, x, kernel_size, stride, padding, dilation, channels_last):
    eh, ew = _extra(x.shape[-2:], kernel_size, stride, padding, dilation, grad.shape[-2:])
    xe = _extended(x, eh, ew)
    g = _grad_to_eager_size(grad, _eager_size(xe.shape[-2:], kernel_size, stride, padding, dilation))
    shape = (grad.shape[1], 1, *kernel_size)
    gw = _conv_backward(g, xe, shape, stride, padding, dilation, x.shape[1],
                        [False, True, False])[1]
    return gw.contiguous()


# ---- registered ops --------------------------------------------------------------------------

def _canonical(x: Tensor, weight: Tensor) -> tuple[Tensor, bool]:
    """x in the memory format the convolution computes in (conv_channels_last), and that choice."""
    cl = conv_channels_last(x, weight)
    return x.contiguous(memory_format=memory_format(cl)), cl


def _forward_impl(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
                  out_size, act: int) -> Tensor:
    x, cl = _canonical(x, weight)
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
    return empty((x.shape[0], weight.shape[0], *out_size), x, conv_channels_last(x, weight))


def _backward_impl(grad: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation,
                   output_mask) -> tuple[Tensor, Tensor, Tensor]:
    x, cl = _canonical(x, weight)
    weight = weight.contiguous()
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    grad = grad.contiguous(memory_format=memory_format(cl))
    # distinct placeholders: outputs of a custom op must not alias each other
    gx = gw = gb = None
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
        gb = grad.sum(dim=(0, 2, 3), dtype=acc)
        gb = gb if gb.dtype == grad.dtype else gb.to(grad.dtype)
    return tuple(x.new_empty(0) if g is None else g for g in (gx, gw, gb))


@torch.library.custom_op("fastblocks::depthwise_conv2d_backward", mutates_args=())
def _depthwise_backward_op(grad: Tensor, x: Tensor, weight: Tensor, stride: list[int],
                           padding: list[int], dilation: list[int],
                           output_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias) of the convolution plus bias, from the gradient of its
    pre-activation output; an entry whose output_mask is False is an empty placeholder
    (custom ops cannot return None)."""
    return _backward_impl(grad, x, weight, stride, padding, dilation, output_mask)


@_depthwise_backward_op.register_fake
def _(grad, x, weight, stride, padding, dilation, output_mask):
    gx = empty(x.shape, x, conv_channels_last(x, weight)) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0)
    gb = grad.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty(0)
    return gx, gw, gb


# Activations whose derivative the output gives exactly (y > 0 iff z > 0; 0 < y < 6 iff
# 0 < z < 6, with the same kinks as ATen's threshold/hardtanh backward): their backward reads
# the saved output. The others (hardswish, hardsigmoid, silu) would need the pre-activation z;
# depthwise_conv2d does not fuse them when a gradient is needed (it saves z, as eager does),
# and a direct call of the op with one recomputes z in backward.
_FROM_OUTPUT = (0, activation_code("relu"), activation_code("relu6"))


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, out_size, act = inputs
    from_output = act in _FROM_OUTPUT
    ctx.save_for_backward(x, weight, None if from_output else bias,
                          output if act and from_output else None)
    ctx.args = (stride, padding, dilation, act)
    ctx.mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
    capture(ctx)


def _make_backward(forward_kernel, activation_backward_kernel, backward_kernel):
    """The autograd backward, given the forward, activation-backward and convolution-backward
    kernels: the registered ops (dispatcher path) or their bodies (plain eager path)."""
    def backward(ctx, grad):
        x, weight, bias, y = ctx.saved_tensors
        stride, padding, dilation, act = ctx.args
        with restored(ctx):
            if act:
                if y is None:  # recompute z = conv + bias with one more forward pass
                    y = forward_kernel(x, weight, bias, stride, padding, dilation,
                                       list(grad.shape[-2:]), 0)
                grad = activation_backward_kernel(grad, y, act)
            gx, gw, gb = backward_kernel(grad, x, weight, stride, padding, dilation, ctx.mask)
        return (gx if ctx.mask[0] else None, gw if ctx.mask[1] else None,
                gb if ctx.mask[2] else None, None, None, None, None, None)
    return backward


torch.library.register_autograd(
    "fastblocks::depthwise_conv2d",
    _make_backward(_depthwise_op, _activation_backward_op, _depthwise_backward_op),
    setup_context=_setup_context)

# plain eager training: the same autograd functions around direct kernel calls (_fastpath)
_depthwise_direct = direct_autograd(
    "DepthwiseConv2dFunction", _forward_impl, _setup_context,
    _make_backward(_forward_impl, _activation_backward_impl, _backward_impl))


def _c_kernels_selected(device: torch.device) -> bool:
    """Whether the selected backend runs both the depthwise and the activation kernels from
    fastblocks._C on `device` (then training can use the C++ autograd node)."""
    return (resolve("depthwise", device, "depthwise_forward") in _C_BACKENDS
            and resolve("activation", device, "activation_forward") in _C_BACKENDS)


_C_BACKENDS = ("cpu", "cuda")


def _autocast(x: Tensor, weight: Tensor, bias: Tensor | None):
    """Under torch.autocast, cast as autocast casts F.conv2d's arguments (floating tensors
    other than float64 to the autocast dtype), so a float32 weight meeting a bfloat16
    activation (an optimized model under autocast) computes in bfloat16 instead of raising."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(dev)

    def cast(t):
        ok = isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if ok else t
    return cast(x), cast(weight), cast(bias)


# ---- CPU policy ------------------------------------------------------------------------------

# On CPU, channels_last, batch 1, a stride-1 3x3 depthwise conv over a map of at least 56x56
# followed by none/relu/relu6 runs faster as ATen's convolution (oneDNN's depthwise kernel) plus
# the activation in place. Medians of 200-300 shuffled calls, fp32, bias, relu6, 1 thread, the
# 2-core AMD EPYC VM, up to three runs, ATen's time / ours: 16@112x112 0.90-0.92, 32@112x112
# 0.76-0.87, 64@56x56 0.87-0.91, 96@56x56 0.81, 144@56x56 0.77-0.93. At 28x28 and below ours
# is par or faster (192@28 0.96 three times, 32@28 1.37, 384@14 1.21-1.24, 960@7 1.31), as it
# is with stride 2 (144@56 1.10) and silu (32@112 0.98, 144@56 0.99, 192@28 1.10). Batch 8
# gave no consistent sign on this VM (0.40-1.51), so it keeps ours.
_ATEN_CL_MIN_OUT_HW = 56 * 56
_ATEN_CL_CODES = (0, 1, 2)  # none, relu, relu6: activations that one cheap in-place pass adds


def aten_faster_on_cpu(x: Tensor, weight: Tensor, geo_args, code: int) -> bool:
    """Whether ATen's convolution + in-place activation beats the fused kernel for this
    inference call (the measured case above). ``geo_args``: the (stride, padding, dilation,
    out_size) lists the kernels take."""
    stride, padding, dilation, out_size = geo_args
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1
            and code in _ATEN_CL_CODES and tuple(weight.shape[1:]) == (1, 3, 3)
            and weight.shape[0] == x.shape[1] and stride == [1, 1] and dilation == [1, 1]
            and out_size[0] * out_size[1] >= _ATEN_CL_MIN_OUT_HW
            and list(out_size) == _eager_size(x.shape[-2:], (3, 3), stride, padding, dilation)
            and conv_channels_last(x, weight))


# ---- public function -------------------------------------------------------------------------

def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     dilation=1, activation: str | None = None) -> Tensor:
    """Depthwise convolution, then bias, then an activation, in one kernel.

    Same result as ``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C))``.

    Args:
        x: (N, C, H, W) or unbatched (C, H, W); float16, bfloat16, float32 or float64;
            any strides. The output is channels_last when x or weight is, NCHW otherwise
            (PyTorch's rule for convolutions).
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
    x, weight, bias = _autocast(x, weight, bias)
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
    geo = conv_geometry_cached(tuple(x.shape[-2:]), tuple(weight.shape[-2:]), stride, padding, dilation)
    args = (list(geo.stride), list(geo.padding), list(geo.dilation), list(geo.out_size))
    if torch.compiler.is_compiling() and x.device.type == "cpu" and not needs_grad(x, weight, bias):
        # ATen ops for inductor, as conv_bias_act does under compile on CPU: it fuses and lays
        # them out itself, and an opaque op between its channels_last convolutions costs two
        # layout conversions
        y = activate_(F.conv2d(x, weight, bias, geo.stride, geo.padding, geo.dilation, c), code)
    elif not needs_grad(x, weight, bias):
        # inference fuses every activation; plain eager skips the registered op (_fastpath)
        direct = plain_eager(x, weight, bias)
        if direct and aten_faster_on_cpu(x, weight, args, code):
            y = activate_(F.conv2d(x, weight, bias, geo.stride, geo.padding, geo.dilation, c), code)
        else:
            y = (_forward_impl if direct else _depthwise_op)(x, weight, bias, *args, code)
    else:
        # training fuses only the activations whose backward reads the output; for the
        # others it stores the pre-activation for their backward, as eager does, instead of
        # recomputing it there with a second convolution
        if plain_eager(x, weight, bias) and _c_kernels_selected(x.device):
            # the same policy with the autograd node in C++ (csrc/autograd/depthwise.cpp)
            x, cl = _canonical(x, weight)
            y = torch.ops.fastblocks_C.depthwise_train(
                x, weight.contiguous(), None if bias is None else bias.contiguous(), *args,
                code, cl)
            return y.squeeze(0) if unbatched else y
        fused = code if code in _FROM_OUTPUT else 0
        op = _depthwise_direct if plain_eager(x, weight, bias) else _depthwise_op
        y = op(x, weight, bias, *args, fused)
        if fused != code:
            y = apply_activation(y, activation)
    return y.squeeze(0) if unbatched else y
