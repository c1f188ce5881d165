"""Triton kernels of squeeze-and-excitation: the two passes over x, forward and backward.

Forward: ``_reduce_*`` sums each (n, c) plane of x (float32 accumulators; float64 for float64
x, so fp16 sums past 65504 stay finite), the MLP runs on the (N, C) means through torch's GEMM
(kernels/_se_mlp.py), ``_scale_kernel`` writes ``y = x * s[n, c]``. Backward: the same
reduction over ``grad * x``, the MLP backward, then ``grad_x = grad * s + q[n, c]`` with
``q = grad_mean / (H*W)`` by the same scale kernel.

Reductions split H*W into ``split`` ranges so that a batch-1 map still spreads over the SMs;
each program writes its partial sums to a (split, N*C) buffer that one torch sum adds up in a
fixed order (deterministic; no atomics). Block sizes follow the activation kernels' streaming
choice (4096 elements per program, 8 warps): the autotuner's prior (kernels/_autotune.py). On
a GPU it also tries 2048 and 8192 elements per program; the split and the partial buffer stay
those of the prior (they size memory before a config is chosen; any tile covers any rows per
split, masked). NOT yet run on a GPU: tested only in the interpreter (TRITON_INTERPRET=1).
"""
import torch
import triton
import triton.language as tl

from ._autotune import autotune, size_class
from ._launch import acc_dtype, blocks_grid, flat
from ._se_mlp import mlp_backward, mlp_forward

# Elements per program (TILE; the scale kernel's BLOCK) and warps: the prior first.
TILES = [(4096, 8), (2048, 4), (8192, 8)]
BLOCK = TILES[0][0]
REDUCE_CONFIGS = [triton.Config({"TILE": t}, num_warps=w) for t, w in TILES]
SCALE_CONFIGS = [triton.Config({"BLOCK": t}, num_warps=w) for t, w in TILES]
# programs a reduction aims for: two waves of 132 SMs (H100/H200)
TARGET_PROGRAMS = 264


def _pow2_at_most(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(n, 1)), cap)


