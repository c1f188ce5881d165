"""The inverted-residual block (MobileNetV2's bottleneck) as one op, for CPU inference.

``inverted_residual(x, ...)`` computes, with BatchNorm already folded into each conv:

    h = act_e(conv1x1(x, w_expand) + b_expand)            # expand (skipped when w_expand is None)
    d = act_dw(depthwise_kxk(h, w_dw, stride, padding) + b_dw)
    y = conv1x1(d, w_project) + b_project (+ x when residual)

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018 (Fig. 3b,
Table 1); the same block is MnasNet's MBConv without SE and MobileNetV3's without SE.

Why one op: eager PyTorch and inductor run the three convolutions as three kernels, so the
expanded tensor (6x the block's channels: 8x96x112x112 fp32 = 38 MB in MobileNetV2's second
block) goes to DRAM after the expand conv and comes back for the depthwise conv, and the
depthwise output once more for the project conv. On CPU (float32, the cpu/auto backend)
``fastblocks._C.inverted_residual_forward`` (csrc/cpu/inverted_residual.cpp) runs the block per
image and per band of output rows with the band's expanded rows in a per-thread buffer sized for
L2 (maps of 14x14 and below: groups of whole images, so the GEMMs stay large; with fewer images
than threads, a band per thread): the expand 1x1 conv over the band's input rows as fastblocks'
register-blocked GEMM with bias + activation in its registers
(csrc/include/fastblocks/pointwise_cpu_gemm.h, on weights packed once by ``pack_pointwise``
where the caller holds them; MKL plus a separate pass for K > 1024), the depthwise conv + bias +
activation (the depthwise family's channels_last row kernel, activation in registers), the
project 1x1 conv as the same GEMM into the output rows with bias and the residual in registers.
It reads x as channels_last (an NCHW x is copied once) and writes a channels_last output,
returned NCHW-contiguous when neither x nor any weight is channels_last (PyTorch's convolution
layout rule).

Everything else runs the eager composition ``reference_inverted_residual`` (F.conv2d and the
activations): other dtypes (float16/bfloat16/float64), CUDA tensors, the ``torch`` backend,
and every call that needs gradients. The op is inference-only: it has no backward of its own;
when autograd would record it (grad mode on and a tensor requiring grad) the public function
computes the eager composition instead, so gradients are eager's, exactly.
``fastblocks.optimize`` routes only eval-mode, no-grad CPU calls here
(optimize/rules/chain_inverted_residual.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _extension
from .._backend import get_backend, resolve
from ._activation_codes import activation_code
from ._conv_args import conv_geometry
from ._fastpath import direct_call_ok, needs_grad
from ._layout import empty, is_channels_last
from ._validate import check_ndim, check_same, check_tensor
from .activation import reference_forward as _act_forward

__all__ = ["inverted_residual", "reference_inverted_residual"]

_C_OP = "inverted_residual_forward"


def reference_inverted_residual(x: Tensor, w_expand: Tensor | None, b_expand: Tensor | None,
                                w_dw: Tensor, b_dw: Tensor | None, w_project: Tensor,
                                b_project: Tensor | None, stride, padding, dilation,
                                expand_act: int, dw_act: int, residual: bool) -> Tensor:
    """The eager composition (module docstring); activations as fastblocks codes."""
    h = x
    if w_expand is not None:
        h = F.conv2d(x, w_expand, b_expand)
        h = h if expand_act == 0 else _act_forward(h, expand_act)
    h = F.conv2d(h, w_dw, b_dw, stride, padding, dilation, w_dw.shape[0])
    h = h if dw_act == 0 else _act_forward(h, dw_act)
    y = F.conv2d(h, w_project, b_project)
    return y + x if residual else y


def _use_kernel(x: Tensor) -> bool:
    """fastblocks._C's kernel serves float32 CPU tensors under the auto and cpu backends."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or get_backend() not in ("auto", "cpu"):
        return False
    return resolve("inverted_residual", x.device, _C_OP) == "cpu"


def _out_channels_last(x: Tensor, *weights) -> bool:
    return is_channels_last(x) or any(w is not None and is_channels_last(w) for w in weights)


