"""Convolution -> BatchNorm -> activation, for inference (BN folded) and training (batch stats).

Two public functions, the seam between ``fastblocks.optimize`` (which swaps conv-BN-act chains
into models through ``fastblocks.nn.ConvBNAct``) and this op family:

- ``conv_bias_act``: the inference chain once BN is folded into the conv's weight and bias,
  ``act(conv2d(x, weight, bias))`` in one pass over the output. Registered as
  ``fastblocks::conv_bias_act``. On CPU it runs oneDNN's convolution with the bias and the
  activation as post-ops of the same primitive, on weights packed once per (tensor, version)
  (``_mkldnn_conv``: what inductor's freezing does), except 1x1 convolutions under 8 M
  multiply-adds, where ATen's GEMM plus an in-place activation costs less per call
  (``_small_pointwise``); where oneDNN cannot serve (float64,
  float16/bfloat16 without native CPU support) ATen's convolution and an in-place activation.
  Depthwise convolutions (groups == C_in, weight (C_in*m, 1, kh, kw)) go to
  ``depthwise_conv2d``'s fused kernel. With the ``triton`` backend (CUDA tensors, ``auto``
  included; CPU tensors only when ``triton`` is selected, in the interpreter) every other
  float16/bfloat16/float32 convolution runs kernels/conv_gemm.py: a GEMM / implicit GEMM
  with bias and activation in its epilogue (float32 in TF32 when cuDNN's flag allows it).
- ``conv_bn_act``: the whole chain with ``nn.BatchNorm2d``'s semantics. training=True runs
  ``fastblocks::conv_bn_act_train``: ATen's convolution, then batch statistics (fp32
  accumulation for every dtype), normalisation and the activation: fused kernels
  (``bn_act_train_forward/backward`` of fastblocks._C on CPU, kernels/conv_bn_act.py in
  Triton) or, on CPU under ``auto`` (faster there, see ``_train_kernels``) and for the
  ``torch`` backend, one ATen batch-norm call with the activation applied in place on its
  output; the running statistics are updated as ``F.batch_norm`` does (unbiased variance). Its backward keeps only x and the conv
  output z (plus per-channel mean and 1/std) and recomputes the normalised pre-activation, so
  the chain stores one activation map fewer than eager (which keeps z, BN's output and, for
  relu, the activation's output). training=False folds BN and runs ``conv_bias_act``.

On CUDA tensors (csrc/cuda/conv_bn_act.cu, bound in csrc/cuda/conv_bn_act.cpp):
- training, ``cuda`` backend: ``bn_act_train_forward/backward`` of fastblocks._C around
  ATen's (cuDNN's) convolution: per-channel shifted sums in fp32 (fp64 for fp64) over many
  blocks per channel, a deterministic second pass adding the partials in order (no atomics),
  one fused normalisation + activation pass; the backward recomputes BN's output from z.
  Under ``auto`` the Triton kernels come first (the prior order of _auto_order.json until a
  GPU measurement is committed).
- inference, ``cuda`` backend (or ``auto`` where it resolves to cuda): cuDNN's convolution
  without its bias, then ``fastblocks_C.bias_act_``: bias + activation in one in-place pass
  (ATen adds a cuDNN convolution's bias in a pass of its own, then runs the activation).
Status: the CUDA kernels are compile-checked (nvcc, sm_90) and run on the CPU under the CUDA
emulation (tests/test_conv_bn_act_cuda_emu.py, every kernel, both layouts, fp32/fp16/bf16/
fp64); they have NOT run on a GPU, and nothing about their speed is measured yet. The
binding is syntax-checked against PyTorch's headers only.

Measured (the shared 2-core AMD EPYC dev VM at load 5-10, torch 2.13, fp32, eval,
``python -m fastblocks.bench.conv_bn_act_cpu --threads 1 --stat p10 --budget 1``: providers
interleaved call by call in rotating order, glibc malloc reusing freed memory), over the 30
conv-BN-act layers of ResNet-50, MobileNetV2 and EfficientNet-B0
(bench/results/cpu-amd-epyc-1t/conv_bn_act-eval-*.json). channels_last, batch 1: 1.53x eager
and 1.36x torch.compile with freezing (geomean; no layer below 1.0x against either), compile
itself 1.13x eager; batch 32: 1.26x eager, 1.02x compile (3 layers below 1.0x eager, the
480->80 1x1 projection at 0.71x; 13 below compile, 8 of them at 0.55-0.95x, most within this
VM's spread). The fusion bound (eager over
the faster bare convolution, ATen's or the packed oneDNN one, without BN and activation) is
1.77x at batch 1 and 1.41x at batch 32: fusing BN and the activation removes only their
passes, and SiLU's arithmetic stays, so the issue's 1.5x over eager is out of reach of any
fusion on these convolutions at batch 32 (fastblocks runs at 0.87-0.90x of the bare
convolution's speed, the rest being the activation's own work and ~10 us per call). NCHW, 1
thread: 1.16x eager and 1.29x compile at batch 1 (bound 1.29x; 3 layers at 0.93-0.97x eager,
the large 1x1s, which stay on ATen's GEMM convolution for exactness: _nchw_through_packed),
1.11x and 1.05x at batch 32 (bound 1.21x; 12 layers below compile, 6 at 0.73-0.96x).
Those NCHW figures predate the exact NCHW route (_nchw_through_packed): re-run after it at
batch 1, 1 thread (``--layout nchw --batch 1 --no-compile --no-bound --budget 0.3``, same VM
at load ~2-4, not committed to results/): 1.12x eager, 2 layers below 1.0x (256->256 3x3 at
14x14 0.96x, 512->512 3x3 at 7x7 0.99x).
"""
from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import capture, get_backend, resolve, restored
from . import _mkldnn_conv
from ._activation_codes import _INPLACE, activate_, activation_code
from ._conv_args import conv_geometry, conv_geometry_cached
from ._fastpath import direct_autograd, needs_grad, plain_eager
from ._layout import empty, is_channels_last, memory_format
from ._validate import check_ndim, check_same, check_tensor
from .activation import reference_backward as _act_backward, reference_forward as _act_forward
from .depthwise import depthwise_conv2d

