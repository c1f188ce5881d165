"""Triton kernels of the shuffle family: channel shuffle of one tensor or of the concatenation
of two, with a bias + activation epilogue, and the backward (inverse permutation through
relu/relu6's derivative, split back into the two inputs' gradients).

Memory-bound: forward reads each input element once and writes each output once (2 tensors
of traffic), backward reads grad (and y for relu/relu6) and writes the gradients. Each
program covers BLOCK consecutive *output* elements, so stores are contiguous; loads gather
from the source channels: in NHWC a pixel's C channels are read from one C-element row (one
or two cache lines for ShuffleNet's C <= 976 in fp16), in NCHW each output plane reads one
input plane, so both layouts stay coalesced except at plane/row boundaries.

Index math is int64 throughout (flat offsets of tensors past 2^31 elements). BLOCK = 1024 with
4 warps (8 elements per thread), the usual choice for a streaming copy, is the autotuner's
prior (kernels/_autotune.py); on a GPU it also tries 2048 and 4096 elements per program, per
layout and log-4 size class. NOT yet run on a GPU.
"""
import torch
import triton
import triton.language as tl

from ._activation_math import act_grad, apply_act
from ._autotune import autotune, size_class
from ._launch import acc_dtype, blocks_grid

# (BLOCK, warps): the prior first (8 elements per thread), then 8 and 16 per thread.
CONFIGS = [triton.Config({"BLOCK": 1024}, num_warps=4),
           triton.Config({"BLOCK": 2048}, num_warps=8),
           triton.Config({"BLOCK": 4096}, num_warps=8)]
KEY = ["CL", "size_class"]  # + the tensors' dtype (Triton adds it)


@autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _shuffle_forward_kernel(a_ptr, b_ptr, bias_ptr, y_ptr, total, size_class, C, HW, CA, G, K,
                            a_sn, a_sc, a_sp, b_sn, b_sc, b_sp,
                            CL: tl.constexpr, HAS_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                            ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < total
    if CL:
        q = offs // C
        o = offs % C
        n = q // HW
        p = q % HW
    else:
        n = offs // (C * HW)
        rem = offs % (C * HW)
        o = rem // HW
        p = rem % HW
    s = (o % G) * K + o // G
    in_a = s < CA
    v = tl.load(a_ptr + n * a_sn + s * a_sc + p * a_sp, mask=mask & in_a, other=0.0).to(ACC)
    if HAS_B:
        vb = tl.load(b_ptr + n * b_sn + (s - CA) * b_sc + p * b_sp, mask=mask & (s >= CA),
                     other=0.0).to(ACC)
        v = tl.where(in_a, v, vb)
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + s, mask=mask, other=0.0).to(ACC)
    v = apply_act(v, ACT)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=mask)


@autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _shuffle_backward_kernel(g_ptr, y_ptr, ga_ptr, gb_ptr, total, size_class, C, HW, SPLIT, G, K,
                             CL: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                             BLOCK: tl.constexpr):
    # offs walks the concatenated gradient (N, C, H, W) in the output layout
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < total
    if CL:
        q = offs // C
        c = offs % C
        n = q // HW
        p = q % HW
    else:
        n = offs // (C * HW)
        rem = offs % (C * HW)
        c = rem // HW
        p = rem % HW
    d = (c % K) * G + c // K
    if CL:
        src = q * C + d
    else:
        src = (n * C + d) * HW + p
    g = tl.load(g_ptr + src, mask=mask, other=0.0).to(ACC)
    if ACT != 0:
        yv = tl.load(y_ptr + src, mask=mask, other=0.0).to(ACC)
        g = act_grad(g, yv, ACT)
    in_a = c < SPLIT
    CB = C - SPLIT
    if CL:
        dst_a = q * SPLIT + c
        dst_b = q * CB + (c - SPLIT)
    else:
        dst_a = (n * SPLIT + c) * HW + p
        dst_b = (n * CB + (c - SPLIT)) * HW + p
    tl.store(ga_ptr + dst_a, g.to(ga_ptr.dtype.element_ty), mask=mask & in_a)
    tl.store(gb_ptr + dst_b, g.to(gb_ptr.dtype.element_ty), mask=mask & (c >= SPLIT))


def _strides(t: torch.Tensor, channels_last: bool) -> tuple[int, int, int]:
    """(batch, channel, pixel) strides in elements of an input laid out as
    fastblocks.ops.shuffle._reads_in_place accepts (contiguous in the format, or a channel
    slice of such a tensor)."""
    n, c, h, w = t.shape
    hw = h * w
    if not channels_last:
        return (t.stride(0) if n > 1 else c * hw), hw, 1
    s = t.stride()
    outer = s[3] if w > 1 else s[2] if h > 1 else s[0] if n > 1 else c
    return hw * outer, 1, outer


def _empty(shape, like, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def channel_shuffle_forward(a, b, bias, groups: int, act: int, channels_last: bool):
    """y[:, o] = act(cat(a, b)[:, src(o)] + bias[src(o)]), src(o) = (o % g) * (C/g) + o // g;
    y contiguous in the format."""
    n, ca, h, w = a.shape
    c = ca + (0 if b is None else b.shape[1])
    y = _empty((n, c, h, w), a, channels_last)
    total = y.numel()
    if total:
        sa = _strides(a, channels_last)
        sb = _strides(b, channels_last) if b is not None else (0, 0, 0)
        _shuffle_forward_kernel[blocks_grid(total)](
            a, a if b is None else b, a if bias is None else bias, y, total, size_class(total),
            c, h * w, ca, groups, c // groups, *sa, *sb, CL=channels_last, HAS_B=b is not None,
            HAS_BIAS=bias is not None, ACT=act, ACC=acc_dtype(a))
    return y


def channel_shuffle_backward(grad, y, split: int, groups: int, act: int, channels_last: bool):
    """(grad_a, grad_b): the inverse shuffle of grad (times relu/relu6's derivative read from
    y), split at channel `split`; both contiguous in the format."""
    assert act in (0, 1, 2), "backward fuses only relu and relu6 (read from the output)"
    n, c, h, w = grad.shape
    ga = _empty((n, split, h, w), grad, channels_last)
    gb = _empty((n, c - split, h, w), grad, channels_last)
    total = grad.numel()
    if total:
        _shuffle_backward_kernel[blocks_grid(total)](
            grad, grad if y is None else y, ga, gb if gb.numel() else ga, total,
            size_class(total), c, h * w, split, groups, c // groups, CL=channels_last, ACT=act,
            ACC=acc_dtype(grad))
    return ga, gb
