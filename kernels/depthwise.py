"""Triton kernels of the depthwise family: 2-d convolution with groups == C (any kernel size,
stride, dilation, top/left padding, explicit output size, channel multiplier m), bias and an
activation epilogue; forward, backward w.r.t. the input and backward w.r.t. the weight, each in
NCHW and in channels_last (NHWC) memory order.

Memory-bound. With E = element size, O = N*C*m*OH*OW outputs, I = N*C*H*W inputs and
K = C*m*KH*KW weights, the traffic floor of each kernel is:

- forward:          read x + w (+ bias), write y      = (I + K + O) * E bytes
- backward_input:   read grad + w, write grad_x        = (O + K + I) * E bytes
- backward_weight:  read grad + x, write grad_w        = (O + I + K) * E bytes, plus the fp32
                    partial sums [S, C*m, KH*KW] (a few KB to MB) and the torch sum over S.

The KH*KW taps of neighbouring outputs overlap, so every kernel re-reads its halo; the tiles
are meant to keep those re-reads in L1/L2 so DRAM traffic stays near the floor (with m > 1,
backward_weight reads each x plane once per output channel, also meant to hit L2). None of
this is measured: the block sizes below come from the shape (next power of two, clipped) and
are NOT yet tuned on a GPU (no device was available when this file was written; bench/ holds
the harness that will tune them).

Index conventions: program ids and the batch/channel (NCHW) or pixel (NHWC) part of every
offset are int64, so tensors past 2^31 elements work; NCHW offsets inside one plane are int32
(the launchers assert H*W and OH*OW < 2^31). In-plane coordinates (out * stride - pad + tap *
dilation) are int32 too, unless a geometry could take them past it (huge strides, paddings or
dilations: the I64 kernels, issue 12). Launchers take tensors in any strides and copy them once
into the layout they index where needed. Triton's integer // and % round toward zero, so
the gather in backward_input clamps negative numerators to 0 before dividing and masks them.
"""
import torch
import triton
import triton.language as tl

from ._activation_math import apply_act
from ._autotune import autotune, size_class
from ._launch import acc_dtype