__all__ = ["conv_bias_act", "conv_bn_act", "reference_conv_bias_act", "reference_conv_bn_act"]

_NONE, _RELU, _RELU6 = 0, activation_code("relu"), activation_code("relu6")
_FROM_OUTPUT = (_NONE, _RELU, _RELU6)  # activations whose backward the output gives exactly


# ---- eager references ------------------------------------------------------------------------

def reference_conv_bias_act(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                            activation=None):
    """The eager composition: F.conv2d, then the activation."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    code = activation_code(activation)
    return y if code == 0 else _act_forward(y, code)


def reference_conv_bn_act(x, weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                          *, training, momentum=0.1, eps=1e-5, stride=1, padding=0, dilation=1,
                          groups=1, activation="relu"):
    """The eager composition: F.conv2d, F.batch_norm, then the activation."""
    y = F.conv2d(x, weight, conv_bias, stride, padding, dilation, groups)
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    code = activation_code(activation)
    return y if code == 0 else _act_forward(y, code)


def _out_channels_last(x: Tensor, weight: Tensor) -> bool:
    """PyTorch's rule for a convolution's output: channels_last if the input or the weight is."""
    return is_channels_last(x) or is_channels_last(weight)


# ---- inference: conv + bias + activation -----------------------------------------------------

def _conv_bias_act_impl(x, weight, bias, stride, padding, dilation, groups, act):
    if _triton_conv_selected(x, weight, groups):
        return importlib.import_module("fastblocks.kernels.conv_gemm").conv_bias_act_forward(
            x, weight, bias, stride, padding, dilation, groups, act, _out_channels_last(x, weight))
    # oneDNN's fused primitive for channels_last outputs only: on NCHW it runs on the plain
    # weight (a packed one would make it write NHWC) and measured 0.60-0.99x eager on 20 of the
    # 30 batch-1 layers (1 thread, the EPYC VM), where ATen's NCHW convolution with the bias
    # and an in-place activation drops only BN's pass and never loses
    if _out_channels_last(x, weight) and _mkldnn_conv.can_serve(x, weight) \
            and get_backend() != "torch" and not _small_pointwise(x, weight, stride):
        x = x.contiguous(memory_format=torch.channels_last)
        return _mkldnn_conv.conv_pointwise(x, weight, bias, stride, padding, dilation, groups,
                                           act)
    if _nchw_through_packed(x, weight, stride, padding, dilation, groups):
        return _mkldnn_conv.conv_nchw(x, weight, bias, stride, padding, dilation, groups, act)
    if x.device.type == "cuda" and _cuda_epilogue(x.device):
        # cuDNN's convolution without its bias, then bias + activation in one pass of ours
        # (ATen adds a cuDNN convolution's bias in a pass of its own, then the activation)
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        return torch.ops.fastblocks_C.bias_act_(y, bias, act)
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return activate_(y, act)


# oneDNN's fused primitive costs ~25 us more per call than ATen's convolution, which for a 1x1
# kernel on channels_last is one GEMM with the bias (then an in-place activation). Interleaved
# medians of 60 calls, batch 1, fp32, relu6, 1 thread, the 2-core EPYC VM
# (bench/cpu_probes/pointwise_aten_vs_onednn.py): oneDNN/ATen time 2.3x at 64->64 7x7 (0.2 M multiply-adds), 1.2x at
# 20x20 (1.6 M), 1.05x at 40x40 (6.6 M), 0.93x at 56x56 (12.8 M); 192->32: 1.06x at 28x28
# (4.8 M), 0.93x at 40x40 (9.8 M); 576->96: 1.0x at 14x14 (10.8 M), 0.95x at 20x20 (22 M).
# kxk kernels stay with oneDNN at every size (ATen's im2col path measured 1.08-1.4x slower).
_POINTWISE_ATEN_MAX_MACS = 8_000_000


# NCHW in and out, a weight with at least twice as many elements as x and the output together:
# ATen's NCHW oneDNN convolution on a weight packed once (_mkldnn_conv.conv_nchw; ATen's NCHW
# convolution re-lays such a weight out on every call). The numbers below were measured for the
# earlier route (x to channels_last, the channels_last packed primitive, back to NCHW), given up
# for exactness (_nchw_through_packed). The route now, interleaved p10 of 30 calls, fp32, relu,
# 1 thread, the shared 2-core EPYC VM at load ~2-4, us (ATen conv + relu_ / this / the earlier
# route): 512->512 3x3 at 7x7 b1 3187 / 3446 / 2135; 256->256 3x3 at 14x14 2260 / 2315 / 2107;
# 512->2048 1x1 at 7x7 1848 / 1589 / 1403; 320->1280 1x1 at 7x7 681 / 588 / 540. So 1x1 only. Interleaved p10, fp32, 1 thread, the
# shared 2-core EPYC VM (/tmp probe of the 30 layers of shapes.CONV_BN_ACT_ALL, A = ATen NCHW
# conv + in-place act, B = this; A/B): batch 1, ratio >= 2: 512->512 3x3 at 7x7 10.5x,
# 256->256 3x3 at 14x14 1.14x, 512->2048 1x1 at 7x7 1.15x, 320->1280 1x1 at 7x7 1.17-1.18x,
# 1152->192 1.10x, 160->960 1.00x; ratio < 1: 0.78-1.01x (112->672 at 14x14 0.82x, 576->96
# 0.78x); batch 32 (every ratio < 2): 0.53-1.01x, so the rule leaves them with ATen. The 1x1
# gains at 1 thread are given up for exactness (_nchw_through_packed says why).
_NCHW_PACKED_MIN_RATIO = 2


def _nchw_through_packed(x: Tensor, weight: Tensor, stride, padding, dilation,
                         groups: int) -> bool:
    """The rule above, and only where ATen itself would run this NCHW convolution through
    oneDNN. Where ATen picks its GEMM convolution instead (Slow2d: 1x1 kernels, stride 1, batch
    under 16, one thread), oneDNN's direct 1x1 accumulates long input-channel sums less exactly:
    max error vs float64 over random fp32 inputs, 1 thread (inception_v3's 1x1 layers at 75 px,
    batch 2, the shared 2-core EPYC VM), 1280->320 ATen 2.6e-7 vs packed 8.4e-7 relative,
    2048->448 3.4e-7 vs 6.6e-7; through inception_v3's 94 chains that put the output 2.0x past
    eager's own error. Where ATen runs oneDNN too (kxk kernels; 1x1 with 2 threads), these run
    ATen's own NCHW oneDNN primitive on a weight packed once for it (``_mkldnn_conv.conv_nchw``),
    not the channels_last packed one through a layout copy: oneDNN's channels_last convolutions
    accumulate less exactly than its NCHW ones. Per-layer max error vs float64 over
    inception_v3's 94 conv-BN chains on the float64 model's own activations (75 px, batch 2,
    the shared 2-core EPYC VM), as a ratio to eager's NCHW conv + BN, geomean (max): 2 threads,
    channels_last packed 2.19x (6.0x), ATen's own channels_last 1.98x, NCHW with the folded
    weight 0.92x (1.42x); 1 thread 1.94x, 1.52x, 0.92x. The optimized inception_v3 run NCHW (its
    layout hook removed), 2 threads: output error 29.4 through the channels_last copy, 17.4
    through conv_nchw, eager 13.3 (the limit 26.5)."""
    if not _mkldnn_conv.can_serve(x, weight) or get_backend() == "torch" \
            or not x.is_contiguous() or weight.shape[-1] != 1 or weight.shape[-2] != 1:
        return False  # kxk: ATen's own call was as fast (numbers above)
    out = _out_shape(x, weight, stride, padding, dilation)
    y_numel = out[0] * out[1] * out[2] * out[3]
    if weight.numel() < _NCHW_PACKED_MIN_RATIO * (x.numel() + y_numel):
        return False
    # ATen's own choice (Convolution.cpp's use_mkldnn), asked after the cheap test: ~5 us
    backend = torch._C._select_conv_backend(x, weight, None, list(stride), list(padding),
                                            list(dilation), False, [0, 0], groups)
    return backend == torch._C._ConvBackend.Mkldnn


def _small_pointwise(x: Tensor, weight: Tensor, stride) -> bool:
    """A 1x1 convolution small enough for ATen's GEMM to beat oneDNN's per-call cost."""
    if weight.shape[-1] != 1 or weight.shape[-2] != 1:
        return False
    n, c_in, h, w = x.shape
    macs = n * -(-h // stride[0]) * -(-w // stride[1]) * weight.shape[0] * weight.shape[1]
    return macs < _POINTWISE_ATEN_MAX_MACS


def _triton_conv_selected(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the Triton implicit-GEMM convolution (kernels/conv_gemm.py) serves this call:
    CUDA tensors whose backend resolves to triton (``auto`` included, by the measured order),
    CPU tensors only when ``triton`` is selected explicitly (the interpreter, for tests; CPU
    ``auto`` stays on oneDNN/ATen). float64 stays on ATen (the kernel accumulates in fp32),
    and so do more than 65535 groups (the kernel's second grid axis)."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or weight.dtype != x.dtype \
            or groups > 65535:
        return False
    if x.device.type != "cuda" and get_backend() != "triton":
        return False
    return resolve("conv_bn_act", x.device) == "triton"


def _cuda_epilogue(device: torch.device) -> bool:
    """Whether conv_bias_act's bias + activation run in fastblocks_C.bias_act_ (the cuda
    backend, or auto where it resolves to cuda) on this CUDA device."""
    if get_backend() not in ("auto", "cuda") or not hasattr(torch.ops.fastblocks_C, "bias_act_"):
        return False
    return resolve("conv_bn_act", device, "bias_act_") == "cuda"


@torch.library.custom_op("fastblocks::conv_bias_act", mutates_args=())
def _conv_bias_act_op(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
                      padding: list[int], dilation: list[int], groups: int, act: int) -> Tensor:
    return _conv_bias_act_impl(x, weight, bias, stride, padding, dilation, groups, act)


def _out_shape(x, weight, stride, padding, dilation):
    hw = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1)
          // stride[i] + 1 for i in range(2)]
    return (x.shape[0], weight.shape[0], *hw)


@_conv_bias_act_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, act):
    return empty(_out_shape(x, weight, stride, padding, dilation), x, _out_channels_last(x, weight))


def _cba_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, act = inputs
    from_output = act in _FROM_OUTPUT
    ctx.save_for_backward(x, weight, None if from_output else bias,
                          output if act and from_output else None)
    ctx.args = (stride, padding, dilation, groups, act)
    ctx.has_bias = bias is not None


def conv_act_backward(ctx, grad, x, weight, y, recompute_pre_activation):
    """Gradients of act(conv(x, weight) + bias [+ other]) from the output's gradient, for the
    autograd of conv_bias_act and conv_bias_add_act (ctx.args = stride, padding, dilation,
    groups, act). y is the saved output (relu, relu6) or None, in which case
    recompute_pre_activation() gives the pre-activation. Returns (grad_x, grad_weight,
    grad_bias, grad of the pre-activation), the last being also the gradient of an added
    tensor."""
    stride, padding, dilation, groups, act = ctx.args
    if act:
        if y is None:  # recompute the pre-activation (hardswish, hardsigmoid, silu)
            y = recompute_pre_activation()
        grad = _act_backward(grad, y, act)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(stride),
        list(padding), list(dilation), False, [0, 0], groups, mask)
    return gx, gw, gb, grad


def _make_cba_backward(forward):
    def backward(ctx, grad):
        x, weight, bias, y = ctx.saved_tensors
        gx, gw, gb, _ = conv_act_backward(
            ctx, grad, x, weight, y, lambda: forward(x, weight, bias, *ctx.args[:4], 0))
        return gx, gw, gb, None, None, None, None, None
    return backward


torch.library.register_autograd("fastblocks::conv_bias_act", _make_cba_backward(_conv_bias_act_op),
                                setup_context=_cba_setup_context)
_conv_bias_act_direct = direct_autograd("ConvBiasActFunction", _conv_bias_act_impl,
                                        _cba_setup_context, _make_cba_backward(_conv_bias_act_impl))
for _device, _dtype in (("cpu", torch.bfloat16), ("cuda", torch.float16)):
    torch.library.register_autocast("fastblocks::conv_bias_act", _device, _dtype)


# ---- training: conv + batch statistics + activation ------------------------------------------

def _train_impl(x, weight, conv_bias, bn_weight, bn_bias, eps, stride, padding, dilation,
                groups, act):
    """(y, z, mean, invstd): z the conv output, mean/invstd (float32, or float64 for float64)
    its per-channel batch statistics (biased variance), y = act(BN(z))."""
    z = F.conv2d(x, weight, conv_bias, stride, padding, dilation, groups)
    # ATen's batch norm: statistics accumulated in float32 (opmath) in one call with the
    # normalisation; the activation then runs in place on its fresh output. The affine
    # parameters go in as float32 (ATen's mixed-precision path) so the saved mean and 1/std
    # stay float32 for a float16/bfloat16 z: with parameters in z's dtype ATen rounds them
    # to it, and the running statistics and the recomputation in backward would lose bits.
    w32, b32 = _affine32(bn_weight, bn_bias, z)
    kernels = _train_kernels(z.device)
    if kernels is not None:  # fused kernels: statistics, then normalisation + activation
        cl = is_channels_last(z)
        z = z.contiguous(memory_format=memory_format(cl))
        y, mean, invstd = kernels.bn_act_train_forward(z, w32, b32, eps, act, cl)
        return y, z, mean, invstd
    y, mean, invstd = torch.ops.aten._native_batch_norm_legit.no_stats(z, w32, b32, True, 0.0, eps)
    return activate_(y, act), z, mean, invstd


def _train_kernels(device: torch.device):
    """The module holding bn_act_train_forward/backward for the selected backend on `device`
    (torch.ops.fastblocks_C or fastblocks.kernels.conv_bn_act), or None for the torch backend
    or an extension built before this family existed: then the ATen composition runs (ATen's
    batch norm, the activation in place; in backward the recomputed BN output through ATen's
    batch-norm backward)."""
    name = get_backend()
    if name != "triton" and not _c_schemas():
        return None
    if name == "auto" and device.type == "cpu":
        # fp32 channels_last fwd+bwd, batch 8, 1 thread (the shared EPYC VM): fastblocks._C's
        # kernels ran 0.34-0.81x eager, the ATen composition 0.75-1.00x (both keep 0.54-0.67x
        # of eager's saved activations); auto takes the faster one until the C++ loops are
        # vectorized. backend("cpu") still selects them.
        return None
    backend = resolve("conv_bn_act", device, "bn_act_train_forward")
    if backend == "triton":
        return importlib.import_module("fastblocks.kernels.conv_bn_act")
    return torch.ops.fastblocks_C if backend in ("cpu", "cuda") else None


@functools.cache
def _c_schemas() -> bool:
    return all(hasattr(torch.ops.fastblocks_C, name)
               for name in ("bn_act_train_forward", "bn_act_train_backward"))


def _stat_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _affine32(bn_weight, bn_bias, z):
    """BN's weight and bias in the statistics' dtype (ones/zeros when absent)."""
    dtype, c = _stat_dtype(z), z.shape[1]
    w = z.new_ones(c, dtype=dtype) if bn_weight is None else bn_weight.to(dtype)
    b = z.new_zeros(c, dtype=dtype) if bn_bias is None else bn_bias.to(dtype)
    return w, b


@torch.library.custom_op("fastblocks::conv_bn_act_train", mutates_args=())
def _train_op(x: Tensor, weight: Tensor, conv_bias: Tensor | None, bn_weight: Tensor | None,
              bn_bias: Tensor | None, eps: float, stride: list[int], padding: list[int],
              dilation: list[int], groups: int, act: int
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _train_impl(x, weight, conv_bias, bn_weight, bn_bias, eps, stride, padding, dilation,
                       groups, act)


@_train_op.register_fake
def _(x, weight, conv_bias, bn_weight, bn_bias, eps, stride, padding, dilation, groups, act):
    y = empty(_out_shape(x, weight, stride, padding, dilation), x, _out_channels_last(x, weight))
    stat = _stat_dtype(x)
    c = weight.shape[0]
    return y, torch.empty_like(y), x.new_empty((c,), dtype=stat), x.new_empty((c,), dtype=stat)


def _train_setup_context(ctx, inputs, output):
    x, weight, conv_bias, bn_weight, bn_bias, eps, stride, padding, dilation, groups, act = inputs
    y, z, mean, invstd = output
    # the memory saving: x and z only; BN's output and the activation's input are recomputed
    ctx.save_for_backward(x, weight, z, bn_weight, bn_bias, mean, invstd)
    ctx.args = (eps, stride, padding, dilation, groups, act)
    ctx.has = (conv_bias is not None, bn_weight is not None, bn_bias is not None)
    ctx.set_materialize_grads(False)
    capture(ctx)


def _train_backward(ctx, grad, bn_act_backward):
    x, weight, z, bn_weight, bn_bias, mean, invstd = ctx.saved_tensors
    eps, stride, padding, dilation, groups, act = ctx.args
    has_cb, has_bw, has_bb = ctx.has
    n = ctx.needs_input_grad
    if grad is None:
        return (None,) * 11
    w32, b32 = _affine32(bn_weight, bn_bias, z)
    need_z = n[0] or n[1] or (has_cb and n[2])
    with restored(ctx):
        gz, gbw, gbb = bn_act_backward(grad, z, w32, b32, mean, invstd, eps, act, need_z)
    gbw = gbw.to(bn_weight.dtype) if has_bw and n[3] else None
    gbb = gbb.to(bn_bias.dtype) if has_bb and n[4] else None
    gx = gw = gcb = None
    if need_z:
        gx, gw, gcb = torch.ops.aten.convolution_backward(
            gz, x, weight, [weight.shape[0]] if has_cb else None, list(stride), list(padding),
            list(dilation), False, [0, 0], groups, [n[0], n[1], has_cb and n[2]])
    return gx, gw, gcb, gbw, gbb, None, None, None, None, None, None


def _make_train_backward(bn_act_backward):
    def backward(ctx, grad, _gz, _gmean, _ginvstd):
        return _train_backward(ctx, grad, bn_act_backward)
    return backward


def _bn_act_backward_impl(grad, z, w32, b32, mean, invstd, eps, act, need_z):
    """(grad_z, grad_bn_weight, grad_bn_bias) in the statistics' dtype; grad_z is an empty
    placeholder when not need_z."""
    kernels = _train_kernels(z.device)
    if kernels is not None:
        gz, gw, gb = kernels.bn_act_train_backward(
            grad, z, w32, b32, mean, invstd, act, is_channels_last(z), [need_z, True, True])
    else:
        gz, gw, gb = _bn_act_backward_aten(grad, z, w32, b32, mean, invstd, eps, act, need_z)
    return gz if need_z else z.new_empty(0), gw, gb


@torch.library.custom_op("fastblocks::bn_act_train_backward", mutates_args=())
def _bn_act_backward_op(grad: Tensor, z: Tensor, w32: Tensor, b32: Tensor, mean: Tensor,
                        invstd: Tensor, eps: float, act: int, need_z: bool
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm (batch statistics) + activation backward from the saved conv output z."""
    return _bn_act_backward_impl(grad, z, w32, b32, mean, invstd, eps, act, need_z)


