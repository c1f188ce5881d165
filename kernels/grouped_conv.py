"""Triton kernel of the grouped 1x1 convolution (ShuffleNet v1's pointwise GConv) as one GEMM
per group, with the bias + activation epilogue and the output stored directly in
channel-shuffled order: conv -> BN (folded) -> ReLU -> shuffle in one pass over the output.

For group ``gi`` (G groups, K = C_in / G inputs and J = C_out / G outputs per group), with the
M = N*H*W pixels as rows: ``Z[m, gi*J + j] = sum_k X[m, gi*K + k] * W[gi*J + j, k]``. Output
channel ``o`` is stored at ``dst(o) = (o % k_s) * s + o // k_s`` (s = shuffle_groups,
k_s = C_out / s), the position channel_shuffle moves it to. Tiles: BLOCK_M pixels x BLOCK_N
output channels of one group, reducing over BLOCK_K input channels with fp32 accumulation
(``tl.dot``); NHWC and NCHW both, through (batch, channel, pixel) strides.

Inference only (the op calls it when no gradient is needed): training runs ATen's convolution
and the shuffle family's fused epilogue, whose backward is ATen's convolution_backward.
Block sizes 64 x 32 x 32 with 4 warps: a conventional starting point for small-K GEMMs
(ShuffleNet's K per group is 8-128), the autotuner's prior (kernels/_autotune.py); on a GPU it
also tries taller, wider and smaller tiles per (K, J, dtype, log-4 class of M). NOT run on a
GPU yet (tested only under TRITON_INTERPRET=1).
"""
import torch
import triton
import triton.language as tl

from ._activation_math import apply_act
from ._autotune import autotune, size_class


def _cfg(bm, bn, bk, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps)


# The prior first; then twice the pixels, twice the outputs (J >= 64: ShuffleNet v1's wider
# groups), and a quarter-size tile for batch-1 maps (more programs). tl.dot needs every side
# >= 16.
CONFIGS = [_cfg(64, 32, 32, 4), _cfg(128, 32, 32, 4), _cfg(64, 64, 32, 4), _cfg(32, 32, 16, 2)]


def _useful(configs, args):
    """Drop tiles wider than the group's outputs or deeper than its inputs, beyond the prior's
    32 x 32 (kept for every shape): their extra lanes would all be masked."""
    j, k = args["J"], args["K"]
    return [c for c in configs
            if c.kwargs["BLOCK_N"] <= max(32, triton.next_power_of_2(j))
            and c.kwargs["BLOCK_K"] <= max(32, triton.next_power_of_2(k))]


@autotune(configs=CONFIGS, key=["K", "J", "size_class"], prune=_useful)
@triton.jit
def _gconv1x1_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, size_class, HW, K, J, CO, KS, SG,
                     sx_n, sx_c, sx_p, sy_n, sy_c, sy_p,
                     HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)      # pixels
    rj = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)      # outputs within the group
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    n = rm // HW
    p = rm % HW
    x_row = n * sx_n + p * sx_p
    m_ok = rm < M
    j_ok = rj < J
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        xt = tl.load(x_ptr + x_row[:, None] + (gi * K + kk)[None, :] * sx_c,
                     mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + (gi * J + rj)[None, :] * K + kk[:, None],
                     mask=j_ok[None, :] & k_ok[:, None], other=0.0)
        acc += tl.dot(xt.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
    o = gi * J + rj
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_act(acc, ACT)
    dst = (o % KS) * SG + o // KS
    y_off = (n * sy_n + p * sy_p)[:, None] + dst[None, :] * sy_c
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & j_ok[None, :])


def _bcp(t: torch.Tensor, channels_last: bool):
    """(batch, channel, pixel) strides of a 4-d tensor contiguous in the format."""
    n, c, h, w = t.shape
    return (h * w * c, 1, c) if channels_last else (c * h * w, h * w, 1)


def grouped_conv1x1_forward(x: torch.Tensor, weight: torch.Tensor, bias, groups: int, act: int,
                            shuffle_groups: int, channels_last: bool) -> torch.Tensor:
    """act(conv1x1(x, weight, bias, groups)) with channels shuffled in shuffle_groups groups
    (1: no shuffle). x: (N, C_in, H, W) contiguous in the format; weight (C_out, C_in/groups,
    1, 1) contiguous; returns (N, C_out, H, W) contiguous in the format. float32 accumulation
    (the inputs are read in their dtype and widened; float64 is computed in float32 too, so
    the caller keeps float64 off this path)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, c_out, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    m = n * h * w
    if m == 0:
        return y
    k, j = c_in // groups, c_out // groups

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), groups, triton.cdiv(j, meta["BLOCK_N"]))
    _gconv1x1_kernel[grid](
        x, weight, weight if bias is None else bias, y, m, size_class(m), h * w, k, j, c_out,
        c_out // shuffle_groups, shuffle_groups, *_bcp(x, channels_last), *_bcp(y, channels_last),
        HAS_BIAS=bias is not None, ACT=act)
    return y
