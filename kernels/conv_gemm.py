"""Triton convolution as a GEMM with a bias + activation epilogue: y = act(conv2d(x, w) + b),
the inference chain of conv_bn_act once BN is folded into w and b (one pass over the output).

The GEMM: rows are the M = N * OH * OW output pixels, columns the J = C_out / groups output
channels of one group, the reduction runs over K = kh * kw * C_in / groups, ordered (r, s, c)
with the input channel c fastest so that, on channels_last (NHWC) x, every K step reads
BLOCK_K consecutive channels of one input pixel. A 1x1 stride-1 convolution is then the plain
GEMM [M, C_in] x [C_in, C_out]; a kxk / strided / padded / dilated one is the implicit GEMM
(the im2col matrix is never written: each K step loads the shifted input pixel of tap (r, s)
with masked loads where it falls in the padding). Groups: the group index is the grid's second
axis, each group its own GEMM over its channel slice. Depthwise convolutions (groups == C_in)
never come here: the op delegates them to the depthwise family.

Layouts: x, weight and y are addressed through their four strides, so NHWC and NCHW (and any
other strided view) are read in place, no copy of x (a kxk weight whose input channels are
not adjacent is repacked to channels_last first, a copy of the small weight only). NHWC is
the fast layout (a K step is a contiguous run of channels, vectorized where ALIGN > 1); on
NCHW the tile's rows (pixels) are contiguous instead, which coalesces for stride 1 but is
not vectorized or pipelined (see below). y is allocated by the caller's rule (PyTorch's for
convolutions: channels_last if x or the weight is) and stored through its strides.

Precision: fp32 accumulation (tl.dot). float16/bfloat16 operands go to the tensor cores as
they are. float32 operands follow eager's F.conv2d: cuDNN convolutions may use TF32 unless the
user turned it off (torch.backends.cudnn.allow_tf32, True by default; torch >= 2.9 spells it
torch.backends.cudnn.conv.fp32_precision = "tf32"), so the launcher reads that flag at every
call and uses input_precision="tf32" when it is on and "ieee" (exact fp32 products) when off.
A float32 parity test on a GPU must therefore turn TF32 off for both (eager's TF32 algorithm
choice and rounding are cuDNN's, not comparable at assert_close's rtol). The interpreter
computes every dot in float32 whatever the flag. float64 is not served (the op keeps it on
ATen). The epilogue (bias, activation: kernels/_activation_math.apply_act) runs on the fp32
accumulator and the output is rounded once to x's dtype.

Roofline floors for judging a GPU run (H200 SXM: datasheet 989 TFLOP/s dense bf16 and
4.8 TB/s HBM3e; measured on these machines, /work/.library/device/H200.md -> KINDS.md:
~4.3 TB/s device-to-device copy and 769-798 TFLOP/s for an 8192^3 bf16 matmul), bf16, NHWC:
- MobileNetV2 1x1 expand 24->144 at 56x56, batch 256 (ReLU6): M = 802,816 pixels,
  5.55 GFLOP, 269.8 MB moved (x 38.5 MB, y 231.2 MB, weight 7 KB): 21 FLOP/B, memory-bound.
  Floor 56 us at 4.8 TB/s, 63 us at the measured 4.3 TB/s (compute: 7 us at 790 TFLOP/s).
  Eager eval (cuDNN conv, then BN and the activation as separate passes) moves ~1.2 GB:
  ~278 us at 4.3 TB/s, so the fused pass can be up to ~4.4x eager here.
- ResNet-50 3x3 64->64 at 56x56, batch 256 (ReLU): M = 802,816, K = 576, 59.2 GFLOP,
  205.6 MB moved: 288 FLOP/B, compute-bound (H200's ridge is ~206 FLOP/B). Floor 60 us at
  989 TFLOP/s, 75 us at the measured 790 (memory: 48 us at 4.3 TB/s). Eager's extra BN +
  activation passes add ~411 MB (~96 us), which only a conv near cuDNN's speed turns into a win.
(At batch 32 the same layers move 34 MB / 26 MB, within the 60 MB L2: floors there are
launch- and L2-bound, not HBM-bound.) To set a GPU run against them: ``fastblocks bench ops
--op conv_bn_act --dtype bfloat16 --layout channels_last --batch 256 --shapes resnet50
--shapes mobilenet_v2 --providers eager,compile,triton`` (eval: BN folded, this kernel).

Tiles: BLOCK_M pixels x BLOCK_N output channels, BLOCK_K channels per K step, all >= 16
(tl.dot's minimum); masked tails in every dimension. The K loop is one flat loop over
(tap, channel block) pairs so that Triton's software pipelining (num_stages) covers the whole
reduction, also when C_in / groups fits in one block (1x1 layers). Autotuned per shape class
(below); NOT run, tuned or timed on a GPU yet: tested only under TRITON_INTERPRET=1.
Compiled ahead of time for sm_90 on the CPU dev VM (Triton 3.9, triton.compile with
GPUTarget("cuda", 90, 32)): every config builds, in bf16/fp16 and fp32 (tf32 and ieee), 1x1
and 3x3. With ALIGN > 1 (NHWC x, channels_last or 1x1 weight, channel counts per group and
strides multiples of 16 bytes: the launcher's vector_align) the PTX has wgmma, cp.async
loads with num_stages buffers (bf16 128x128x64, 3 stages: 96 KB shared; fp32 192 KB) and
16-byte vector stores; with ALIGN = 1 (NCHW, or channels not a multiple of 8 in 16-bit)
wgmma still, but scalar 2-byte loads and stores and no pipelining.
"""
import os