@_bn_act_backward_op.register_fake
def _(grad, z, w32, b32, mean, invstd, eps, act, need_z):
    gz = empty(z.shape, z, is_channels_last(z)) if need_z else z.new_empty(0)
    return gz, torch.empty_like(w32), torch.empty_like(w32)


def _bn_act_backward_aten(grad, z, w32, b32, mean, invstd, eps, act, need_z):
    """bn_act_train_backward's ATen composition (the torch backend)."""
    if act:
        # BN's output as ATen's forward computed it: z * alpha + beta with alpha = invstd *
        # weight, beta = bias - mean * alpha, in float32 (opmath), a multiply then an add,
        # rounded to z's dtype
        shape = (1, -1, 1, 1)
        scale = invstd * w32
        shift = b32 - mean * scale
        pre = (z * scale.view(shape)).add_(shift.view(shape))
        grad = _act_backward(grad, pre.to(z.dtype), act)
        del pre
    return torch.ops.aten.native_batch_norm_backward(
        grad, z, w32, None, None, mean, invstd, True, eps, [need_z, True, True])


torch.library.register_autograd("fastblocks::conv_bn_act_train",
                                _make_train_backward(_bn_act_backward_op),
                                setup_context=_train_setup_context)
_train_direct = direct_autograd("ConvBNActTrainFunction", _train_impl, _train_setup_context,
                                _make_train_backward(_bn_act_backward_impl))