def _block_p(tile: int, block_hw: int, planes: int) -> int:
    """Planes per NCHW reduction program: a tile of `tile` elements, rows of BLOCK_HW."""
    return max(1, min(tile // block_hw, triton.next_power_of_2(planes)))


def _block_r(tile: int, block_c: int, hw: int) -> int:
    """Rows per step of an NHWC reduction program: a tile of `tile` elements, BLOCK_C wide."""
    return max(1, min(tile // block_c, triton.next_power_of_2(hw)))


# Key: the tile's fixed side (BLOCK_HW / BLOCK_C, from the shape), PRODUCT, the log-4 class
# of the planes (NCHW) / rows per split (NHWC), and the dtypes.
@autotune(configs=REDUCE_CONFIGS, key=["BLOCK_HW", "PRODUCT", "size_class"],
          derive={"BLOCK_P": lambda a: _block_p(a["TILE"], a["BLOCK_HW"], a["planes"])})
@triton.jit
def _reduce_nchw_kernel(a_ptr, b_ptr, out_ptr, planes, hw, rows_per_split, size_class,
                        PRODUCT: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    # program (p-block, split): planes [p0, p0 + BLOCK_P) over rows [r0, r1) of H*W
    pid_p = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    r0 = split * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, hw)
    acc = tl.zeros((BLOCK_P, BLOCK_HW), dtype=ACC)
    for start in range(0, rows_per_split, BLOCK_HW):
        r = r0 + start + tl.arange(0, BLOCK_HW)
        mask = (p[:, None] < planes) & (r[None, :] < r1)
        offs = p[:, None] * hw + r[None, :]
        v = tl.load(a_ptr + offs, mask=mask, other=0.0).to(ACC)
        if PRODUCT:
            v = v * tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc += v
    tl.store(out_ptr + split * planes + p, tl.sum(acc, axis=1), mask=p < planes)


@autotune(configs=REDUCE_CONFIGS, key=["BLOCK_C", "PRODUCT", "size_class"],
          derive={"BLOCK_R": lambda a: _block_r(a["TILE"], a["BLOCK_C"], a["hw"])})
@triton.jit
def _reduce_nhwc_kernel(a_ptr, b_ptr, out_ptr, n_img, c, hw, rows_per_split, size_class,
                        PRODUCT: tl.constexpr, ACC: tl.constexpr, TILE: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (n, c-block, split): channels [c0, c0 + BLOCK_C) of image n over rows [r0, r1)
    n = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    r0 = split * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, hw)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for start in range(0, rows_per_split, BLOCK_R):
        r = r0 + start + tl.arange(0, BLOCK_R)
        mask = (r[:, None] < r1) & (ch[None, :] < c)
        offs = (n * hw + r[:, None]) * c + ch[None, :]
        v = tl.load(a_ptr + offs, mask=mask, other=0.0).to(ACC)
        if PRODUCT:
            v = v * tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc += v
    tl.store(out_ptr + (split * n_img + n) * c + ch, tl.sum(acc, axis=0), mask=ch < c)


@autotune(configs=SCALE_CONFIGS, key=["ADD", "CHANNELS_LAST", "size_class"])
@triton.jit
def _scale_kernel(a_ptr, s_ptr, q_ptr, out_ptr, numel, size_class, c, hw, ADD: tl.constexpr,
                  CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # out = a * s[n, c] (+ q[n, c]) over the storage of a contiguous NCHW or NHWC tensor
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if CHANNELS_LAST:
        idx = (offs // (hw * c)) * c + offs % c
    else:
        idx = offs // hw
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(ACC)
    out = a * tl.load(s_ptr + idx, mask=mask, other=0.0)
    if ADD:
        out += tl.load(q_ptr + idx, mask=mask, other=0.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _reduce(a: torch.Tensor, b: torch.Tensor, product: bool, channels_last: bool) -> torch.Tensor:
    """sum over H, W of a (* b): (N, C) in the accumulation type."""
    n, c, h, w = a.shape
    hw = h * w
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    # the split, and so the partial buffer, from the prior tile (BLOCK): fixed before tuning
    if channels_last:
        block_c = _pow2_at_most(c, 128)
        block_r = _block_r(BLOCK, block_c, hw)
        base = n * triton.cdiv(c, block_c)
    else:
        block_hw = _pow2_at_most(hw, 1024)
        base = triton.cdiv(n * c, _block_p(BLOCK, block_hw, n * c))
        block_r = block_hw
    split = max(1, min(triton.cdiv(TARGET_PROGRAMS, base), triton.cdiv(hw, block_r)))
    rows = triton.cdiv(hw, split)
    rows = triton.cdiv(rows, block_r) * block_r  # whole tiles per split
    split = triton.cdiv(hw, rows)
    partial = torch.empty((split, n * c), dtype=acc, device=a.device)
    if channels_last:
        grid = (n, triton.cdiv(c, block_c), split)
        _reduce_nhwc_kernel[grid](flat(a), flat(b), partial, n, c, hw, rows, size_class(rows),
                                  PRODUCT=product, ACC=acc_dtype(a), BLOCK_C=block_c)
    else:
        planes = n * c

        def grid(meta):
            return (triton.cdiv(planes, meta["BLOCK_P"]), split)
        _reduce_nchw_kernel[grid](flat(a), flat(b), partial, planes, hw, rows,
                                  size_class(planes), PRODUCT=product, ACC=acc_dtype(a),
                                  BLOCK_HW=block_hw)
    return (partial[0] if split == 1 else partial.sum(0)).view(n, c)


def _scale(a: torch.Tensor, s: torch.Tensor, q: torch.Tensor | None, channels_last: bool) -> torch.Tensor:
    out = torch.empty_like(a)
    numel = a.numel()
    if numel:
        c, hw = a.shape[1], a.shape[2] * a.shape[3]
        _scale_kernel[blocks_grid(numel)](flat(a), s, s if q is None else q, flat(out), numel,
                                          size_class(numel), c, hw, ADD=q is not None,
                                          CHANNELS_LAST=channels_last, ACC=acc_dtype(a))
    return out


def squeeze_excite_forward(x, w1, b1, w2, b2, act: int, gate: int, channels_last: bool):
    """(y, means): y = x * gate(fc2(act(fc1(means)))) in x's layout, means (N, C) float32
    (float64 for float64 x). x contiguous in the format `channels_last` names."""
    hw = x.shape[2] * x.shape[3]
    if x.numel() == 0:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        return torch.empty_like(x), x.new_empty(x.shape[:2], dtype=acc)
    pooled = _reduce(x, x, False, channels_last) / hw
    s = mlp_forward(pooled, w1, b1, w2, b2, act, gate).s.contiguous()
    return _scale(x, s, None, channels_last), pooled


def squeeze_excite_backward(grad, x, pooled, w1, b1, w2, b2, act: int, gate: int,
                            channels_last: bool):
    """(grad_x, grad_w1, grad_b1, grad_w2, grad_b2); grad and x share x's layout."""
    assert grad.stride() == x.stride() and grad.dtype == x.dtype, "caller aligns grad with x"
    hw = x.shape[2] * x.shape[3]
    if x.numel():
        gs = _reduce(grad, x, True, channels_last)
    else:
        gs = pooled.new_zeros(pooled.shape)
    m = mlp_forward(pooled, w1, b1, w2, b2, act, gate)
    gp, gw1, gb1, gw2, gb2 = mlp_backward(gs, pooled, m, w1, w2, act, gate)
    gx = _scale(grad, m.s.contiguous(), (gp / hw).contiguous(), channels_last)
    return gx, gw1, gb1, gw2, gb2