import torch
import triton
import triton.language as tl

from ._activation_math import apply_act


def _configs():
    """GEMM tile configs. Under the interpreter (programs run one after another in numpy) one
    small config, so tests stay fast and nothing is benchmarked. On a GPU a few Hopper
    starting points (priors, not a sweep): wide-N tiles for the memory-bound 1x1 expansions
    (C_out 96-1152 over K 16-160), square-ish tiles with deep K for the dense 3x3 layers, a
    narrow-N tile for the projections to 16-40 channels."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1,
                              num_stages=1)]
    shapes = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 256, 32, 8, 3),
        (128, 32, 32, 4, 4),
        (64, 64, 32, 4, 4),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w,
                          num_stages=s) for m, n, k, w, s in shapes]


def _pow2_at_least_16(v: int) -> int:
    return max(16, triton.next_power_of_2(int(v)))


def _prune(configs, named_args, **kwargs):
    """Drop tiles wider than the group's output channels (J) or deeper than its input
    channels (CG), each rounded up to a power of two and to at least 32: the extra columns or
    K steps only multiply zeros, and each config costs a compile and a benchmark per shape
    class (MobileNetV2's 24->144 expansion keeps the 4 BLOCK_K = 32 tiles, ResNet-50's
    3x3 64->64 the 3 with BLOCK_N <= 64). The smallest tile survives always."""
    j, cg = _pow2_at_least_16(named_args["J"]), _pow2_at_least_16(named_args["CG"])
    kept = [c for c in configs
            if c.kwargs["BLOCK_N"] <= max(32, j) and c.kwargs["BLOCK_K"] <= max(32, cg)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


CONFIGS = _configs()
# Shape class: everything that changes the best tile except the exact pixel count, which is
# bucketed by powers of two (M_CLASS), so a new batch size or resolution of the same layer
# retunes at most once per doubling. Tensor dtypes are part of Triton's key already.
AUTOTUNE_KEY = ["M_CLASS", "CG", "J", "KH", "KW", "STRIDE_H", "STRIDE_W", "PADDED"]


def _autotune(fn):
    kwargs = {"configs": CONFIGS, "key": AUTOTUNE_KEY}
    if len(CONFIGS) > 1:
        kwargs["prune_configs_by"] = {"early_config_prune": _prune}
    return triton.autotune(**kwargs)(fn)


@_autotune
@triton.jit(do_not_specialize=["M_CLASS"])  # read by the autotuner only: no variants for it
def _conv_gemm_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                      M, OHW, OW, H, W, CG, J,
                      sx_n, sx_c, sx_h, sx_w,
                      sw_o, sw_c, sw_h, sw_w,
                      sy_n, sy_c, sy_h, sy_w,
                      STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
                      M_CLASS,  # autotune key only
                      KH: tl.constexpr, KW: tl.constexpr, PADDED: tl.constexpr,
                      HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                      ALIGN: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    if ALIGN > 1:
        # The launcher checked that these are multiples of ALIGN elements (16 bytes) and the
        # pointers 16-byte aligned; rounding them down (a no-op) tells Triton's alignment
        # analysis, which otherwise knows only divisibility by 16 from specialisation. Then
        # the masks are constant and the addresses aligned over ALIGN channels, and the loads
        # become cp.async (pipelined) and the stores 16-byte vectors: sm_90 AOT PTX of the
        # bf16 1x1 24->144 tile, 64x128x32: 24 cp.async and 8 st.global.v4 per thread, where
        # without it 49 ld.global.b16 and 64 st.global.b16 (no pipelining). tl.multiple_of
        # on the arguments left the loads scalar (Triton 3.9).
        CG = CG // ALIGN * ALIGN
        J = J // ALIGN * ALIGN
        sx_n = sx_n // ALIGN * ALIGN
        sx_h = sx_h // ALIGN * ALIGN
        sx_w = sx_w // ALIGN * ALIGN
        sw_o = sw_o // ALIGN * ALIGN
        sw_h = sw_h // ALIGN * ALIGN
        sw_w = sw_w // ALIGN * ALIGN
        sy_n = sy_n // ALIGN * ALIGN
        sy_h = sy_h // ALIGN * ALIGN
        sy_w = sy_w // ALIGN * ALIGN
    # output-channel tiles vary fastest: the programs sharing an input tile run together and
    # find it in L2 (a 1x1 expansion's J spans 1-5 tiles)
    num_n = tl.cdiv(J, BLOCK_N)
    pid = tl.program_id(0)
    pid_m = (pid // num_n).to(tl.int64)
    pid_n = pid % num_n
    g = tl.program_id(1).to(tl.int64)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)        # output pixels
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                     # channels within group g
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < J
    img = rm // OHW
    pix = rm % OHW
    oh = pix // OW
    ow = pix % OW
    ih0 = oh * STRIDE_H - PAD_H        # may be negative (padding): never divided, only masked
    iw0 = ow * STRIDE_W - PAD_W
    x_rows = img * sx_n + (g * CG) * sx_c                             # [BLOCK_M] offsets
    w_cols = (g * J + rn).to(tl.int64) * sw_o                         # [BLOCK_N] offsets

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kc = tl.cdiv(CG, BLOCK_K)          # channel blocks per tap
    for it in range(0, KH * KW * kc):
        tap = it // kc
        c0 = (it - tap * kc) * BLOCK_K
        r = tap // KW
        s = tap - r * KW
        ih = ih0 + r * DIL_H
        iw = iw0 + s * DIL_W
        row_ok = m_ok
        if PADDED:
            row_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        kk = c0 + rk
        k_ok = kk < CG
        x_off = x_rows + ih * sx_h + iw * sx_w
        w_off = w_cols + (r * sw_h + s * sw_w)
        a = tl.load(x_ptr + x_off[:, None] + kk.to(tl.int64)[None, :] * sx_c,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + w_off[None, :] + (kk * sw_c)[:, None],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + g * J + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_act(acc, ACT)
    y_rows = img * sy_n + oh * sy_h + ow * sy_w
    y_cols = (g * J + rn).to(tl.int64) * sy_c
    tl.store(y_ptr + y_rows[:, None] + y_cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fp32_precision() -> str:
    """The tl.dot input precision matching eager's float32 convolution: "tf32" where cuDNN
    convolutions may use TF32 (PyTorch's default), "ieee" where the user turned that off."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    precision = getattr(conv, "fp32_precision", None)
    if precision is None:  # torch < 2.9: the legacy flag only
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    if precision == "none":  # inherits the cuDNN-wide, then the global setting
        precision = getattr(torch.backends.cudnn, "fp32_precision", "none")
        if precision == "none":
            precision = getattr(torch.backends, "fp32_precision", "ieee")
    return "tf32" if precision == "tf32" else "ieee"


def _strides(t: torch.Tensor) -> tuple:
    """t's strides with 0 for size-1 dims (their index is always 0, and PyTorch leaves any
    stride there, e.g. 1 for a 1x1 kernel, which would hide the alignment of the others)."""
    return tuple(0 if n == 1 else st for n, st in zip(t.shape, t.stride()))


def vector_align(element_size: int, cg: int, j: int, xs, ws, ys) -> int:
    """The kernel's ALIGN: 16 bytes in elements where the channel counts per group and the
    pixel/filter strides of x, weight and y (size-1 dims as 0) are all multiples of it (the
    kernel rounds them down to multiples of ALIGN, which must be a no-op), else 1."""
    align = 16 // element_size
    rounded = (cg, j, xs[0], xs[2], xs[3], ws[0], ws[2], ws[3], ys[0], ys[2], ys[3])
    return 1 if any(v % align for v in rounded) else align


def conv_bias_act_forward(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding,
                          dilation, groups: int, act: int, channels_last: bool) -> torch.Tensor:
    """act(F.conv2d(x, weight, bias, stride, padding, dilation, groups)).

    x: (N, C_in, H, W) float16/bfloat16/float32, any strides (NHWC fastest); weight
    (C_out, C_in / groups, kh, kw), x's dtype, any strides; bias (C_out,) or None; stride,
    padding (symmetric), dilation: pairs of ints; act: activation code (ops/_activation_codes).
    Returns (N, C_out, OH, OW) in x's dtype, contiguous in NHWC if `channels_last` else NCHW.
    Raises ValueError for a dtype outside DTYPES or mismatched shapes (the op validates the
    public arguments before this)."""
    if x.dtype not in DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"conv_bias_act_forward takes float16/bfloat16/float32 x and weight of "
                         f"one dtype, got {x.dtype} and {weight.dtype}")
    n, c_in, h, w = x.shape
    c_out, cg, kh, kw = weight.shape
    if cg * groups != c_in or c_out % groups:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit C_in = {c_in} with "
                         f"groups = {groups}")
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, c_out, max(oh, 0), max(ow, 0)), dtype=x.dtype, device=x.device,
                    memory_format=fmt)
    m = y.shape[0] * y.shape[2] * y.shape[3]
    if m == 0:
        return y
    j = c_out // groups
    if weight.stride(1) != 1 and cg > 1:
        # PyTorch's default kxk weight has its input channels kh*kw apart: every B-tile element
        # would be its own 32-byte sector read. Repacked to (C_out, kh, kw, C_in/g) once per
        # call, a K step reads contiguous runs. The weight is small (at most a few MB for the
        # networks' layers) and the 1x1 default layout needs no copy.
        weight = weight.contiguous(memory_format=torch.channels_last)
    if bias is not None:
        bias = bias.contiguous()

    xs, ws, ys = _strides(x), _strides(weight), _strides(y)
    align = vector_align(x.element_size(), cg, j, xs, ws, ys)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(j, meta["BLOCK_N"]), groups)

    _conv_gemm_kernel[grid](
        x, weight, weight if bias is None else bias, y,
        m, oh * ow, ow, h, w, cg, j,
        *xs, *ws, *ys,
        sh, sw, ph, pw, dh, dw, m.bit_length(),
        KH=kh, KW=kw, PADDED=bool(ph or pw), HAS_BIAS=bias is not None, ACT=act,
        PRECISION=fp32_precision() if x.dtype == torch.float32 else "tf32", ALIGN=align)
    return y