for _device, _dtype in (("cpu", torch.bfloat16), ("cuda", torch.float16)):
    torch.library.register_autocast("fastblocks::conv_bn_act_train", _device, _dtype)


def _update_running_stats(running_mean, running_var, mean, invstd, eps, z, count, momentum):
    """running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance
    (as F.batch_norm); in place, under no_grad, like BatchNorm's buffers.

    The batch variance is recovered from the saved 1/std (var = invstd**-2 - eps) where that is
    well conditioned: its relative error is about 2e-7 * (1 + eps / var) in float32, so for
    every channel with var > 16 * eps it is as good as a float32 sum. Where the variance is
    below that (a few values per channel at 1x1 resolution in a small batch), invstd**-2 - eps
    cancels and the running variance drifted enough that a tiny HF MobileNetV2 evaluated after
    two training steps landed 2.5x past eager's own float32 error (tests/test_optimize_hf.py):
    there it is taken from the conv output z itself (one more read of z). On CUDA that read
    is always made (deciding per call would cost a device-to-host sync per layer), and so it is
    under torch.compile (a data-dependent branch breaks the graph); in eager on CPU only
    when a channel needs it: torch.var over z took 27% of a ShuffleNet v1 training step's CPU
    time (the shuffle-fuse profile, 2-core EPYC VM)."""
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is None:
            return
        if count <= 1:
            var = mean.new_zeros(mean.shape)
        else:
            var = None
            if z.device.type == "cpu" and not torch.compiler.is_compiling():
                recovered = invstd.double().pow(-2).sub_(eps)
                if bool((recovered > 16 * eps).all()):
                    var = recovered.mul_(count / (count - 1))
            if var is None:
                zz = z.detach()
                if zz.dtype in (torch.float16, torch.bfloat16):
                    zz = zz.float()  # eager accumulates the statistics of low precision in float32
                var = torch.var(zz, dim=(0, 2, 3), correction=1)
        running_var.mul_(1.0 - momentum).add_(var.to(running_var.dtype), alpha=momentum)