# Elements per output tile (forward, backward_input) and per accumulator (backward_weight),
# and their warps. Chosen from sm_90 register reports (cuobjdump --dump-resource-usage of the
# compiled cubins, no run): with 4 warps x 1024 elements, or with KH unrolled beyond 3x3, the
# hoisted tap loads spill (up to 6 KB of stack for 7x7 NHWC backward_input); 8 warps and a
# runtime kh loop (kw stays unrolled) compile without spills at 39-136 registers for
# fp16/bf16/fp32 (up to 167 in fp64), 3x3 to 7x7, 1x7, 7x1. Forward unrolls kh too for up to
# 9 taps (58/76 registers NCHW/NHWC); backward_input always loops (unrolled 3x3 takes 143).
# backward_weight: 8 warps x 4096 accumulator elements (taps padded to a power of two x
# pixels [x channels]) take 46-116 registers from 3x3 to 7x7, no spills. Kernels far larger
# than 7x7 (e.g. 31x31) work but were not looked at. Timings: none yet.
# These are the autotuner's priors (kernels/_autotune.py, configs[0] below); on a GPU it also
# tries half and twice the tile at the prior's elements per thread (4 and 16 warps). Compiled
# for sm_90 (triton.compile with a GPUTarget, cuobjdump --dump-resource-usage; no run), bf16,
# 3x3/5x5/7x7: the half tile takes 40-128 registers, no spills; twice the tile on 8 warps
# instead took up to 255 registers and spilled in NHWC 7x7, so the large tile gets 16 warps
# (NHWC 7x7: 128 registers forward, 101 backward_input). backward_weight likewise: half and
# twice the accumulator on 4 and 16 warps (NHWC 7x7: 80 and 100 registers; 8192 on 8 warps
# took 210). Compile times, same machine: 1-7 s per config (a loaded 2-core VM).
NUM_WARPS = 8
TILE = 1024
UNROLL_MAX_TAPS = 9
WGRAD_WARPS = 8
WGRAD_ACC = 4096
TILE_CONFIGS = [triton.Config({"TILE": t}, num_warps=w)
                for t, w in ((TILE, NUM_WARPS), (TILE // 2, 4), (TILE * 2, 16))]
WGRAD_CONFIGS = [triton.Config({"WGRAD_ACC": a}, num_warps=w)
                 for a, w in ((WGRAD_ACC, WGRAD_WARPS), (WGRAD_ACC // 2, 4), (WGRAD_ACC * 2, 16))]
# the largest tile any config uses: _geometry's int32 bound must hold for all of them
MAX_TILE = max(c.kwargs["TILE"] for c in TILE_CONFIGS)
# backward_weight: split the N*OH*OW reduction into S slices until about this many programs
# run (H100: 132 SMs), keeping at least WGRAD_MIN_BLOCKS blocks per program; each slice costs
# one [C*m, KH*KW] fp32 partial row.
WGRAD_PROGRAMS = 1024
WGRAD_MIN_BLOCKS = 4
_INT32_MAX = 2**31 - 1


def _np2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# Tile shapes follow the tensor's shape (next powers of two, clipped), their size and warps
# are tuned: `derive` turns the config's TILE (WGRAD_ACC) into the kernel's block sides. Keys:
# the plane (NCHW) or channel count (NHWC), the taps and strides, the log-4 class of the work
# (so batch 1 and batch 32 tune apart), and the dtype.
_TAPS = ["KH", "KW", "SH", "SW"]
_PLANE_OUT = {"BH": lambda a: _plane_tile(a["OH"], a["OW"], a["TILE"])[0],
              "BW": lambda a: _plane_tile(a["OH"], a["OW"], a["TILE"])[1]}
_PLANE_IN = {"BH": lambda a: _plane_tile(a["H"], a["W"], a["TILE"])[0],
             "BW": lambda a: _plane_tile(a["H"], a["W"], a["TILE"])[1]}
_PIXELS_OUT = {"BP": lambda a: _pixel_tile(a["NPIX"], a["OC"], a["TILE"])[0],
               "BC": lambda a: _pixel_tile(a["NPIX"], a["OC"], a["TILE"])[1]}
_PIXELS_IN = {"BP": lambda a: _pixel_tile(a["NPIX"], a["C"], a["TILE"])[0],
              "BC": lambda a: _pixel_tile(a["NPIX"], a["C"], a["TILE"])[1]}


# ------------------------------------------------------------------------------- forward


@triton.jit
def _fwd_nchw_row(acc, x_base, w_base, kh, oh, ow, H, W, OH, OW, PH, PW, DH, DW,
                  KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, ACC: tl.constexpr):
    ih = oh * SH - PH + kh * DH
    mh = (ih >= 0) & (ih < H) & (oh < OH)
    for kw in tl.static_range(KW):
        iw = ow * SW - PW + kw * DW
        m = mh & (iw >= 0) & (iw < W) & (ow < OW)
        wv = tl.load(w_base + (kh * KW + kw)).to(ACC)
        xv = tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(ACC)
        acc += xv * wv
    return acc


@autotune(configs=TILE_CONFIGS, key=["OH", "OW", *_TAPS, "size_class"], derive=_PLANE_OUT)
@triton.jit
def _dw_fwd_nchw_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                        C, H, W, OC, OH, OW, M, PH, PW, DH, DW, size_class,
                        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                        HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                        UNROLL_KH: tl.constexpr, TILE: tl.constexpr, BH: tl.constexpr,
                        BW: tl.constexpr, I64: tl.constexpr):
    # One program: one (n, oc) plane, one BH x BW output tile; W is the contiguous axis.
    # tiles per plane from the config's BH x BW, in int64 (OH + BH - 1 may pass int32);
    # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
    tiles_w = tl.cdiv(tl.cast(OW, tl.int64), BW)
    TILES = tl.cdiv(tl.cast(OH, tl.int64), BH) * tiles_w
    TILES_W = tiles_w.to(tl.int32)
    pid = tl.program_id(0).to(tl.int64)
    nc = pid // TILES  # n * OC + oc
    tile = (pid % TILES).to(tl.int32)
    n = nc // OC
    oc = nc % OC
    x_base = x_ptr + (n * C + oc // M) * H * W
    w_base = w_ptr + oc * (KH * KW)
    oh = (tile // TILES_W) * BH + tl.arange(0, BH)[:, None]
    ow = (tile % TILES_W) * BW + tl.arange(0, BW)[None, :]
    if I64:  # coordinates past int32 (huge strides, paddings, dilations): int64 math
        oh, ow = oh.to(tl.int64), ow.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
        PH, PW = tl.cast(PH, tl.int64), tl.cast(PW, tl.int64)
        DH, DW = tl.cast(DH, tl.int64), tl.cast(DW, tl.int64)
    acc = tl.zeros((BH, BW), dtype=ACC)
    if UNROLL_KH:
        for kh in tl.static_range(KH):
            acc = _fwd_nchw_row(acc, x_base, w_base, kh, oh, ow, H, W, OH, OW, PH, PW, DH, DW,
                                KW, SH, SW, ACC)
    else:
        for kh in range(KH):
            acc = _fwd_nchw_row(acc, x_base, w_base, kh, oh, ow, H, W, OH, OW, PH, PW, DH, DW,
                                KW, SH, SW, ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc).to(ACC)
    acc = apply_act(acc, ACT)
    y_base = y_ptr + nc * OH * OW
    tl.store(y_base + oh * OW + ow, acc.to(y_ptr.dtype.element_ty),
             mask=(oh < OH) & (ow < OW))


@triton.jit
def _fwd_nhwc_row(acc, x_ptr, w_ptr, w_off, kh, n, oh, ow, ic, pmask, cmask,
                  C, H, W, PH, PW, DH, DW,
                  KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, ACC: tl.constexpr):
    ih = oh * SH - PH + kh * DH
    mh = (ih >= 0) & (ih < H) & pmask
    row_h = n * H + ih
    for kw in tl.static_range(KW):
        iw = ow * SW - PW + kw * DW
        m = mh & (iw >= 0) & (iw < W)
        row = (row_h * W + iw) * C
        wv = tl.load(w_ptr + w_off + (kh * KW + kw), mask=cmask, other=0.0).to(ACC)
        xv = tl.load(x_ptr + row[:, None] + ic[None, :], mask=m[:, None] & cmask[None, :],
                     other=0.0).to(ACC)
        acc += xv * wv[None, :]
    return acc


@autotune(configs=TILE_CONFIGS, key=["OC", *_TAPS, "size_class"], derive=_PIXELS_OUT)
@triton.jit
def _dw_fwd_nhwc_kernel(x_ptr, w_ptr, b_ptr, y_ptr, NPIX,
                        C, H, W, OC, OH, OW, M, PH, PW, DH, DW, size_class,
                        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                        HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                        UNROLL_KH: tl.constexpr, TILE: tl.constexpr, BP: tl.constexpr,
                        BC: tl.constexpr, I64: tl.constexpr):
    # One program: BP output pixels (flattened over N*OH*OW) x BC output channels (contiguous).
    pix = tl.program_id(0).to(tl.int64) * BP + tl.arange(0, BP)
    oc = tl.program_id(1) * BC + tl.arange(0, BC)
    pmask = pix < NPIX
    cmask = oc < OC
    ic = oc // M
    n = pix // (OH * OW)
    r = (pix - n * (OH * OW)).to(tl.int32)
    oh = r // OW
    ow = r - oh * OW
    if I64:  # coordinates past int32 (huge strides, paddings, dilations): int64 math
        oh, ow = oh.to(tl.int64), ow.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
        PH, PW = tl.cast(PH, tl.int64), tl.cast(PW, tl.int64)
        DH, DW = tl.cast(DH, tl.int64), tl.cast(DW, tl.int64)
    w_off = oc * (KH * KW)
    acc = tl.zeros((BP, BC), dtype=ACC)
    if UNROLL_KH:
        for kh in tl.static_range(KH):
            acc = _fwd_nhwc_row(acc, x_ptr, w_ptr, w_off, kh, n, oh, ow, ic, pmask, cmask,
                                C, H, W, PH, PW, DH, DW, KW, SH, SW, ACC)
    else:
        for kh in range(KH):
            acc = _fwd_nhwc_row(acc, x_ptr, w_ptr, w_off, kh, n, oh, ow, ic, pmask, cmask,
                                C, H, W, PH, PW, DH, DW, KW, SH, SW, ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc, mask=cmask, other=0.0).to(ACC)[None, :]
    acc = apply_act(acc, ACT)
    tl.store(y_ptr + pix[:, None] * OC + oc[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=pmask[:, None] & cmask[None, :])


# ------------------------------------------------------------------------ backward input


@triton.jit
def _bwd_in_nchw_row(acc, g_base, w_base, kh, ih, iw, in_h, in_w, OH, OW, PH, PW, DH, DW,
                     KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, ACC: tl.constexpr):
    nh = ih + PH - kh * DH
    nh0 = tl.where(nh >= 0, nh, 0)  # // rounds toward zero: never divide negatives
    oh = nh0 // SH
    mh = (nh >= 0) & (oh * SH == nh0) & (oh < OH) & in_h
    for kw in tl.static_range(KW):
        nw = iw + PW - kw * DW
        nw0 = tl.where(nw >= 0, nw, 0)
        ow = nw0 // SW
        m = mh & (nw >= 0) & (ow * SW == nw0) & (ow < OW) & in_w
        wv = tl.load(w_base + (kh * KW + kw)).to(ACC)
        gv = tl.load(g_base + oh * OW + ow, mask=m, other=0.0).to(ACC)
        acc += gv * wv
    return acc


@autotune(configs=TILE_CONFIGS, key=["H", "W", *_TAPS, "size_class"], derive=_PLANE_IN)
@triton.jit
def _dw_bwd_in_nchw_kernel(g_ptr, w_ptr, gx_ptr,
                           C, H, W, OC, OH, OW, M, PH, PW, DH, DW, size_class,
                           KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                           SW: tl.constexpr, ACC: tl.constexpr,
                           UNROLL_KH: tl.constexpr, TILE: tl.constexpr, BH: tl.constexpr,
                           BW: tl.constexpr, I64: tl.constexpr):
    # Gather: input pixel (ih, iw) receives grad[oh, ow] * w[kh, kw] wherever
    # oh*SH - PH + kh*DH == ih (and the same along W), summed over the m output channels.
    # tiles per plane from the config's BH x BW, in int64 (H + BH - 1 may pass int32);
    # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
    tiles_w = tl.cdiv(tl.cast(W, tl.int64), BW)
    TILES = tl.cdiv(tl.cast(H, tl.int64), BH) * tiles_w
    TILES_W = tiles_w.to(tl.int32)
    pid = tl.program_id(0).to(tl.int64)
    nc = pid // TILES  # n * C + ic
    tile = (pid % TILES).to(tl.int32)
    n = nc // C
    ic = nc % C
    ih = (tile // TILES_W) * BH + tl.arange(0, BH)[:, None]
    iw = (tile % TILES_W) * BW + tl.arange(0, BW)[None, :]
    if I64:  # coordinates past int32 (huge strides, paddings, dilations): int64 math
        ih, iw = ih.to(tl.int64), iw.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
        PH, PW = tl.cast(PH, tl.int64), tl.cast(PW, tl.int64)
        DH, DW = tl.cast(DH, tl.int64), tl.cast(DW, tl.int64)
    in_h = ih < H
    in_w = iw < W
    acc = tl.zeros((BH, BW), dtype=ACC)
    for j in range(M):
        oc = ic * M + j
        g_base = g_ptr + (n * OC + oc) * OH * OW
        w_base = w_ptr + oc * (KH * KW)
        if UNROLL_KH:
            for kh in tl.static_range(KH):
                acc = _bwd_in_nchw_row(acc, g_base, w_base, kh, ih, iw, in_h, in_w, OH, OW,
                                       PH, PW, DH, DW, KW, SH, SW, ACC)
        else:
            for kh in range(KH):
                acc = _bwd_in_nchw_row(acc, g_base, w_base, kh, ih, iw, in_h, in_w, OH, OW,
                                       PH, PW, DH, DW, KW, SH, SW, ACC)
    gx_base = gx_ptr + nc * H * W
    tl.store(gx_base + ih * W + iw, acc.to(gx_ptr.dtype.element_ty), mask=in_h & in_w)


@triton.jit
def _bwd_in_nhwc_row(acc, g_ptr, w_ptr, w_off, kh, n, ih, iw, oc, pmask, cmask,
                     OC, OH, OW, PH, PW, DH, DW,
                     KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, ACC: tl.constexpr):
    nh = ih + PH - kh * DH
    nh0 = tl.where(nh >= 0, nh, 0)
    oh = nh0 // SH
    mh = (nh >= 0) & (oh * SH == nh0) & (oh < OH) & pmask
    row_h = n * OH + oh
    for kw in tl.static_range(KW):
        nw = iw + PW - kw * DW
        nw0 = tl.where(nw >= 0, nw, 0)
        ow = nw0 // SW
        m = mh & (nw >= 0) & (ow * SW == nw0) & (ow < OW)
        row = (row_h * OW + ow) * OC
        wv = tl.load(w_ptr + w_off + (kh * KW + kw), mask=cmask, other=0.0).to(ACC)
        gv = tl.load(g_ptr + row[:, None] + oc[None, :], mask=m[:, None] & cmask[None, :],
                     other=0.0).to(ACC)
        acc += gv * wv[None, :]
    return acc


@autotune(configs=TILE_CONFIGS, key=["C", *_TAPS, "size_class"], derive=_PIXELS_IN)
@triton.jit
def _dw_bwd_in_nhwc_kernel(g_ptr, w_ptr, gx_ptr, NPIX,
                           C, H, W, OC, OH, OW, M, PH, PW, DH, DW, size_class,
                           KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                           SW: tl.constexpr, ACC: tl.constexpr,
                           UNROLL_KH: tl.constexpr, TILE: tl.constexpr, BP: tl.constexpr,
                           BC: tl.constexpr, I64: tl.constexpr):
    # BP input pixels (flattened over N*H*W) x BC input channels; gather as in the NCHW kernel.
    pix = tl.program_id(0).to(tl.int64) * BP + tl.arange(0, BP)
    ic = tl.program_id(1) * BC + tl.arange(0, BC)
    pmask = pix < NPIX
    cmask = ic < C
    n = pix // (H * W)
    r = (pix - n * (H * W)).to(tl.int32)
    ih = r // W
    iw = r - ih * W
    if I64:  # coordinates past int32 (huge strides, paddings, dilations): int64 math
        ih, iw = ih.to(tl.int64), iw.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
        PH, PW = tl.cast(PH, tl.int64), tl.cast(PW, tl.int64)
        DH, DW = tl.cast(DH, tl.int64), tl.cast(DW, tl.int64)
    acc = tl.zeros((BP, BC), dtype=ACC)
    for j in range(M):
        oc = ic * M + j
        w_off = oc * (KH * KW)
        if UNROLL_KH:
            for kh in tl.static_range(KH):
                acc = _bwd_in_nhwc_row(acc, g_ptr, w_ptr, w_off, kh, n, ih, iw, oc, pmask,
                                       cmask, OC, OH, OW, PH, PW, DH, DW, KW, SH, SW, ACC)
        else:
            for kh in range(KH):
                acc = _bwd_in_nhwc_row(acc, g_ptr, w_ptr, w_off, kh, n, ih, iw, oc, pmask,
                                       cmask, OC, OH, OW, PH, PW, DH, DW, KW, SH, SW, ACC)
    tl.store(gx_ptr + pix[:, None] * C + ic[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=pmask[:, None] & cmask[None, :])


# ----------------------------------------------------------------------- backward weight


# Weight gradient: the number S of partial rows is fixed by the launcher from the prior (it
# sizes the partial buffer before a config is chosen); the tuned accumulator size sets the
# block, and a program's blocks s, s+S, ... cover the positions whatever the block.
@autotune(configs=WGRAD_CONFIGS, key=["KKP", "OC", "size_class"],
          derive={"BLOCK": lambda a: _wgrad_block_nchw(a["NQ"], a["KKP"], a["WGRAD_ACC"])})
@triton.jit
def _dw_bwd_w_nchw_kernel(g_ptr, x_ptr, part_ptr, NQ, S, size_class,
                          C, H, W, OC, OH, OW, M, PH, PW, DH, DW,
                          KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                          SW: tl.constexpr, KKP: tl.constexpr, ACC: tl.constexpr,
                          WGRAD_ACC: tl.constexpr, BLOCK: tl.constexpr, I64: tl.constexpr):
    # Program (oc, s) reduces blocks s, s+S, s+2S, ... of the N*OH*OW output positions of
    # channel oc into a [KKP taps, BLOCK] accumulator, then writes partial[s, oc, :]. The split
    # is fixed by the launcher, so the sum is deterministic (no atomics).
    NBLK = tl.cdiv(tl.cast(NQ, tl.int64), BLOCK)  # in int64: NQ + BLOCK - 1 may pass int32
    oc = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    ic = oc // M
    t = tl.arange(0, KKP)
    tmask = t < KH * KW
    kh = (t // KW)[:, None]
    kw = (t % KW)[:, None]
    if I64:
        kh, kw = kh.to(tl.int64), kw.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
        PH, PW = tl.cast(PH, tl.int64), tl.cast(PW, tl.int64)
        DH, DW = tl.cast(DH, tl.int64), tl.cast(DW, tl.int64)
    acc = tl.zeros((KKP, BLOCK), dtype=ACC)
    for b in range(s, NBLK, S):
        q = b * BLOCK + tl.arange(0, BLOCK)
        qmask = q < NQ
        n = q // (OH * OW)
        p = (q - n * (OH * OW)).to(tl.int32)
        oh = p // OW
        ow = p - oh * OW
        if I64:  # coordinates past int32 (huge strides, paddings, dilations): int64 math
            oh, ow = oh.to(tl.int64), ow.to(tl.int64)
        gv = tl.load(g_ptr + (n * OC + oc) * (OH * OW) + p, mask=qmask, other=0.0).to(ACC)
        ih = oh[None, :] * SH - PH + kh * DH
        iw = ow[None, :] * SW - PW + kw * DW
        m = tmask[:, None] & qmask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_base = ((n * C + ic) * H * W)[None, :]
        xv = tl.load(x_ptr + x_base + (ih * W + iw), mask=m, other=0.0).to(ACC)
        acc += xv * gv[None, :]
    tl.store(part_ptr + (s * OC + oc) * (KH * KW) + t, tl.sum(acc, axis=1), mask=tmask)


@autotune(configs=WGRAD_CONFIGS, key=["KKP", "BC", "size_class"],
          derive={"BP": lambda a: _wgrad_bp_nhwc(a["NPIX"], a["KKP"], a["BC"], a["WGRAD_ACC"])})
@triton.jit
def _dw_bwd_w_nhwc_kernel(g_ptr, x_ptr, part_ptr, NPIX, S, size_class,
                          C, H, W, OC, OH, OW, M, PH, PW, DH, DW,
                          KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                          SW: tl.constexpr, KKP: tl.constexpr, ACC: tl.constexpr,
                          WGRAD_ACC: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
                          I64: tl.constexpr):
    # Program (channel tile, s) reduces pixel blocks s, s+S, ... into [KKP, BP, BC] and
    # writes partial[s, oc, :] for its BC channels; channels are the contiguous axis.
    NBLK = tl.cdiv(tl.cast(NPIX, tl.int64), BP)  # in int64: NPIX + BP - 1 may pass int32
    oc = tl.program_id(0) * BC + tl.arange(0, BC)
    s = tl.program_id(1).to(tl.int64)
    cmask = oc < OC
    ic = oc // M
    t = tl.arange(0, KKP)
    tmask = t < KH * KW
    kh = (t // KW)[:, None]
    kw = (t % KW)[:, None]
    if I64:
        kh, kw = kh.to(tl.int64), kw.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constexpr
        PH, PW = tl.cast(PH, tl.int64), tl.cast(PW, tl.int64)
        DH, DW = tl.cast(DH, tl.int64), tl.cast(DW, tl.int64)
    acc = tl.zeros((KKP, BP, BC), dtype=ACC)
    for b in range(s, NBLK, S):
        pix = b * BP + tl.arange(0, BP)
        pmask = pix < NPIX
        n = pix // (OH * OW)
        r = (pix - n * (OH * OW)).to(tl.int32)
        oh = r // OW
        ow = r - oh * OW
        if I64:  # coordinates past int32 (huge strides, paddings, dilations): int64 math
            oh, ow = oh.to(tl.int64), ow.to(tl.int64)
        gv = tl.load(g_ptr + pix[:, None] * OC + oc[None, :],
                     mask=pmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        ih = oh[None, :] * SH - PH + kh * DH  # [KKP, BP]
        iw = ow[None, :] * SW - PW + kw * DW
        m = tmask[:, None] & pmask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        row = ((n[None, :] * H + ih) * W + iw) * C
        xv = tl.load(x_ptr + row[:, :, None] + ic[None, None, :],
                     mask=m[:, :, None] & cmask[None, None, :], other=0.0).to(ACC)
        acc += xv * gv[None, :, :]
    part = part_ptr + (s * OC + oc[None, :]) * (KH * KW) + t[:, None]
    tl.store(part, tl.sum(acc, axis=1), mask=tmask[:, None] & cmask[None, :])


# ----------------------------------------------------------------------------- launchers


def _fmt(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def _in_format(name: str, t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t in the memory format the kernels index: itself when contiguous in it (is_contiguous
    ignores the strides of size-1 dimensions and empty tensors), else one copy (an expanded
    gradient, any other layout). Never a rejection (issue 12)."""
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-d (N, C, H, W), got shape {tuple(t.shape)}")
    return t.contiguous(memory_format=_fmt(channels_last))


def _geometry(in_hw, out_hw, kernel_size, stride, padding, dilation):
    """(SH, SW, PH, PW, DH, DW, I64) for the kernels. A stride along an axis with one output
    and a dilation along an axis with one tap cannot matter and become 1 (a stride of 2^31
    onto a 1x1 output would otherwise be a constexpr and an int32 overflow). I64: whether an
    in-plane coordinate the kernels form (out * stride - pad + tap * dilation, over tiles of up
    to MAX_TILE elements past the plane, the largest tile of any config) could leave int32;
    those geometries compute in int64."""
    strides, reach = [], 0
    for n, o, k, st, p, d in zip(in_hw, out_hw, kernel_size, stride, padding, dilation):
        st, d = (1 if o <= 1 else st), (1 if k == 1 else d)
        strides.append((st, d))
        size = max(n, o) + MAX_TILE
        reach = max(reach, size * st + p + k * d + size)
    (sh, dh), (sw, dw) = strides
    return sh, sw, padding[0], padding[1], dh, dw, reach > _INT32_MAX


def _nonempty(t: torch.Tensor) -> torch.Tensor:
    """t, or a 1-element stand-in when t is empty: an empty tensor may have a null pointer,
    which Triton refuses even when every access to it is masked."""
    return t if t.numel() else torch.zeros(1, dtype=t.dtype, device=t.device)


def _plane_tile(h: int, w: int, tile: int):
    """(BH, BW) for an NCHW tile over an h x w plane: W first (coalescing), `tile` elements."""
    bw = min(_np2(w), 64)
    bh = min(_np2(h), max(1, tile // bw))
    return bh, bw


def _pixel_tile(npix: int, channels: int, tile: int):
    """(BP, BC) for an NHWC tile: channels first (contiguous), `tile` elements."""
    bc = min(_np2(channels), 64)
    bp = min(_np2(npix), max(1, tile // bc))
    return bp, bc


def _wgrad_block_nchw(npix: int, kkp: int, acc: int) -> int:
    """Positions per step of an NCHW weight-gradient program: a [KKP, BLOCK] accumulator."""
    return min(_np2(npix), max(16, acc // kkp))


def _wgrad_bp_nhwc(npix: int, kkp: int, bc: int, acc: int) -> int:
    """Pixels per step of an NHWC weight-gradient program: a [KKP, BP, BC] accumulator."""
    return min(_np2(npix), max(1, acc // (kkp * bc)))


def _wgrad_splits(nblk: int, programs_per_split: int) -> int:
    """Number S of fixed slices of the weight-gradient reduction (grid axis 1, < 65536)."""
    s = min(triton.cdiv(nblk, WGRAD_MIN_BLOCKS), triton.cdiv(WGRAD_PROGRAMS, programs_per_split))
    return max(1, min(s, 65535))


def _pair(v):
    a, b = v
    return int(a), int(b)


def _plane_grid(planes: int, h: int, w: int):
    """Grid of the NCHW kernels: `planes` planes of h x w, BH x BW tiles (the config's)."""
    return lambda meta: (planes * triton.cdiv(h, meta["BH"]) * triton.cdiv(w, meta["BW"]),)


def _pixel_grid(npix: int, channels: int):
    """Grid of the NHWC forward/backward-input kernels: BP pixels x BC channels a program."""
    return lambda meta: (triton.cdiv(npix, meta["BP"]), triton.cdiv(channels, meta["BC"]))


def depthwise_forward(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding, dilation,
                      out_size, act: int, channels_last: bool) -> torch.Tensor:
    """y = act(conv2d(x, weight, bias, groups=C) + bias).

    x (N, C, H, W); weight (C*m, 1, KH, KW); bias (C*m,) or None; padding is the top/left
    offset and out_size = (OH, OW) the output size. Returns y (N, C*m, OH, OW) in x's layout.
    """
    x = _in_format("x", x, channels_last)
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    N, C, H, W = x.shape
    OC, one, KH, KW = weight.shape
    assert one == 1 and C > 0 and OC % C == 0, "weight must be (C*m, 1, KH, KW)"
    assert weight.dtype == x.dtype and weight.device == x.device
    if bias is not None:
        assert bias.shape == (OC,) and bias.dtype == x.dtype
    assert 0 <= int(act) <= 5, "act: 0 none, 1 relu, 2 relu6, 3 hardswish, 4 hardsigmoid, 5 silu"
    OH, OW = _pair(out_size)
    SH, SW, PH, PW, DH, DW, I64 = _geometry((H, W), (OH, OW), (KH, KW), _pair(stride),
                                            _pair(padding), _pair(dilation))
    M = OC // C
    y = torch.empty((N, OC, OH, OW), dtype=x.dtype, device=x.device,
                    memory_format=_fmt(channels_last))
    if y.numel() == 0:
        return y
    xp, wp = _nonempty(x), _nonempty(weight)
    bp_ = bias if bias is not None else wp
    common = dict(KH=KH, KW=KW, SH=SH, SW=SW, HAS_BIAS=bias is not None, ACT=int(act),
                  ACC=acc_dtype(x), UNROLL_KH=KH * KW <= UNROLL_MAX_TAPS, I64=I64)
    work = size_class(y.numel())
    if channels_last:
        npix = N * OH * OW
        _dw_fwd_nhwc_kernel[_pixel_grid(npix, OC)](
            xp, wp, bp_, y, npix, C, H, W, OC, OH, OW, M, PH, PW, DH, DW, work, **common)
    else:
        assert H * W <= _INT32_MAX and OH * OW <= _INT32_MAX, "one plane must fit int32"
        _dw_fwd_nchw_kernel[_plane_grid(N * OC, OH, OW)](
            xp, wp, bp_, y, C, H, W, OC, OH, OW, M, PH, PW, DH, DW, work, **common)
    return y


def depthwise_backward_input(grad: torch.Tensor, weight: torch.Tensor, in_size, stride,
                             padding, dilation, channels_last: bool) -> torch.Tensor:
    """grad_x (N, C, H, W) of the depthwise conv, from grad (N, C*m, OH, OW), the gradient
    w.r.t. the pre-activation output; in grad's layout. in_size = (C, H, W): grad and weight
    (C*m, 1, KH, KW) alone do not give C when m > 1.
    """
    grad = _in_format("grad", grad, channels_last)
    weight = weight.contiguous()
    N, OC, OH, OW = grad.shape
    OC_w, one, KH, KW = weight.shape
    assert OC_w == OC and one == 1 and weight.dtype == grad.dtype
    assert len(in_size) == 3, "in_size is (C, H, W)"
    C, H, W = (int(v) for v in in_size)
    SH, SW, PH, PW, DH, DW, I64 = _geometry((H, W), (OH, OW), (KH, KW), _pair(stride),
                                            _pair(padding), _pair(dilation))
    assert C > 0 and OC % C == 0, "the input channels must divide the output channels"
    M = OC // C
    gx_fmt = _fmt(channels_last)
    if grad.numel() == 0 or weight.numel() == 0:
        return torch.empty((N, C, H, W), dtype=grad.dtype, device=grad.device,
                           memory_format=gx_fmt).zero_()
    gx = torch.empty((N, C, H, W), dtype=grad.dtype, device=grad.device, memory_format=gx_fmt)
    if gx.numel() == 0:
        return gx
    common = dict(KH=KH, KW=KW, SH=SH, SW=SW, ACC=acc_dtype(grad), UNROLL_KH=False, I64=I64)
    work = size_class(gx.numel())
    if channels_last:
        npix = N * H * W
        _dw_bwd_in_nhwc_kernel[_pixel_grid(npix, C)](
            grad, weight, gx, npix, C, H, W, OC, OH, OW, M, PH, PW, DH, DW, work, **common)
    else:
        assert H * W <= _INT32_MAX and OH * OW <= _INT32_MAX, "one plane must fit int32"
        _dw_bwd_in_nchw_kernel[_plane_grid(N * C, H, W)](
            grad, weight, gx, C, H, W, OC, OH, OW, M, PH, PW, DH, DW, work, **common)
    return gx


def depthwise_backward_weight(grad: torch.Tensor, x: torch.Tensor, kernel_size, stride,
                              padding, dilation, channels_last: bool) -> torch.Tensor:
    """grad_weight (C*m, 1, KH, KW), contiguous, in x's dtype, from grad (N, C*m, OH, OW),
    the gradient w.r.t. the pre-activation output, and x (N, C, H, W) of the same layout.

    Deterministic: programs write fixed partial sums [S, C*m, KH*KW] (fp32; fp64 for fp64)
    that torch sums over S.
    """
    grad = _in_format("grad", grad, channels_last)
    x = _in_format("x", x, channels_last)
    N, OC, OH, OW = grad.shape
    Nx, C, H, W = x.shape
    assert Nx == N and C > 0 and OC % C == 0 and grad.dtype == x.dtype
    KH, KW = _pair(kernel_size)
    SH, SW, PH, PW, DH, DW, I64 = _geometry((H, W), (OH, OW), (KH, KW), _pair(stride),
                                            _pair(padding), _pair(dilation))
    M = OC // C
    KK = KH * KW
    if grad.numel() == 0 or x.numel() == 0 or KK == 0:
        return torch.zeros((OC, 1, KH, KW), dtype=x.dtype, device=x.device)
    KKP = _np2(KK)
    part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    common = dict(KH=KH, KW=KW, SH=SH, SW=SW, KKP=KKP, ACC=acc_dtype(x), I64=I64)
    npix = N * OH * OW
    work = size_class(npix)
    # S (the partial rows) from the prior's block: fixed before the autotuner picks a config
    if channels_last:
        BC = min(_np2(OC), 32)  # fixed by the shape (a key); the accumulator size is tuned
        nblk = triton.cdiv(npix, _wgrad_bp_nhwc(npix, KKP, BC, WGRAD_ACC))
        ctiles = triton.cdiv(OC, BC)
        S = _wgrad_splits(nblk, ctiles)
        part = torch.empty((S, OC, KK), dtype=part_dtype, device=x.device)
        _dw_bwd_w_nhwc_kernel[(ctiles, S)](grad, x, part, npix, S, work, C, H, W, OC, OH, OW,
                                           M, PH, PW, DH, DW, BC=BC, **common)
    else:
        assert H * W <= _INT32_MAX and OH * OW <= _INT32_MAX, "one plane must fit int32"
        nblk = triton.cdiv(npix, _wgrad_block_nchw(npix, KKP, WGRAD_ACC))
        S = _wgrad_splits(nblk, OC)
        part = torch.empty((S, OC, KK), dtype=part_dtype, device=x.device)
        _dw_bwd_w_nchw_kernel[(OC, S)](grad, x, part, npix, S, work, C, H, W, OC, OH, OW,
                                       M, PH, PW, DH, DW, **common)
    return part.sum(0).view(OC, 1, KH, KW).to(x.dtype)
