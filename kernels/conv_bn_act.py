"""Triton kernels of the conv_bn_act family's training path: BatchNorm with batch statistics
plus the activation, around the convolution output z (ATen's convolution, cuDNN on a GPU).
Same names and arguments as the fastblocks._C ops (csrc/cpu/conv_bn_act.cpp):

- bn_act_train_forward(z, weight, bias, eps, act, channels_last) -> (y, mean, invstd): one
  program per channel accumulates shifted sums (the channel's first value subtracted, so the
  one-pass variance does not cancel for large means) in fp32 (fp64 for fp64); then one
  elementwise pass writes y = act(z * a + b), a = invstd * weight, b = bias - mean * a.
- bn_act_train_backward(grad, z, weight, bias, mean, invstd, act, channels_last, mask):
  recomputes BN's output from z in registers (only z is kept for backward), one program per
  channel reduces sum(g) and sum(g * (z - mean)), one elementwise pass writes grad_z.

z is contiguous in NCHW or NHWC (``channels_last``); weight/bias/mean/invstd are fp32 (fp64).
Tested under TRITON_INTERPRET=1 only; NOT run or tuned on a GPU (BLOCK sizes are priors: a
per-channel program streams its channel in 1024-element tiles).
"""
import torch
import triton
import triton.language as tl

from ._activation_math import act_grad, apply_act
from ._launch import acc_dtype, flat

REDUCE_BLOCK = 1024
ELEM_BLOCK = 1024


