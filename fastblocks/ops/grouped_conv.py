"""Grouped 2-d convolution with a fused bias + activation epilogue and an optionally shuffled
output: ShuffleNet v1's 1x1 GConv -> BN (folded) -> ReLU -> channel shuffle, ResNeXt's grouped
3x3.

``grouped_conv2d(x, weight, bias, stride, padding, dilation, groups, activation,
shuffle_groups)`` equals ``channel_shuffle(act(F.conv2d(x, weight, bias, stride, padding,
dilation, groups)), shuffle_groups)``.

How the pieces run (every backend; the convolution itself is ATen's: oneDNN on CPU, cuDNN on
CUDA, with their own forward and backward):

- ``groups == 1`` with a shuffle: the shuffle is folded into the weight. Shuffling the output
  channels of a convolution is the same convolution with its weight's (and bias's) output
  channels permuted the same way, which costs a gather of the small weight instead of a pass
  over the output. This is exact only while every output channel keeps its input group: with
  ``groups > 1`` a shuffle moves output channel ``o`` (group ``o // m``) to a position whose
  group reads other input channels, so a grouped conv with permuted weight cannot express it
  (only the identity shuffles, ``shuffle_groups`` 1 or C_out, pass, and those are dropped).
- ``groups > 1`` with a shuffle: the convolution writes its raw output, and one fused pass
  (``fastblocks::channel_shuffle``, the kernels of the shuffle family) adds the bias, applies
  the activation and writes the channels in shuffled order. The activation never takes an
  extra pass over memory.
- Bias: given to oneDNN on CPU (it adds it inside the convolution for free, before rounding);
  on CUDA PyTorch adds a convolution's bias in a separate pass, so the fused epilogue adds it.
- Training: relu/relu6 stay fused (their derivative is read from the output); hardswish,
  hardsigmoid and silu run as a separate activation op on the shuffled output, whose input is
  saved for their backward, as eager does.

Grouped convolutions: Krizhevsky et al. (AlexNet, 2012); Xie et al., "Aggregated Residual
Transformations for Deep Neural Networks" (ResNeXt, CVPR 2017); Zhang et al., "ShuffleNet"
(CVPR 2018).
"""
from __future__ import annotations

import torch.nn.functional as F
import torch
from torch import Tensor

from .._backend import get_backend, resolve
from ._activation_codes import activate_, activation_code
from ._conv_args import conv_geometry_cached
from ._fastpath import direct_call_ok, needs_grad, plain_eager
from ._layout import is_channels_last, memory_format
from ._validate import check_ndim, check_same, check_tensor
from .activation import apply_activation, reference_forward as _act_reference
from .shuffle import check_groups, shuffle_epilogue

__all__ = ["grouped_conv2d", "reference_grouped_conv2d", "permute_output_channels"]