# ---- public functions ------------------------------------------------------------------------

def _direct_ok(x: Tensor, *tensors) -> bool:
    """Plain eager (_fastpath) and no autocast: the registered op's autocast rule is needed."""
    return plain_eager(x, *tensors) and not torch.is_autocast_enabled(x.device.type)


def _is_depthwise(x: Tensor, weight: Tensor, groups: int) -> bool:
    return groups > 1 and weight.shape[1] == 1 and x.shape[-3] == groups


def _check_same(x: Tensor, x_arg: str, t: Tensor, arg: str) -> None:
    """check_same, but under autocast only the device: the registered ops' autocast rule casts
    mixed dtypes as F.conv2d does (e.g. a bfloat16 activation with float32 parameters)."""
    if torch.is_autocast_enabled(x.device.type):
        if t.device != x.device:
            raise ValueError(f"{arg} is on {t.device} but {x_arg} is on {x.device}; they must "
                             "share a device")
        return
    check_same(x, x_arg, t, arg)


def _check_channel_vector(t, arg: str, c: int, x: Tensor, dtype_free: bool = False) -> None:
    if t is None:
        return
    check_tensor(t, arg)
    if t.device != x.device:
        raise ValueError(f"{arg} is on {t.device} but x is on {x.device}; they must share a device")
    if not dtype_free:
        _check_same(x, "x", t, arg)
    if tuple(t.shape) != (c,):
        raise ValueError(f"{arg} must have shape ({c},), got {tuple(t.shape)}")