def _impl(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, padding, dilation,
          expand_act, dw_act, residual, packed_expand=None, packed_project=None):
    """packed_expand / packed_project: ``pack_pointwise`` of (w_expand, b_expand) / (w_project,
    b_project), or None (the kernel packs them itself, on every call)."""
    if not _use_kernel(x):
        return reference_inverted_residual(x, w_expand, b_expand, w_dw, b_dw, w_project,
                                           b_project, stride, padding, dilation, expand_act,
                                           dw_act, residual)
    y = torch.ops.fastblocks_C.inverted_residual_forward(
        x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, padding, dilation,
        expand_act, dw_act, residual, packed_expand, packed_project)
    return y if _out_channels_last(x, w_expand, w_dw, w_project) else y.contiguous()


@torch.library.custom_op("fastblocks::inverted_residual", mutates_args=())
def _ir_op(x: Tensor, w_expand: Tensor | None, b_expand: Tensor | None, w_dw: Tensor,
           b_dw: Tensor | None, w_project: Tensor, b_project: Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], expand_act: int, dw_act: int,
           residual: bool, packed_expand: Tensor | None = None,
           packed_project: Tensor | None = None) -> Tensor:
    return _impl(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, padding,
                 dilation, expand_act, dw_act, residual, packed_expand, packed_project)


# ---- packed 1x1 weights ----------------------------------------------------------------------
# The kernel's 1x1 convs are a GEMM that reads the weight as panels (pointwise_cpu_gemm.h).
# Packing a block's two weights in every call cost 1.7 ms of MobileNetV2's 57 (b8, 1 thread,
# thread CPU time, the EPYC VM; 0.3-0.44 ms a call for the 7x7 blocks' 960-channel weights)
# and runs before the kernel's threads start. A caller that holds folded weights across calls
# (optimize/rules/chain_inverted_residual.py) packs them once with pack_pointwise; under
# torch.compile with freezing, inductor folds the packing of frozen weights into a constant.

PACK_AVAILABLE = _extension.c_has_kernel("pointwise_pack", "cpu")


def can_pack(x: Tensor) -> bool:
    """Whether calls on inputs like x run the kernel, which takes packed weights."""
    return PACK_AVAILABLE and _use_kernel(x)


@torch.library.custom_op("fastblocks::pack_pointwise", mutates_args=())
def pack_pointwise(w: Tensor, b: Tensor | None) -> Tensor:
    """A float32 CPU 1x1 conv weight (N, K, 1, 1) and its bias (N,) or None packed for the
    kernel's GEMM on this CPU: a 1-d float32 tensor of ceil(N / 16) * 16 * (K + 1) values.
    Only for the kernel's packed_expand / packed_project arguments, with the same w and b."""
    return torch.ops.fastblocks_C.pointwise_pack(w, b)


@pack_pointwise.register_fake
def _(w, b):
    n16 = -(-w.shape[0] // 16) * 16
    return w.new_empty((n16 * (w.shape[1] + 1),))


def _out_shape(x, w_dw, w_project, stride, padding, dilation):
    hw = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w_dw.shape[2 + i] - 1) - 1)
          // stride[i] + 1 for i in range(2)]
    return (x.shape[0], w_project.shape[0], *hw)


@_ir_op.register_fake
def _(x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, stride, padding, dilation,
      expand_act, dw_act, residual, packed_expand=None, packed_project=None):
    return empty(_out_shape(x, w_dw, w_project, stride, padding, dilation), x,
                 _out_channels_last(x, w_expand, w_dw, w_project))


for _device, _dtype in (("cpu", torch.bfloat16), ("cuda", torch.float16)):
    torch.library.register_autocast("fastblocks::inverted_residual", _device, _dtype)


# ---- public function -------------------------------------------------------------------------

def _check_vector(t, arg: str, n: int, x: Tensor) -> None:
    if t is None:
        return
    check_tensor(t, arg)
    check_same(x, "x", t, arg)
    if tuple(t.shape) != (n,):
        raise ValueError(f"{arg} must have shape ({n},), got {tuple(t.shape)}")