@triton.jit
def _offsets(r, c, C, HW, CL: tl.constexpr):
    """Storage offset of element (row r = n * HW + i, channel c)."""
    if CL:
        return r * C + c
    return (r // HW) * C * HW + c * HW + (r % HW)


@triton.jit
def _channel(offs, C, HW, CL: tl.constexpr):
    """Channel of storage offset `offs`."""
    if CL:
        return offs % C
    return (offs // HW) % C


@triton.jit
def _stats_kernel(z_ptr, mean_ptr, invstd_ptr, rows, C, HW, eps, CL: tl.constexpr,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    shift = tl.load(z_ptr + _offsets(tl.zeros([], tl.int64), c, C, HW, CL)).to(ACC)
    s1 = tl.zeros([BLOCK], ACC)
    s2 = tl.zeros([BLOCK], ACC)
    for start in range(0, rows, BLOCK):
        r = start + tl.arange(0, BLOCK).to(tl.int64)
        m = r < rows
        v = tl.load(z_ptr + _offsets(r, c, C, HW, CL), mask=m, other=0.0).to(ACC) - shift
        v = tl.where(m, v, 0.0)
        s1 += v
        s2 += v * v
    m1 = tl.sum(s1, 0) / rows
    var = tl.maximum(tl.sum(s2, 0) / rows - m1 * m1, 0.0)
    tl.store(mean_ptr + c, shift + m1)
    tl.store(invstd_ptr + c, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _bn_out(z, alpha, beta, OUT_T):
    """BN's output as eager stores it: fp32 arithmetic, rounded to z's dtype."""
    return (z * alpha + beta).to(OUT_T).to(z.dtype)


@triton.jit
def _normalize_kernel(z_ptr, y_ptr, alpha_ptr, beta_ptr, n, C, HW, CL: tl.constexpr,
                      ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    c = _channel(offs, C, HW, CL)
    z = tl.load(z_ptr + offs, mask=m, other=0.0).to(ACC)
    alpha = tl.load(alpha_ptr + c, mask=m, other=0.0)
    beta = tl.load(beta_ptr + c, mask=m, other=0.0)
    y = apply_act(_bn_out(z, alpha, beta, y_ptr.dtype.element_ty), ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _grad_bn(g, z, alpha, beta, OUT_T, ACT: tl.constexpr):
    """The gradient w.r.t. BN's output at the BN output eager stores (rounded to the storage
    dtype), itself kept in fp32 (csrc/cpu/conv_bn_act.cpp says why)."""
    if ACT == 0:
        return g
    return act_grad(g, _bn_out(z, alpha, beta, OUT_T), ACT)


@triton.jit
def _grad_sums_kernel(g_ptr, z_ptr, alpha_ptr, beta_ptr, mean_ptr, sum_ptr, dot_ptr, rows, C, HW,
                      CL: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    alpha = tl.load(alpha_ptr + c)
    beta = tl.load(beta_ptr + c)
    mean = tl.load(mean_ptr + c)
    s = tl.zeros([BLOCK], ACC)
    d = tl.zeros([BLOCK], ACC)
    for start in range(0, rows, BLOCK):
        r = start + tl.arange(0, BLOCK).to(tl.int64)
        m = r < rows
        off = _offsets(r, c, C, HW, CL)
        z = tl.load(z_ptr + off, mask=m, other=0.0).to(ACC)
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(ACC)
        gb = tl.where(m, _grad_bn(g, z, alpha, beta, g_ptr.dtype.element_ty, ACT), 0.0)
        s += gb
        d += gb * (z - mean)
    tl.store(sum_ptr + c, tl.sum(s, 0))
    tl.store(dot_ptr + c, tl.sum(d, 0))


@triton.jit
def _grad_z_kernel(g_ptr, z_ptr, gz_ptr, alpha_ptr, beta_ptr, mean_ptr, k_ptr, gmean_ptr,
                   scale_ptr, n, C, HW, CL: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    c = _channel(offs, C, HW, CL)
    z = tl.load(z_ptr + offs, mask=m, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(ACC)
    alpha = tl.load(alpha_ptr + c, mask=m, other=0.0)
    beta = tl.load(beta_ptr + c, mask=m, other=0.0)
    gb = _grad_bn(g, z, alpha, beta, g_ptr.dtype.element_ty, ACT)
    mean = tl.load(mean_ptr + c, mask=m, other=0.0)
    k = tl.load(k_ptr + c, mask=m, other=0.0)
    gmean = tl.load(gmean_ptr + c, mask=m, other=0.0)
    scale = tl.load(scale_ptr + c, mask=m, other=0.0)
    gz = (gb - gmean - (z - mean) * k) * scale
    tl.store(gz_ptr + offs, gz.to(gz_ptr.dtype.element_ty), mask=m)


def _geometry(z: torch.Tensor):
    n, c, h, w = z.shape
    return n * h * w, c, h * w


def _check(z, weight, bias, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert z.dim() == 4 and z.is_contiguous(memory_format=fmt), "z contiguous in its format"
    stat = torch.float64 if z.dtype == torch.float64 else torch.float32
    assert weight.dtype == bias.dtype == stat and weight.shape == bias.shape == (z.shape[1],)


def bn_act_train_forward(z, weight, bias, eps: float, act: int, channels_last: bool):
    _check(z, weight, bias, channels_last)
    rows, c, hw = _geometry(z)
    assert rows > 1, "more than 1 value per channel needed"
    mean = torch.empty_like(weight)
    invstd = torch.empty_like(weight)
    acc = acc_dtype(z)
    _stats_kernel[(c,)](flat(z), mean, invstd, rows, c, hw, eps, CL=channels_last, ACC=acc,
                        BLOCK=REDUCE_BLOCK)
    alpha = invstd * weight
    beta = bias - mean * alpha
    y = torch.empty_like(z)
    n = z.numel()
    _normalize_kernel[(triton.cdiv(n, ELEM_BLOCK),)](
        flat(z), flat(y), alpha, beta, n, c, hw, CL=channels_last, ACT=act, ACC=acc,
        BLOCK=ELEM_BLOCK)
    return y, mean, invstd


def bn_act_train_backward(grad, z, weight, bias, mean, invstd, act: int, channels_last: bool,
                          output_mask):
    _check(z, weight, bias, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad = grad.contiguous(memory_format=fmt)
    rows, c, hw = _geometry(z)
    acc = acc_dtype(z)
    alpha = invstd * weight
    beta = bias - mean * alpha
    sum_g = torch.empty_like(weight)
    dot = torch.empty_like(weight)
    _grad_sums_kernel[(c,)](flat(grad), flat(z), alpha, beta, mean, sum_g, dot, rows, c, hw,
                            CL=channels_last, ACT=act, ACC=acc, BLOCK=REDUCE_BLOCK)
    grad_weight = dot * invstd
    gz = z.new_empty(0)
    if output_mask[0]:
        gz = torch.empty_like(z)
        k = dot * invstd * invstd / rows
        gmean = sum_g / rows
        n = z.numel()
        _grad_z_kernel[(triton.cdiv(n, ELEM_BLOCK),)](
            flat(grad), flat(z), flat(gz), alpha, beta, mean, k, gmean, alpha, n, c, hw,
            CL=channels_last, ACT=act, ACC=acc, BLOCK=ELEM_BLOCK)
    return gz, grad_weight, sum_g