def _prepare(x, weight, bias, stride, padding, dilation, groups):
    """Validate; return (x 4-d, unbatched, stride, padding, dilation) with the padding resolved
    to symmetric ints (an asymmetric 'same' is padded into x, as F.conv2d does)."""
    check_tensor(x, "x")
    check_tensor(weight, "weight")
    _check_same(x, "x", weight, "weight")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    check_ndim(x, 4, "x", "(N, C_in, H, W) or 3-d (C_in, H, W)")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c_in = x.shape[1]
    if c_in % groups or weight.dim() != 4 or weight.shape[1] * groups != c_in \
            or weight.shape[0] == 0 or weight.shape[0] % groups:
        raise ValueError(f"weight must have shape (C_out, C_in / groups, kh, kw) with C_in = {c_in}, "
                         f"groups = {groups} and C_out divisible by groups, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(bias, "bias")
        _check_same(x, "x", bias, "bias")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    kernel = tuple(weight.shape[-2:])
    # (dynamo warns about tracing through the lru_cache of conv_geometry_cached)
    geometry = conv_geometry if torch.compiler.is_compiling() else conv_geometry_cached
    geo = geometry(tuple(x.shape[-2:]), kernel, stride, padding, dilation)
    pad = list(geo.padding)
    if padding == "same":
        extra = [d * (k - 1) - 2 * p for d, k, p in zip(geo.dilation, kernel, geo.padding)]
        if any(extra):  # even dilated kernel: the odd row/column goes bottom/right (F.conv2d)
            x = F.pad(x, (0, extra[1], 0, extra[0]))
    return x, unbatched, list(geo.stride), pad, list(geo.dilation)


def conv_bias_act(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                  dilation=1, groups: int = 1, activation: str | None = None) -> Tensor:
    """``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups))`` in one pass.

    Args:
        x: (N, C_in, H, W) or (C_in, H, W); float16/bfloat16/float32/float64; NCHW or
            channels_last (the output is channels_last if x or weight is, as F.conv2d).
        weight: (C_out, C_in / groups, kh, kw), x's dtype and device. bias: (C_out,) or None.
        stride, dilation: int or pair, positive; padding: int, pair, "same" or "valid".
        groups: positive int dividing C_in and C_out.
        activation: None/"none", "relu", "relu6", "hardswish", "hardsigmoid" or "silu".

    Returns (N, C_out, OH, OW). Raises TypeError/ValueError naming the bad argument.
    On CPU: oneDNN convolution with bias and activation as post-ops (module docstring).
    """
    code = activation_code(activation)
    if isinstance(x, Tensor) and isinstance(weight, Tensor) and x.dim() in (3, 4) \
            and weight.dim() == 4 and _is_depthwise(x, weight, groups):
        return depthwise_conv2d(x, weight, bias, stride, padding, dilation, activation)
    x, unbatched, stride, padding, dilation = _prepare(x, weight, bias, stride, padding,
                                                       dilation, groups)
    args = (x, weight, bias, stride, padding, dilation, groups, code)
    if torch.compiler.is_compiling() and x.device.type == "cpu":
        # plain ATen ops for inductor: with freezing it folds the constants and fuses the conv
        # with its activation into oneDNN's post-op primitive on channels_last itself, where
        # our op is opaque to it (zoo MobileNetV2 b8, 1 thread, NCHW: compile of the optimized
        # model ran 0.70x compile of the plain one through the op; bench/results models-*)
        y = activate_(F.conv2d(x, weight, bias, stride, padding, dilation, groups), code)
    elif not _direct_ok(x, weight, bias):
        y = _conv_bias_act_op(*args)
    elif needs_grad(x, weight, bias):
        y = _conv_bias_act_direct(*args)
    else:
        y = _conv_bias_act_impl(*args)
    return y.squeeze(0) if unbatched else y


def conv_bias_act_plan(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
                       dilation, groups: int, activation: str | None):
    """``conv_bias_act``'s arguments validated once for a module that calls it again and again
    with inputs like ``x`` (same shape, strides, dtype, device) and parameters like
    ``weight``/``bias``: a plan (a tuple of ints, picklable) for ``run_conv_bias_act_plan``,
    which goes straight to the kernel choice, or None where that shortcut does not apply
    (depthwise, unbatched or asymmetric "same" padding, autograd, compile, autocast: call
    ``conv_bias_act``). The caller keys the plan on x's shape, strides, dtype and device and
    the conv's geometry, and runs it only while ``conv_bias_act_plan_ok(x, weight, bias)``
    holds. Why: ``conv_bias_act``'s validation costs ~10-18 us per call (a 64->64 3x3 layer at
    8x8, batch 1, 1 thread: 121 us through it, 103 us planned, eager conv + BN + ReLU 103 us),
    which left pre-activation and DenseNet-style models (NCHW fused convs at batch 1) at
    0.95-0.99x eager on CPU (bench/results/cpu-amd-epyc-1t/zoo-cpu-b1.md)."""
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor) or x.dim() != 4 \
            or not conv_bias_act_plan_ok(x, weight, bias) or _is_depthwise(x, weight, groups):
        return None
    code = activation_code(activation)
    x4, unbatched, st, pad, dil = _prepare(x, weight, bias, stride, padding, dilation, groups)
    if x4 is not x or unbatched:
        return None
    return (tuple(st), tuple(pad), tuple(dil), groups, code)