def reference_grouped_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                             padding=0, dilation=1, groups: int = 1,
                             activation: str | None = None,
                             shuffle_groups: int | None = None) -> Tensor:
    """The eager composition: F.conv2d, the activation, then F.channel_shuffle."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if activation not in (None, "none"):
        y = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
             "hardsigmoid": F.hardsigmoid, "silu": F.silu}[activation](y)
    if shuffle_groups is not None:
        y = F.channel_shuffle(y.unsqueeze(0) if y.dim() == 3 else y, shuffle_groups)
        y = y.squeeze(0) if x.dim() == 3 else y
    return y


def permute_output_channels(t: Tensor, shuffle_groups: int) -> Tensor:
    """``t`` (C_out, ...) with dim 0 in channel_shuffle's order: ``conv(x, permuted weight,
    permuted bias)`` is ``channel_shuffle(conv(x, weight, bias), shuffle_groups)`` for an
    ungrouped conv. Differentiable (a view, transpose and reshape)."""
    c = t.shape[0]
    return t.reshape(shuffle_groups, c // shuffle_groups, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _gemm_serves(x: Tensor, weight: Tensor, bias: Tensor | None, geo) -> bool:
    """Whether the Triton GEMM kernel (kernels/grouped_conv.py: 1x1, stride 1, no padding,
    inference in plain eager code, fp16/bf16/fp32) runs this call: the triton backend only."""
    if x.is_cpu and (torch.compiler.is_compiling() or get_backend() != "triton"):
        return False  # the common CPU call, cheaply (dynamo cannot trace get_backend)
    return (weight.shape[-2:] == (1, 1) and geo.stride == (1, 1) and geo.padding == (0, 0)
            and geo.dilation == (1, 1) and tuple(geo.out_size) == tuple(x.shape[-2:])
            and x.dtype != torch.float64 and direct_call_ok(x, weight, bias)
            and resolve("grouped_conv", x.device) == "triton")


def grouped_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                   dilation=1, groups: int = 1, activation: str | None = None,
                   shuffle_groups: int | None = None) -> Tensor:
    """Grouped convolution, then bias, an activation and a channel shuffle, fused.

    Same result as ``channel_shuffle(act(F.conv2d(x, weight, bias, stride, padding, dilation,
    groups)), shuffle_groups)`` (no shuffle when shuffle_groups is None).

    Args:
        x: (N, C_in, H, W) or unbatched (C_in, H, W); float16, bfloat16, float32 or float64;
            NCHW or channels_last (the output follows PyTorch's convolution: channels_last if
            x or weight is).
        weight: (C_out, C_in / groups, KH, KW).
        bias: (C_out,) or None (e.g. a folded BatchNorm's shift).
        stride, dilation: int or (h, w), positive. padding: int, (h, w), "same" or "valid".
        groups: positive int dividing C_in and C_out.
        activation: None/"none", "relu", "relu6", "hardswish", "hardsigmoid" or "silu".
        shuffle_groups: None, or a positive int dividing C_out: output channel
            ``i * shuffle_groups + j`` is convolution channel ``j * (C_out / shuffle_groups) + i``.

    Returns:
        (N, C_out, OH, OW), OH = (H + 2*ph - dh*(KH-1) - 1) // sh + 1 (likewise OW).

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, non-int groups.
        ValueError: wrong shapes, groups or shuffle_groups <= 0 or not dividing the channels,
            unknown activation, bad stride/padding/dilation (each error names the argument).
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
    check_ndim(x, 4, "x", "(N, C_in, H, W) or 3-d (C_in, H, W)")
    check_ndim(weight, 4, "weight", "(C_out, C_in / groups, KH, KW)")
    c_in, c_out = x.shape[1], weight.shape[0]
    check_groups(groups, c_in, "groups", "x")
    check_groups(groups, c_out, "groups", "weight's output channels")
    if weight.shape[1] * groups != c_in or c_out == 0:
        raise ValueError(f"weight must have shape (C_out, C_in / groups = {c_in // groups}, KH, KW)"
                         f" with C_out > 0, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")
    code = activation_code(activation)
    if shuffle_groups is not None:
        check_groups(shuffle_groups, c_out, "shuffle_groups", "the output (C_out)")
        if shuffle_groups in (1, c_out):  # the identity permutation
            shuffle_groups = None
    geo = conv_geometry_cached(tuple(x.shape[-2:]), tuple(weight.shape[-2:]), stride, padding,
                               dilation)

    if shuffle_groups is not None and groups == 1:
        weight = permute_output_channels(weight, shuffle_groups)
        bias = None if bias is None else permute_output_channels(bias, shuffle_groups)
        shuffle_groups = None
    if _gemm_serves(x, weight, bias, geo):
        from fastblocks.kernels.grouped_conv import grouped_conv1x1_forward
        cl = is_channels_last(x) or is_channels_last(weight)
        y = grouped_conv1x1_forward(x.contiguous(memory_format=memory_format(cl)),
                                    weight.contiguous(), None if bias is None else bias.contiguous(),
                                    groups, code, shuffle_groups or 1, cl)
        return y.squeeze(0) if unbatched else y
    # CPU: oneDNN adds the bias inside the convolution, before its one rounding (moving it to
    # the epilogue rounds the bias-free sum first: 2x eager's fp16 error, measured in the
    # fuzz). CUDA: PyTorch adds a conv's bias in a pass of its own, so the epilogue takes it.
    bias_in_epilogue = bias is not None and not x.is_cpu
    z = F.conv2d(x, weight, None if bias_in_epilogue else bias, stride, padding, dilation, groups)
    if shuffle_groups is None and not bias_in_epilogue:
        if code == 0:
            y = z
        elif x.is_cpu and plain_eager(z) and get_backend() == "auto":
            # nothing to fuse: ATen's activation, in place on the fresh output in inference,
            # with its C++ autograd node in training (ResNeXt-50's grouped 3x3 + ReLU, 2-core
            # EPYC VM, 1 thread, fp32, batch 1 fwd: through our activation op 0.87-1.61x eager,
            # 4 of 14 below 1.0; the same work as eager's, one allocation fewer, is never
            # behind it but for the ~6 us of argument checks)
            y = _act_reference(z, code) if needs_grad(z) else activate_(z, code)
        else:
            y = apply_activation(z, activation)
    else:
        y = shuffle_epilogue(z, None, bias if bias_in_epilogue else None, shuffle_groups or 1, code)
    return y.squeeze(0) if unbatched else y