def _check_weight(w: Tensor, arg: str, x: Tensor, shape: tuple, doc: str) -> None:
    check_tensor(w, arg)
    check_same(x, "x", w, arg)
    if w.dim() != 4 or any(want is not None and have != want
                           for have, want in zip(w.shape, shape)):
        raise ValueError(f"{arg} must have shape {doc}, got {tuple(w.shape)}")


def inverted_residual(x: Tensor, w_expand: Tensor | None, b_expand: Tensor | None, w_dw: Tensor,
                      b_dw: Tensor | None, w_project: Tensor, b_project: Tensor | None, *,
                      stride=1, padding=0, dilation=1, expand_activation: str | None = "relu6",
                      dw_activation: str | None = "relu6", residual: bool = False) -> Tensor:
    """MobileNetV2's inverted-residual block with BN folded, in one op (module docstring).

    Args:
        x: (N, C_in, H, W); float32 runs the fused CPU kernel, float16/bfloat16/float64 and
            CUDA tensors the eager composition. NCHW or channels_last.
        w_expand: (C_h, C_in, 1, 1) or None (expansion ratio 1: the depthwise conv reads x,
            C_h = C_in); b_expand: (C_h,) or None (must be None without w_expand).
        w_dw: (C_h, 1, kh, kw) depthwise weight; b_dw: (C_h,) or None.
        w_project: (C_out, C_h, 1, 1); b_project: (C_out,) or None. All of x's dtype/device.
        stride, padding, dilation: of the depthwise conv; int or pair (stride, dilation
            positive, padding non-negative; "same"/"valid" are not accepted).
        expand_activation, dw_activation: None/"none", "relu", "relu6", "hardswish",
            "hardsigmoid" or "silu".
        residual: add x to the output (needs C_out == C_in and an output of x's size).

    Returns (N, C_out, OH, OW), channels_last if x or a weight is, else NCHW-contiguous.
    Inference only: with autograd recording (grad mode and a tensor requiring grad) it
    computes the eager composition, whose gradients autograd then gives.
    Raises TypeError/ValueError naming the bad argument.
    """
    ea = activation_code(expand_activation, "expand_activation")
    da = activation_code(dw_activation, "dw_activation")
    check_tensor(x, "x")
    check_ndim(x, 4, "x", "(N, C_in, H, W)")
    c_in = x.shape[1]
    if w_expand is None:
        if b_expand is not None:
            raise ValueError("b_expand must be None when w_expand is None")
        c_h = c_in
    else:
        _check_weight(w_expand, "w_expand", x, (None, c_in, 1, 1), f"(C_h, {c_in}, 1, 1)")
        c_h = w_expand.shape[0]
        if c_h == 0:
            raise ValueError("w_expand must have at least one output channel")
        _check_vector(b_expand, "b_expand", c_h, x)
    _check_weight(w_dw, "w_dw", x, (c_h, 1, None, None), f"({c_h}, 1, kh, kw)")
    _check_vector(b_dw, "b_dw", c_h, x)
    _check_weight(w_project, "w_project", x, (None, c_h, 1, 1), f"(C_out, {c_h}, 1, 1)")
    if w_project.shape[0] == 0:
        raise ValueError("w_project must have at least one output channel")
    _check_vector(b_project, "b_project", w_project.shape[0], x)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair of ints, got {padding!r}")
    geo = conv_geometry(tuple(x.shape[-2:]), tuple(w_dw.shape[-2:]), stride, padding, dilation)
    st, pad, dil = list(geo.stride), list(geo.padding), list(geo.dilation)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    out_shape = _out_shape(x, w_dw, w_project, st, pad, dil)
    if residual and tuple(out_shape) != tuple(x.shape):
        raise ValueError(f"residual=True needs an output of x's shape {tuple(x.shape)}, "
                         f"got {tuple(out_shape)} (C_out == C_in and stride 1)")
    args = (x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, st, pad, dil, ea, da,
            residual)
    tensors = (x, w_expand, b_expand, w_dw, b_dw, w_project, b_project)
    if needs_grad(*tensors):
        return reference_inverted_residual(*args)
    if direct_call_ok(*tensors) and not torch.is_autocast_enabled(x.device.type):
        return _impl(*args)
    return _ir_op(*args)