def run_conv_bias_act_plan(plan: tuple, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv_bias_act`` for a plan of ``conv_bias_act_plan`` (its conditions hold)."""
    st, pad, dil, groups, code = plan
    return _conv_bias_act_impl(x, weight, bias, list(st), list(pad), list(dil), groups, code)


def conv_bias_act_runner(plan: tuple, x: Tensor, weight: Tensor, bias: Tensor | None):
    """``lambda t: run_conv_bias_act_plan(plan, t, weight, bias)`` for inputs ``t`` like ``x``
    (same shape, strides, dtype, device) with every choice ``_conv_bias_act_impl`` makes per
    call made once, here: the kernel (oneDNN's fused primitive or ATen's convolution), the
    layout conversion, the in-place activation and, for oneDNN, the weight packed now and held
    by the closure (``_mkldnn_conv.runner``). For a caller that holds ``weight``/``bias``
    unchanged and calls it only while ``conv_bias_act_plan_ok`` holds, the backend is the one
    selected now and ``torch.backends.mkldnn`` is as enabled as now (key the runner on them).
    Why: the per-call Python of the planned path (backend resolution, the size rule, the
    packed-weight cache lookup, argument lists) cost 14 us over the kernels it ends in, and
    ConvBNAct's own checks 36 us more (64->384 1x1 at 14x14, batch 1, 1 thread, interleaved
    p10, the shared 2-core EPYC VM at load ~8: kernels 110 us, planned path 124 us, module
    160 us, eager conv + BN + ReLU6 172 us)."""
    st, pad, dil, groups, code = plan
    st, pad, dil = list(st), list(pad), list(dil)
    if x.device.type != "cpu" or _triton_conv_selected(x, weight, groups):
        return lambda t: _conv_bias_act_impl(t, weight, bias, st, pad, dil, groups, code)
    if _out_channels_last(x, weight) and _mkldnn_conv.can_serve(x, weight) \
            and get_backend() != "torch" and not _small_pointwise(x, weight, st):
        run = _mkldnn_conv.runner(weight, bias, st, pad, dil, groups, code, x.shape)
        if x.is_contiguous(memory_format=torch.channels_last):
            return run
        return lambda t: run(t.contiguous(memory_format=torch.channels_last))
    if not _out_channels_last(x, weight) \
            and _nchw_through_packed(x, weight, st, pad, dil, groups):
        return _mkldnn_conv.runner_nchw(weight, bias, st, pad, dil, groups, code, x.shape)
    act = _INPLACE.get(code)
    conv = F.conv2d
    if act is None:
        return lambda t: conv(t, weight, bias, st, pad, dil, groups)
    return lambda t: act(conv(t, weight, bias, st, pad, dil, groups))


def conv_bias_act_plan_ok(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether a plan of ``conv_bias_act_plan`` may run now: plain eager inference."""
    return _direct_ok(x, weight, bias) and not needs_grad(x, weight, bias)


def conv_bn_act(x: Tensor, weight: Tensor, conv_bias: Tensor | None, bn_weight: Tensor | None,
                bn_bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, *, training: bool, momentum: float | None = 0.1,
                eps: float = 1e-5, stride=1, padding=0, dilation=1, groups: int = 1,
                activation: str | None = "relu",
                num_batches_tracked: Tensor | None = None) -> Tensor:
    """``act(batch_norm(conv2d(x, weight, conv_bias, ...)))`` with nn.BatchNorm2d's semantics.

    training=True normalises with the batch's statistics (biased variance, accumulated in
    float32, float64 for float64 inputs) and, when running_mean/running_var are given,
    updates them in place with ``momentum`` (the running variance with the unbiased batch
    variance), as ``F.batch_norm(training=True)`` does. ``num_batches_tracked`` (a one-element
    integer tensor, nn.BatchNorm2d's buffer), when given, is incremented by each training call
    as nn.BatchNorm2d.forward does, and ``momentum=None`` then means the cumulative average
    (factor 1 / num_batches_tracked after the increment); momentum=None with running
    statistics needs it. The
    backward keeps only x and the conv output and recomputes the rest.
    training=False folds the running statistics into the conv and runs ``conv_bias_act``.

    Shapes as ``conv_bias_act``; bn_weight, bn_bias, running_mean, running_var: (C_out,) or
    None (running statistics must be given when training=False); float dtypes, the
    running statistics of any floating dtype. Raises ValueError for a training batch with one
    value per channel (as nn.BatchNorm2d does), TypeError/ValueError naming a bad argument.

    BatchNorm: Ioffe & Szegedy (2015).
    """
    code = activation_code(activation)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if momentum is not None and (isinstance(momentum, bool)
                                 or not isinstance(momentum, (int, float))):
        raise TypeError(f"momentum must be a float or None, got {momentum!r}")
    if num_batches_tracked is not None:
        if not isinstance(num_batches_tracked, Tensor):
            raise TypeError("num_batches_tracked must be a torch.Tensor or None, got "
                            f"{type(num_batches_tracked).__name__}")
        if num_batches_tracked.numel() != 1 or num_batches_tracked.is_floating_point() \
                or num_batches_tracked.is_complex() or num_batches_tracked.dtype == torch.bool:
            raise ValueError("num_batches_tracked must be a one-element integer tensor, got "
                             f"shape {tuple(num_batches_tracked.shape)} and "
                             f"{num_batches_tracked.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    x4, unbatched, st, pad, dil = _prepare(x, weight, conv_bias, stride, padding, dilation, groups)
    c = weight.shape[0]
    _check_channel_vector(bn_weight, "bn_weight", c, x)
    _check_channel_vector(bn_bias, "bn_bias", c, x)
    _check_channel_vector(running_mean, "running_mean", c, x, dtype_free=True)
    _check_channel_vector(running_var, "running_var", c, x, dtype_free=True)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are needed when training=False")
        w, b = _fold(weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps)
        return conv_bias_act(x, w, b, stride, padding, dilation, groups, activation)
    oh_ow = _out_shape(x4, weight, st, pad, dil)
    count = oh_ow[0] * oh_ow[2] * oh_ow[3]
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size(oh_ow)}")
    momentum = _momentum_factor(momentum, num_batches_tracked, running_mean, running_var)
    if not torch.compiler.is_compiling() and x4.device.type == "cpu" and get_backend() == "auto":
        # CPU training under auto: eager's own composition. Ours keeps only z for backward and
        # recomputes BN and the activation there (less memory: MobileNetV2 batch 8 418 MB
        # peak vs eager's 601 MB), which costs time on a CPU: training steps at batch 8, 1
        # thread, ran 0.72x eager (ShuffleNet v1 g3) and 0.88x (MobileNetV2) through it
        # (`fastblocks bench models --train --quick`, the 2-core EPYC VM). The memory saving
        # is a GPU goal; backend("cpu") still selects our kernels.
        y = reference_conv_bn_act(x4, weight, conv_bias, bn_weight, bn_bias, running_mean,
                                  running_var, training=True, momentum=float(momentum), eps=eps,
                                  stride=st, padding=pad, dilation=dil, groups=groups,
                                  activation=activation)
        return y.squeeze(0) if unbatched else y
    args = (x4, weight, conv_bias, bn_weight, bn_bias, float(eps), st, pad, dil, groups, code)
    tensors = (x4, weight, conv_bias, bn_weight, bn_bias)
    if not _direct_ok(*tensors, running_mean, running_var):
        y, z, mean, invstd = _train_op(*args)
    elif needs_grad(*tensors):
        y, z, mean, invstd = _train_direct(*args)
    else:
        y, z, mean, invstd = _train_impl(*args)
    _update_running_stats(running_mean, running_var, mean, invstd, float(eps), z, count,
                          float(momentum))
    return y.squeeze(0) if unbatched else y


def _momentum_factor(momentum, num_batches_tracked, running_mean, running_var) -> float:
    """nn.BatchNorm2d.forward's exponential_average_factor for a training call, incrementing
    num_batches_tracked (in place, not recorded by autograd) when given."""
    if num_batches_tracked is not None:
        with torch.no_grad():
            num_batches_tracked.add_(1)
    if momentum is not None:
        return float(momentum)
    if num_batches_tracked is None:
        if running_mean is None and running_var is None:
            return 0.0  # nothing is averaged
        raise ValueError("momentum=None (the cumulative average) needs num_batches_tracked")
    return 1.0 / float(num_batches_tracked)


def _fold(weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps):
    """Eval-mode BN folded into the conv (float64 arithmetic, cast back; differentiable)."""
    dtype = weight.dtype
    scale = running_var.double().add(eps).rsqrt()
    if bn_weight is not None:
        scale = scale * bn_weight.double()
    shift = -running_mean.double() * scale
    if bn_bias is not None:
        shift = shift + bn_bias.double()
    if conv_bias is not None:
        shift = shift + conv_bias.double() * scale
    w = weight.double() * scale.view(-1, 1, 1, 1)
    w = w.contiguous(memory_format=torch.channels_last) if is_channels_last(weight) else w
    return w.to(dtype), shift.to(dtype)
