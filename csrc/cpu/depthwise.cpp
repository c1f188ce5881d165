// CPU kernels of the depthwise family: F.conv2d(x, weight, bias, stride, padding, dilation,
// groups=C) followed by an activation, its input gradient and its weight gradient, for NCHW and
// channels_last, any kernel size, stride, dilation, top/left padding and channel multiplier.
//
// NCHW: each (n, c) plane is copied (and converted to the accumulation type) into a zero-padded
// scratch split into stride phases, P[row % sh][col % sw][row / sh][col / sw]. There every
// kernel tap reads a contiguous run at a fixed offset, so a whole output plane is one 1-d sum,
// out[f] = sum_t w_t * P[base_t + f], f running over output rows of the scratch width (the few
// columns past OW are computed and dropped): no branch, no border case, 8 vectors in registers.
// Planes of one channel for several images share a call where the gaps between them are small.
// The input gradient is the same sum per residue class (ih % sh, iw % sw) over zero-padded
// gradient planes; the weight gradient is a dot product per tap of the gradient plane (zero in
// the dropped columns) with the same runs.
// NCHW planes of up to 1024 pixels (m == 1, C >= one vector) skip the phase split: a task takes
// one image's block of L channels (L = vector lanes), transposes it into pixel vectors (16x16
// register transposes with AVX-512), runs the channels_last row kernels below and transposes the
// result back, as oneDNN does with its 16-channel blocked layout; the input and weight gradients
// likewise. For 32x960x7x7 3x3, eager time / ours went from 0.8x (0.42x in a full bench run) to
// 1.2-1.9x for the forward, 0.8-0.9x to 1.2-1.5x for the input gradient and 0.4-0.7x to
// 1.1-1.9x for the weight gradient (2-thread AMD EPYC dev box, interleaved with eager in one
// process, several processes; eager's speed varies from process to process).
// channels_last: vectors run over channels. Each task (image, channel chunk, band of rows)
// keeps zero-padded copies of the source rows it reads in a small ring, so no output pixel is
// a border case (fp32/fp64 forwards with sliding rows read the input in place instead, border
// pixels through a row of zeros). Inputs and outputs that outgrow the cache are prefetched a
// row ahead, a few lines per register block, and fp32/fp64 outputs are written past the cache
// (non-temporal stores). Rows whose column taps are consecutive source pixels use sliding blocks (up to
// 8 pixels x one vector, every source vector loaded once and multiplied by all the kernel
// columns it meets, in registers): forward rows of 3/5/7-wide kernels at stride 1 or 2, and the
// input gradient's residue classes of 2-5 or 7 taps; other rows take 4 pixels x 4 vectors.
// (Sliding the stride-2 rows took 32x240x28x28 5x5 and 32x672x14x14 5x5 stride-2 channels_last
// forwards from 1.01x to 1.14-1.19x eager's speed, in-process on the 2-thread dev box.)
// The weight gradient walks whole rows over all channels, in a fixed number of row chunks;
// dilation-1 kernel rows 3, 5 or 7 wide at stride 1 or 2 keep a block of gradient vectors in
// registers and load each source vector once for all its taps (3x3: the three kernel rows
// together, 9 independent sums). Multiplier m > 1, and C below one vector, go through the NCHW
// kernels and a layout copy (rare in real networks).
//
// Vectors are GCC vector extensions compiled three times (AVX-512, AVX2+FMA, SSE2) in
// `#pragma GCC target` regions and picked once at run time, so the binary runs on any x86-64;
// FASTBLOCKS_CPU_ISA=avx2|sse2 forces a narrower one (tests use it to cover all three).
// fp16/bf16 accumulate in float, fp32 in float, fp64 in double; in channels_last the forward
// and input gradient widen fp16/bf16 rows as they copy them into the ring and narrow each output
// row once, in vector registers (the weight gradient still works on float copies of grad and
// x); NCHW widens each
// plane or channel block and narrows each output plane (widen_n/narrow_n). Weight-gradient
// sums run 16-64 products per lane in the accumulation type, then add up in double; every
// output element is produced by one task in a fixed order, so results do not depend on the
// number of threads or on which thread ran a task.
// With inf/NaN in x, the phase-split NCHW weight-gradient kernel (m > 1 or C < one vector, in
// either layout) multiplies the zero columns of its padded gradient planes by x, which makes
// NaN of taps that eager keeps finite; a channel whose sums come out non-finite is therefore
// summed again directly over its valid pixels (weight_grad_channel_direct).
// Geometries whose scratch above would outgrow the tensors (huge strides, paddings, dilations)
// take the scratch-free kernels of depthwise_direct.cpp instead (direct::preferred).
// Inputs in any strides are first brought once into the layout `channels_last` names
// (depthwise_args.h: in_format), so expanded or size-1-strided gradients are never refused.
//
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/depthwise_args.h"
#include "fastblocks/depthwise_direct.h"
#include "fastblocks/cpu_vec.h"

// The kernels pass GCC vector types between always-inline helpers only; the ABI note about
// 64-byte vectors without AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FB_AI inline __attribute__((always_inline))
#define FB_AI_LAMBDA __attribute__((always_inline))

namespace fastblocks::cpu {
namespace {

// ---- integer helpers (divisors are positive) ------------------------------------------------

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }
inline int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---- vectors --------------------------------------------------------------------------------

template <typename T, int VB>
struct VecT {
  typedef T type __attribute__((vector_size(VB)));
};
template <typename T, int VB>
using Vec = typename VecT<T, VB>::type;

template <typename T, int VB>
FB_AI Vec<T, VB> vload(const T* p) {
  Vec<T, VB> v;
  std::memcpy(&v, p, VB);
  return v;
}
template <typename T, int VB>
FB_AI void vstore(T* p, const Vec<T, VB>& v) {
  std::memcpy(p, &v, VB);
}
// Non-temporal store to a VB-aligned address. Inline assembly rather than the intrinsics: these
// templates are defined once and compiled into all three ISA regions, and GCC will not inline
// an ISA-specific intrinsic into a function defined outside its #pragma target.
template <typename T, int VB>
FB_AI void vstream(T* p, const Vec<T, VB>& v) {
  auto* m = reinterpret_cast<Vec<T, VB>*>(p);
  if constexpr (VB == 16) {
    asm volatile("movntdq %1, %0" : "=m"(*m) : "x"(v));
  } else {
    asm volatile("vmovntdq %1, %0" : "=m"(*m) : "v"(v));
  }
}
template <typename T, int VB>
FB_AI Vec<T, VB> vsplat(T s) {
  return Vec<T, VB>{} + s;
}

// ---- NCHW: 1-d tap sums over phase-split scratch planes --------------------------------------

// out[f] = init + sum_t w[t] * P[base[t] + f] for f in [f, nflat) in blocks of U vectors.
template <typename T, int VB, int U>
FB_AI int64_t flat_conv_blocks(const T* P, const int64_t* base, const T* w, int nt, T init,
                               T* out, int64_t f, int64_t nflat) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  for (; f + U * L <= nflat; f += U * L) {
    V acc[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[u] = vsplat<T, VB>(init);
    for (int t = 0; t < nt; ++t) {
      const V wv = vsplat<T, VB>(w[t]);
      const T* src = P + base[t] + f;
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[u] += wv * vload<T, VB>(src + u * L);
    }
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) vstore<T, VB>(out + f + u * L, acc[u]);
  }
  return f;
}

// nflat must be a multiple of the vector length; P must hold base[t] + nflat for every t.
template <typename T, int VB>
FB_AI void flat_conv_impl(const T* P, const int64_t* base, const T* w, int nt, T init, T* out,
                          int64_t nflat) {
  int64_t f = flat_conv_blocks<T, VB, 8>(P, base, w, nt, init, out, 0, nflat);
  f = flat_conv_blocks<T, VB, 4>(P, base, w, nt, init, out, f, nflat);
  f = flat_conv_blocks<T, VB, 2>(P, base, w, nt, init, out, f, nflat);
  flat_conv_blocks<T, VB, 1>(P, base, w, nt, init, out, f, nflat);
}

// D[t*L .. t*L + L) += lanes of sum_f G[f] * P[base[t] + f]: runs of 16 products per lane in T,
// then added into double lanes (reduced across lanes once per channel, by the caller).
template <typename T, int VB>
FB_AI void flat_dot_impl(const T* G, const T* P, const int64_t* base, int nt, int64_t nflat,
                         double* D) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  using DV = Vec<double, L * sizeof(double)>;
  constexpr int64_t kChunk = 64 * L;
  for (int64_t c0 = 0; c0 < nflat; c0 += kChunk) {
    const int64_t c1 = std::min(nflat, c0 + kChunk);
    for (int t = 0; t < nt; ++t) {
      const T* src = P + base[t];
      V a[4] = {};
      int64_t f = c0;
      for (; f + 4 * L <= c1; f += 4 * L) {
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) a[u] += vload<T, VB>(G + f + u * L) * vload<T, VB>(src + f + u * L);
      }
      for (; f < c1; f += L) a[0] += vload<T, VB>(G + f) * vload<T, VB>(src + f);
      DV d;
      std::memcpy(&d, D + t * L, sizeof(DV));
      d += __builtin_convertvector((a[0] + a[1]) + (a[2] + a[3]), DV);
      std::memcpy(D + t * L, &d, sizeof(DV));
    }
  }
}

template <typename T, int VB, size_t... I>
FB_AI Vec<T, VB> even_lanes(const Vec<T, VB>& a, const Vec<T, VB>& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}

// Phase-split zero-padded copy of plane x (H, W): P[((b*sw + p)*A + a)*PW + j] =
// x[a*sh + b - ph][j*sw + p - pw]. The zero border is the same for every plane, so the scratch
// is zeroed once and each plane only copies its rows: P[dst + j] = x[src + j*sw], j < n.
struct RowCopy {
  int64_t src, dst, n;
};

template <typename T, int VB>
FB_AI void fill_phases_impl(const T* x, const RowCopy* ops, int64_t nops, int64_t sw, T* P) {
  constexpr int64_t L = VB / sizeof(T);
  for (int64_t i = 0; i < nops; ++i) {
    const T* src = x + ops[i].src;
    T* dst = P + ops[i].dst;
    const int64_t n = ops[i].n;
    if (sw == 1) {
      std::memcpy(dst, src, n * sizeof(T));
    } else if (sw == 2) {
      int64_t j = 0;
      // j + L < n keeps the second load inside the row's valid range.
      for (; j + L < n; j += L) {
        vstore<T, VB>(dst + j, even_lanes<T, VB>(vload<T, VB>(src + 2 * j), vload<T, VB>(src + 2 * j + L),
                                                  std::make_index_sequence<L>{}));
      }
      for (; j < n; ++j) dst[j] = src[2 * j];
    } else {
      for (int64_t j = 0; j < n; ++j) dst[j] = src[j * sw];
    }
  }
}

// row[2t] = e[t] (2t < n), row[2t + 1] = o[t] (2t + 1 < n).
template <typename T, int VB, size_t... I>
FB_AI Vec<T, VB> zip_lo(const Vec<T, VB>& a, const Vec<T, VB>& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) ? sizeof...(I) + I / 2 : I / 2)...);
}
template <typename T, int VB, size_t... I>
FB_AI Vec<T, VB> zip_hi(const Vec<T, VB>& a, const Vec<T, VB>& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) ? sizeof...(I) + sizeof...(I) / 2 + I / 2 : sizeof...(I) / 2 + I / 2)...);
}

template <typename T, int VB>
FB_AI void interleave2_impl(const T* e, const T* o, T* row, int64_t n) {
  constexpr int64_t L = VB / sizeof(T);
  int64_t t = 0;
  for (; 2 * (t + L) <= n; t += L) {
    const Vec<T, VB> ve = vload<T, VB>(e + t), vo = vload<T, VB>(o + t);
    vstore<T, VB>(row + 2 * t, zip_lo<T, VB>(ve, vo, std::make_index_sequence<L>{}));
    vstore<T, VB>(row + 2 * t + L, zip_hi<T, VB>(ve, vo, std::make_index_sequence<L>{}));
  }
  for (; 2 * t < n; ++t) {
    row[2 * t] = e[t];
    if (2 * t + 1 < n) row[2 * t + 1] = o[t];
  }
}

// ---- channels_last: vectors over channels ----------------------------------------------------

// One output row of one channel chunk: dst[t] (t < count, pixel stride dst_step) = bias +
// sum over source rows r and column taps ci of wrows[r][wcol[ci] + c] * rows[r][(q[ci] +
// t*step)*C + c]. The source rows are zero-padded copies, so every read is inside them. Serves
// the forward (source = input rows) and the input gradient (source = gradient rows, one residue
// class of output columns).
constexpr int64_t kNoBorder = std::numeric_limits<int64_t>::max();

// Whether a row of ncol column taps on consecutive source pixels takes sliding register blocks
// (nhwc_row_slide) at this output step; other rows take the generic blocks, which read only
// ring rows.
constexpr bool slides(int64_t step, int64_t ncol) {
  return step == 1 ? (ncol >= 2 && ncol <= 5) || ncol == 7 : step == 2 && (ncol == 3 || ncol == 5 || ncol == 7);
}

// Software prefetch of source rows that a later output row will copy into its ring, spread
// over the register blocks of the current row, a few cache lines per block. Issued as one burst
// per row (the copy's own prefetch of the next row), the lines queued behind the miss buffers:
// at batch 32, 14x14 and 7x7 channels_last forwards spent as long copying rows from memory as
// computing (perf, 32x672x14x14 5x5). rows: the rows' first pixel at the chunk's first channel.
struct RowPrefetch {
  const char* rows[8];
  int nrows = 0;
  int64_t pix_stride = 0, pix_bytes = 0, npix = 0;  // bytes between pixels, bytes per pixel
  int per_step = 0;
  int r = 0;
  int64_t p = 0, off = 0;
  // The lines of [first byte, last byte + 63] of each pixel: every line the pixel touches,
  // whatever its alignment.
  FB_AI void step() {
    for (int i = 0; i < per_step && r < nrows; ++i) {
      __builtin_prefetch(rows[r] + p * pix_stride + off, 0, 2);
      off += 64;
      if (off >= pix_bytes + 63) {
        off = 0;
        if (++p == npix) {
          p = 0;
          ++r;
        }
      }
    }
  }
  void finish() {
    per_step = std::numeric_limits<int>::max();
    step();
  }
};

template <typename T>
struct NhwcRow {
  const T* const* rows;   // padded source rows, at the chunk's first channel
  const T* const* wrows;  // per source row: its kernel row's weights, at the chunk's first channel
  int nrows;
  const int64_t* q;
  const int64_t* wcol;
  int ncol;
  int64_t step, count;
  T* dst;  // at the chunk's first channel
  int64_t dst_step;
  int64_t C;      // source pixel stride
  int64_t width;  // channels in the chunk (>= one vector)
  const T* bias;  // at the chunk's first channel, may be null
  const T** scratch;  // 2 * nrows * ncol pointers
  RowPrefetch* pf;    // may be null
  // Rows read in place rather than from the ring (sliding rows only): padded pixel p is source
  // pixel p - src_off, and source pixels outside [0, src_pixels) read as zeros (>= width zeros).
  // Ring rows: src_off 0, src_pixels kNoBorder.
  int64_t src_off = 0, src_pixels = kNoBorder;
  const T* zeros = nullptr;
};

constexpr int kUP = 4;  // output pixels per generic register block

// Outputs t .. t+UP, channels c0 + [0, UC*L): tap k of pixel u reads tsrc[k] + off + u*ps
// (off = t*ps + c0) with weights tw[k] + c0.
template <typename T, int VB, int UP, int UC>
FB_AI void nhwc_block(const T* const* tsrc, const T* const* tw, int ntap, int64_t ps, int64_t off, int64_t c0,
                      const T* bias, T* dst, int64_t dst_step) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  V acc[UP][UC];
#pragma GCC unroll 4
  for (int c = 0; c < UC; ++c) {
    const V b = bias ? vload<T, VB>(bias + c * L) : V{};
#pragma GCC unroll 8
    for (int u = 0; u < UP; ++u) acc[u][c] = b;
  }
  for (int k = 0; k < ntap; ++k) {
    const T* w = tw[k] + c0;
    V wv[UC];
#pragma GCC unroll 4
    for (int c = 0; c < UC; ++c) wv[c] = vload<T, VB>(w + c * L);
    // One pointer per pixel, channel vectors at constant displacements: keeps the address
    // arithmetic within the integer registers.
    const T* src = tsrc[k] + off;
#pragma GCC unroll 8
    for (int u = 0; u < UP; ++u) {
#pragma GCC unroll 4
      for (int c = 0; c < UC; ++c) acc[u][c] += wv[c] * vload<T, VB>(src + c * L);
      src += ps;
    }
  }
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) {
#pragma GCC unroll 4
    for (int c = 0; c < UC; ++c) vstore<T, VB>(dst + u * dst_step + c * L, acc[u][c]);
  }
}

// Outputs t .. t+UP at step SW whose KW column taps are consecutive source pixels q0 + j
// (weights at wcol[j]): output u reads source pixels (t+u)*SW + q0 + j, so the (UP-1)*SW + KW
// source vectors of a block are each loaded once and meet all their taps in registers (about
// 0.4 loads per FMA for a 5-wide kernel at step 1, 0.6 at step 2, instead of 1.25).
template <typename T, int VB, int KW, int SW, int UP, bool BORDER>
FB_AI void nhwc_slide(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol, int64_t t, int64_t c0) {
  using V = Vec<T, VB>;
  const int64_t C = a.C;
  V acc[UP];
  const V b = a.bias ? vload<T, VB>(a.bias + c0) : V{};
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) acc[u] = b;
  const int64_t p0 = q0 + t * SW - a.src_off;  // source pixel of i = 0 (>= 0 unless BORDER)
  for (int r = 0; r < a.nrows; ++r) {
    V wv[KW];
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j) wv[j] = vload<T, VB>(a.wrows[r] + wcol[j] + c0);
    const T* src = a.rows[r] + c0;
#pragma GCC unroll 32
    for (int i = 0; i < (UP - 1) * SW + KW; ++i) {
      V xv;
      if constexpr (BORDER) {
        const int64_t p = p0 + i;
        xv = vload<T, VB>(uint64_t(p) < uint64_t(a.src_pixels) ? src + p * C : a.zeros + c0);
      } else {
        xv = vload<T, VB>(src + (p0 + i) * C);
      }
#pragma GCC unroll 8
      for (int u = 0; u < UP; ++u) {
        const int j = i - u * SW;
        if (j >= 0 && j < KW) acc[u] += wv[j] * xv;
      }
    }
  }
  T* dst = a.dst + t * a.dst_step + c0;
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) vstore<T, VB>(dst + u * a.dst_step, acc[u]);
}

// Block starts covering [0, count) with blocks of up pixels; the last block overlaps its
// neighbour rather than shrinking (the same values are stored twice). Requires count >= up.
#define FB_DW_FOR_BLOCKS(t, count, up) \
  for (int64_t t##_i = 0, t = 0; t##_i < (count); t##_i += (up), t = std::min(t##_i, (count) - (up)))

template <typename T, int VB, int KW, int SW, int UP>
FB_AI void nhwc_row_slide_up(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol) {
  constexpr int64_t L = VB / sizeof(T);
  for (int64_t cb = 0; cb < a.width; cb += L) {
    const int64_t c0 = std::min(cb, a.width - L);  // the last vector overlaps its neighbour
    FB_DW_FOR_BLOCKS(t, a.count, UP) {
      const int64_t p0 = q0 + t * SW - a.src_off;
      if (p0 >= 0 && p0 + (UP - 1) * SW + KW <= a.src_pixels) {
        nhwc_slide<T, VB, KW, SW, UP, false>(a, q0, wcol, t, c0);
      } else {
        nhwc_slide<T, VB, KW, SW, UP, true>(a, q0, wcol, t, c0);
      }
      if (a.pf) a.pf->step();
    }
  }
}

// Blocks of up to 8 pixels (8 sums + KW weights + 1 source vector fit 16 registers), as even as
// possible: a 14-wide row takes 7 + 7, not 8 + 8 overlapping.
template <typename T, int VB, int KW, int SW>
FB_AI void nhwc_row_slide(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol) {
  const int64_t up = a.count <= 8 ? a.count : ceil_div(a.count, ceil_div(a.count, 8));
  switch (up) {
    case 1: return nhwc_row_slide_up<T, VB, KW, SW, 1>(a, q0, wcol);
    case 2: return nhwc_row_slide_up<T, VB, KW, SW, 2>(a, q0, wcol);
    case 3: return nhwc_row_slide_up<T, VB, KW, SW, 3>(a, q0, wcol);
    case 4: return nhwc_row_slide_up<T, VB, KW, SW, 4>(a, q0, wcol);
    case 5: return nhwc_row_slide_up<T, VB, KW, SW, 5>(a, q0, wcol);
    case 6: return nhwc_row_slide_up<T, VB, KW, SW, 6>(a, q0, wcol);
    case 7: return nhwc_row_slide_up<T, VB, KW, SW, 7>(a, q0, wcol);
    default: return nhwc_row_slide_up<T, VB, KW, SW, 8>(a, q0, wcol);
  }
}

template <typename T, int VB, int UP, int UC>
FB_AI void nhwc_slab(const NhwcRow<T>& a, const T* const* tsrc, const T* const* tw, int ntap, int64_t c0) {
  const int64_t ps = a.step * a.C;
  const T* bias = a.bias ? a.bias + c0 : nullptr;
  if (UP > 1) {
    FB_DW_FOR_BLOCKS(t, a.count, UP) {
      nhwc_block<T, VB, UP, UC>(tsrc, tw, ntap, ps, t * ps + c0, c0, bias, a.dst + t * a.dst_step + c0, a.dst_step);
      if (a.pf) a.pf->step();
    }
  } else {
    for (int64_t t = 0; t < a.count; ++t) {
      nhwc_block<T, VB, 1, UC>(tsrc, tw, ntap, ps, t * ps + c0, c0, bias, a.dst + t * a.dst_step + c0, a.dst_step);
      if (a.pf) a.pf->step();
    }
  }
}

template <typename T, int VB>
FB_AI void nhwc_row_generic(const NhwcRow<T>& a) {
  constexpr int64_t L = VB / sizeof(T);
  // Register blocks of 4 pixels x UC vectors (4 x 4 zmm with AVX-512, 4 x 2 with 16 registers);
  // channels left over take 4 pixels x 1 vector; rows shorter than 4 pixels go one at a time.
  constexpr int UC = VB == 64 ? 4 : 2;
  const int ntap = a.nrows * a.ncol;
  const T** tsrc = a.scratch;
  const T** tw = a.scratch + ntap;
  for (int k = 0, r = 0; r < a.nrows; ++r) {
    for (int ci = 0; ci < a.ncol; ++ci, ++k) {
      tsrc[k] = a.rows[r] + a.q[ci] * a.C;
      tw[k] = a.wrows[r] + a.wcol[ci];
    }
  }
  int64_t cb = 0;
  if (a.count >= kUP) {
    for (; cb + UC * L <= a.width; cb += UC * L) nhwc_slab<T, VB, kUP, UC>(a, tsrc, tw, ntap, cb);
    for (; cb < a.width; cb += L) nhwc_slab<T, VB, kUP, 1>(a, tsrc, tw, ntap, std::min(cb, a.width - L));
  } else {
    for (; cb + UC * L <= a.width; cb += UC * L) nhwc_slab<T, VB, 1, UC>(a, tsrc, tw, ntap, cb);
    for (; cb < a.width; cb += L) nhwc_slab<T, VB, 1, 1>(a, tsrc, tw, ntap, std::min(cb, a.width - L));
  }
}

template <typename T, int VB>
FB_AI void nhwc_row_impl(const NhwcRow<T>& a) {
  // Sliding blocks need column taps on consecutive source pixels (in any order): at step 1 the
  // forward's 3/5/7-wide rows and the input gradient's residue classes (2-4 taps at stride 2),
  // at step 2 the forward's 3/5/7-wide rows.
  if (slides(a.step, a.ncol)) {
    int64_t order[7], wcol[7];
    for (int i = 0; i < a.ncol; ++i) order[i] = i;
    std::sort(order, order + a.ncol, [&](int64_t x, int64_t y) { return a.q[x] < a.q[y]; });
    const int64_t q0 = a.q[order[0]];
    bool consecutive = true;
    for (int i = 0; i < a.ncol; ++i) {
      consecutive = consecutive && a.q[order[i]] == q0 + i;
      wcol[i] = a.wcol[order[i]];
    }
    if (consecutive && a.step == 1) {
      switch (a.ncol) {
        case 2: return nhwc_row_slide<T, VB, 2, 1>(a, q0, wcol);
        case 3: return nhwc_row_slide<T, VB, 3, 1>(a, q0, wcol);
        case 4: return nhwc_row_slide<T, VB, 4, 1>(a, q0, wcol);
        case 5: return nhwc_row_slide<T, VB, 5, 1>(a, q0, wcol);
        default: return nhwc_row_slide<T, VB, 7, 1>(a, q0, wcol);
      }
    }
    if (consecutive) {
      switch (a.ncol) {
        case 3: return nhwc_row_slide<T, VB, 3, 2>(a, q0, wcol);
        case 5: return nhwc_row_slide<T, VB, 5, 2>(a, q0, wcol);
        default: return nhwc_row_slide<T, VB, 7, 2>(a, q0, wcol);
      }
    }
  }
  nhwc_row_generic<T, VB>(a);
}

// Calls f(p, c0) for every vector of L channels of pixels p < npix (width >= L channels): a
// pixel's last vector overlaps the one before it where L does not divide width.
template <int64_t L, typename F>
FB_AI void for_pixel_vectors(int64_t npix, int64_t width, const F& f) {
  for (int64_t p = 0; p < npix; ++p) {
    for (int64_t c = 0; c < width; c += L) f(p, std::min(c, width - L));
  }
}

// dst[p * dstride + c] = src[p * sstride + c] for p < npix, c < width (width >= one vector).
// STREAM: non-temporal stores where dst is vector-aligned, so an output row bound for memory is
// written without first being read into cache (a third of a streaming layer's traffic); each
// thread fences (_mm_sfence) after its last row.
template <typename T, int VB, bool STREAM>
FB_AI void copy_pixels_impl(const T* src, int64_t sstride, T* dst, int64_t dstride, int64_t npix, int64_t width) {
  for_pixel_vectors<VB / sizeof(T)>(npix, width, [&](int64_t p, int64_t c0) FB_AI_LAMBDA {
    T* d = dst + p * dstride + c0;
    const Vec<T, VB> v = vload<T, VB>(src + p * sstride + c0);
    if (STREAM && reinterpret_cast<uintptr_t>(d) % VB == 0) {
      vstream<T, VB>(d, v);
    } else {
      vstore<T, VB>(d, v);
    }
  });
}

// fp16/bf16 <-> float over pixels as copy_pixels (width >= one float vector): the
// channels_last kernels' source rows are widened and their output rows narrowed in registers
// of the kernels' own width, where widen_n/narrow_n (256-bit loops, one call per pixel for
// chunked rows) took a quarter of a bf16 forward (perf, 32x72x56x56 3x3, 1 thread). Batch-32
// channels_last bench geomean, 2 threads of a Xeon (AVX-512), one run each: bf16 forward
// 1.02x -> 1.06x eager, fp16 0.94x -> 0.97x, forward+backward 2-4% faster. bf16
// narrows to nearest even with NaN -> 0x7FC0, as c10::BFloat16, bit for bit; fp16 converts with
// F16C (vcvtph2ps / vcvtps2ph, round to nearest even; as cpu_utils.h's F16C path, equal to c10
// but for NaN payloads) by inline assembly, as vstream, since these templates are compiled into
// each ISA region. Other cases (T = double, fp16 without AVX) go element by element.
template <typename S, typename T, int VB>
FB_AI void widen_pixels_impl(const S* src, int64_t sstride, T* dst, int64_t dstride, int64_t npix, int64_t width) {
  constexpr bool bf16 = std::is_same_v<S, c10::BFloat16>;
  if constexpr (std::is_same_v<T, float> && (bf16 || VB >= 32)) {
    using H = Vec<uint16_t, VB / 2>;
    using F = Vec<float, VB>;
    for_pixel_vectors<VB / sizeof(float)>(npix, width, [&](int64_t p, int64_t c0) FB_AI_LAMBDA {
      H h;
      std::memcpy(&h, src + p * sstride + c0, VB / 2);
      F f;
      if constexpr (bf16) {
        f = bits_as<F>(__builtin_convertvector(h, Vec<uint32_t, VB>) << 16);
      } else if constexpr (VB == 32) {
        asm("vcvtph2ps %1, %0" : "=x"(f) : "x"(h));
      } else {
        asm("vcvtph2ps %1, %0" : "=v"(f) : "v"(h));
      }
      vstore<float, VB>(dst + p * dstride + c0, f);
    });
  } else {
    for_pixel_vectors<1>(npix, width, [&](int64_t p, int64_t c) {
      dst[p * dstride + c] = widen<T>(src[p * sstride + c]);
    });
  }
}

template <typename S, typename T, int VB>
FB_AI void narrow_pixels_impl(const T* src, int64_t sstride, S* dst, int64_t dstride, int64_t npix, int64_t width) {
  constexpr bool bf16 = std::is_same_v<S, c10::BFloat16>;
  if constexpr (std::is_same_v<T, float> && (bf16 || VB >= 32)) {
    using H = Vec<uint16_t, VB / 2>;
    using U = Vec<uint32_t, VB>;
    for_pixel_vectors<VB / sizeof(float)>(npix, width, [&](int64_t p, int64_t c0) FB_AI_LAMBDA {
      const Vec<float, VB> f = vload<float, VB>(src + p * sstride + c0);
      H h;
      if constexpr (bf16) {
        const U u = bits_as<U>(f);
        U r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        r = f != f ? U{} + 0x7FC0u : r;
        h = __builtin_convertvector(r, H);
      } else if constexpr (VB == 32) {
        asm("vcvtps2ph $0, %1, %0" : "=x"(h) : "x"(f));
      } else {
        asm("vcvtps2ph $0, %1, %0" : "=v"(h) : "v"(f));
      }
      std::memcpy(dst + p * dstride + c0, &h, VB / 2);
    });
  } else {
    for_pixel_vectors<1>(npix, width, [&](int64_t p, int64_t c) {
      dst[p * dstride + c] = narrow<S>(src[p * sstride + c]);
    });
  }
}

// ---- NCHW in channel blocks: one image's L channels (L = vector lanes) at a time -------------

// In-place transpose of L vectors of L lanes: log2(L) rounds of zipping row i with row i + L/2.
template <typename T, int VB>
FB_AI void transpose_impl(Vec<T, VB>* r) {
  using V = Vec<T, VB>;
  constexpr int L = VB / sizeof(T);
#pragma GCC unroll 4
  for (int s = 1; s < L; s *= 2) {
    V t[L];
#pragma GCC unroll 16
    for (int i = 0; i < L / 2; ++i) {
      t[2 * i] = zip_lo<T, VB>(r[i], r[i + L / 2], std::make_index_sequence<L>{});
      t[2 * i + 1] = zip_hi<T, VB>(r[i], r[i + L / 2], std::make_index_sequence<L>{});
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = t[i];
  }
}

// Gathers L planes (channel l at src + l*plane, npix >= L pixels) into pixel vectors:
// dst[idx[p]*L + l] = src[l*plane + p], skipping pixels with idx[p] < 0. The last block of L
// pixels overlaps its neighbour.
template <typename T, int VB>
FB_AI void gather_block_impl(const T* src, int64_t plane, int64_t npix, const int64_t* idx, T* dst) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  for (int64_t pi = 0; pi < npix; pi += L) {
    const int64_t p = std::min(pi, npix - L);
    V r[L];
#pragma GCC unroll 16
    for (int64_t l = 0; l < L; ++l) r[l] = vload<T, VB>(src + l * plane + p);
    transpose_impl<T, VB>(r);
#pragma GCC unroll 16
    for (int64_t i = 0; i < L; ++i) {
      if (idx[p + i] >= 0) vstore<T, VB>(dst + idx[p + i] * L, r[i]);
    }
  }
}

// The inverse: dst[l*plane + p] = src[p*L + l] for p < npix (npix >= L).
template <typename T, int VB>
FB_AI void scatter_block_impl(const T* src, int64_t npix, T* dst, int64_t plane) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  for (int64_t pi = 0; pi < npix; pi += L) {
    const int64_t p = std::min(pi, npix - L);
    V r[L];
#pragma GCC unroll 16
    for (int64_t i = 0; i < L; ++i) r[i] = vload<T, VB>(src + (p + i) * L);
    transpose_impl<T, VB>(r);
#pragma GCC unroll 16
    for (int64_t l = 0; l < L; ++l) vstore<T, VB>(dst + l * plane + p, r[l]);
  }
}

// Weight gradient, channels_last, m == 1, over rows [r0, r1) of the flattened (n, oh):
// D[t*C + c] += sum of g[n, oh, ow, c] * x[n, ih, iw, c] for tap t. Products are summed over one
// row segment in T, added into the float scratch F (taps*C, zero on entry and exit) and moved
// into D every few rows, so float sums stay short.
template <typename T>
struct NhwcWgrad {
  const T* g;
  const T* x;
  int64_t N, C, H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  const int64_t* ow_lo;  // per kw: valid output columns [ow_lo, ow_hi)
  const int64_t* ow_hi;
};

template <typename T, int VB>
using IVec = Vec<std::conditional_t<sizeof(T) == 4, int32_t, int64_t>, VB>;

// F[0 .. UC*L) += sum over ow in [lo, hi) of g[ow*C + .] * x[(ow*sw + off)*C + .]; lanes below
// `skip` of the last vector are left out (they belong to the previous, overlapped vector).
template <typename T, int VB, int UC>
FB_AI void wgrad_segment(const T* g, const T* x, int64_t C, int64_t xs, int64_t lo, int64_t hi,
                         T* F, int64_t skip) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  V acc[4][UC] = {};
  int64_t ow = lo;
  for (; ow + 4 <= hi; ow += 4) {
    const T* gp = g + ow * C;
    const T* xp = x + ow * xs;
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
#pragma GCC unroll 4
      for (int c = 0; c < UC; ++c) acc[u][c] += vload<T, VB>(gp + u * C + c * L) * vload<T, VB>(xp + u * xs + c * L);
    }
  }
  for (; ow < hi; ++ow) {
#pragma GCC unroll 4
    for (int c = 0; c < UC; ++c) acc[0][c] += vload<T, VB>(g + ow * C + c * L) * vload<T, VB>(x + ow * xs + c * L);
  }
#pragma GCC unroll 4
  for (int c = 0; c < UC; ++c) {
    V sum = (acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c]);
    if (skip > 0) {
      using IV = IVec<T, VB>;
      using I = std::remove_reference_t<decltype(IV{}[0])>;
      IV lane;
      for (int64_t l = 0; l < L; ++l) lane[l] = I(l);
      sum = (V)((IV)sum & (IV)(lane >= I(skip)));
    }
    vstore<T, VB>(F + c * L, vload<T, VB>(F + c * L) + sum);
  }
}

template <typename T, int VB, int UC>
FB_AI void wgrad_slab(const NhwcWgrad<T>& a, const T* grow, int64_t r, int64_t c0, T* F, int64_t skip) {
  const int64_t C = a.C, n = r / a.OH, oh = r % a.OH, xs = a.sw * C;
  for (int64_t kh = 0; kh < a.KH; ++kh) {
    const int64_t ih = oh * a.sh - a.ph + kh * a.dh;
    if (ih < 0 || ih >= a.H) continue;
    const T* xrow = a.x + (n * a.H + ih) * a.W * C + c0;
    for (int64_t kw = 0; kw < a.KW; ++kw) {
      if (a.ow_lo[kw] >= a.ow_hi[kw]) continue;
      wgrad_segment<T, VB, UC>(grow + c0, xrow + (kw * a.dw - a.pw) * C, C, xs, a.ow_lo[kw], a.ow_hi[kw],
                               F + (kh * a.KW + kw) * C + c0, skip);
    }
  }
}

// Sliding weight-gradient blocks (dilation 1, KW in {3, 5, 7}, stride SW in {1, 2}): UP
// gradient vectors stay in registers while the (UP-1)*SW + KW source vectors they meet are each
// loaded once and multiplied into the KW tap sums of the kernel row: 0.75 loads per FMA for
// 3x3 stride 1 instead of 2 (wgrad_segment loads both operands of every product).
template <typename T, int VB, int KW, int SW, int UP>
FB_AI void wgrad_slide_block(const T* g, const T* x, int64_t C, int64_t o, Vec<T, VB>* acc) {
  using V = Vec<T, VB>;
  V gv[UP];
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) gv[u] = vload<T, VB>(g + (o + u) * C);
  const T* xp = x + o * SW * C;
#pragma GCC unroll 32
  for (int i = 0; i < (UP - 1) * SW + KW; ++i) {
    const V xv = vload<T, VB>(xp + i * C);
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw) {
      const int d = i - kw;
      if (d >= 0 && d % SW == 0 && d / SW < UP) acc[kw] += gv[d / SW] * xv;
    }
  }
}

// One channel vector (at c0) of one gradient row, all taps: like wgrad_slab, interior output
// columns [olo, ohi) (valid for every kw) in sliding blocks, the border columns per tap.
template <typename T, int VB, int KW, int SW>
FB_AI void wgrad_slide_vec(const NhwcWgrad<T>& a, const T* grow, int64_t r, int64_t c0, T* F, int64_t skip,
                           int64_t olo, int64_t ohi) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  constexpr int UP = VB == 64 ? 8 : 4;  // UP + KW + 1 vectors within the register file
  const int64_t C = a.C, n = r / a.OH, oh = r % a.OH;
  const T* g = grow + c0;
  for (int64_t kh = 0; kh < a.KH; ++kh) {
    const int64_t ih = oh * a.sh - a.ph + kh * a.dh;
    if (ih < 0 || ih >= a.H) continue;
    const T* x = a.x + (n * a.H + ih) * a.W * C + c0 - a.pw * C;  // x + (ow*SW + kw)*C: tap kw
    V acc[KW] = {};
    int64_t o = olo;
    for (; o + UP <= ohi; o += UP) wgrad_slide_block<T, VB, KW, SW, UP>(g, x, C, o, acc);
    // Rows are short (7-28 columns): the rest in halving blocks rather than one at a time.
    if (UP > 4 && o + 4 <= ohi) {
      wgrad_slide_block<T, VB, KW, SW, 4>(g, x, C, o, acc);
      o += 4;
    }
    if (o + 2 <= ohi) {
      wgrad_slide_block<T, VB, KW, SW, 2>(g, x, C, o, acc);
      o += 2;
    }
    if (o < ohi) wgrad_slide_block<T, VB, KW, SW, 1>(g, x, C, o, acc);
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw) {
      for (int64_t ow = a.ow_lo[kw]; ow < std::min(a.ow_hi[kw], olo); ++ow) {
        acc[kw] += vload<T, VB>(g + ow * C) * vload<T, VB>(x + (ow * SW + kw) * C);
      }
      for (int64_t ow = ohi; ow < a.ow_hi[kw]; ++ow) {
        acc[kw] += vload<T, VB>(g + ow * C) * vload<T, VB>(x + (ow * SW + kw) * C);
      }
      V sum = acc[kw];
      if (skip > 0) {
        using IV = IVec<T, VB>;
        using I = std::remove_reference_t<decltype(IV{}[0])>;
        IV lane;
        for (int64_t l = 0; l < L; ++l) lane[l] = I(l);
        sum = (V)((IV)sum & (IV)(lane >= I(skip)));
      }
      T* f = F + (kh * KW + kw) * C + c0;
      vstore<T, VB>(f, vload<T, VB>(f) + sum);
    }
  }
}

// 3x3: the three kernel rows together (when all three source rows exist): 9 independent sums
// instead of 3 hide the FMA latency, and each gradient vector is loaded once, not three times.
template <typename T, int VB, int SW, int UP>
FB_AI void wgrad_slide_block33(const T* g, const T* const* x, int64_t C, int64_t o, Vec<T, VB> (*acc)[3]) {
  using V = Vec<T, VB>;
  V gv[UP];
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) gv[u] = vload<T, VB>(g + (o + u) * C);
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
    const T* xp = x[kh] + o * SW * C;
#pragma GCC unroll 32
    for (int i = 0; i < (UP - 1) * SW + 3; ++i) {
      const V xv = vload<T, VB>(xp + i * C);
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        const int d = i - kw;
        if (d >= 0 && d % SW == 0 && d / SW < UP) acc[kh][kw] += gv[d / SW] * xv;
      }
    }
  }
}

template <typename T, int VB, int SW>
FB_AI void wgrad_slide_vec33(const NhwcWgrad<T>& a, const T* grow, const T* const* xr, int64_t c0, T* F,
                             int64_t skip, int64_t olo, int64_t ohi) {
  using V = Vec<T, VB>;
  constexpr int64_t L = VB / sizeof(T);
  constexpr int UP = VB == 64 ? 8 : 4;  // UP + 9 + 1 vectors within the register file
  const int64_t C = a.C;
  const T* g = grow + c0;
  const T* x[3] = {xr[0] + c0, xr[1] + c0, xr[2] + c0};
  V acc[3][3] = {};
  int64_t o = olo;
  for (; o + UP <= ohi; o += UP) wgrad_slide_block33<T, VB, SW, UP>(g, x, C, o, acc);
  if (UP > 4 && o + 4 <= ohi) {
    wgrad_slide_block33<T, VB, SW, 4>(g, x, C, o, acc);
    o += 4;
  }
  if (o + 2 <= ohi) {
    wgrad_slide_block33<T, VB, SW, 2>(g, x, C, o, acc);
    o += 2;
  }
  if (o < ohi) wgrad_slide_block33<T, VB, SW, 1>(g, x, C, o, acc);
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      for (int64_t ow = a.ow_lo[kw]; ow < std::min(a.ow_hi[kw], olo); ++ow) {
        acc[kh][kw] += vload<T, VB>(g + ow * C) * vload<T, VB>(x[kh] + (ow * SW + kw) * C);
      }
      for (int64_t ow = ohi; ow < a.ow_hi[kw]; ++ow) {
        acc[kh][kw] += vload<T, VB>(g + ow * C) * vload<T, VB>(x[kh] + (ow * SW + kw) * C);
      }
      V sum = acc[kh][kw];
      if (skip > 0) {
        using IV = IVec<T, VB>;
        using I = std::remove_reference_t<decltype(IV{}[0])>;
        IV lane;
        for (int64_t l = 0; l < L; ++l) lane[l] = I(l);
        sum = (V)((IV)sum & (IV)(lane >= I(skip)));
      }
      T* f = F + (kh * 3 + kw) * C + c0;
      vstore<T, VB>(f, vload<T, VB>(f) + sum);
    }
  }
}

// The rows a weight-gradient row r + 1 reads that row r does not (its gradient row, the new source
// rows), fetched into L2 in slices while row r runs: each vector of a row touches one 64-byte
// line per pixel, pixels C floats apart, and without this the loads waited on memory
// (32x72x56x56 3x3: 5.2-5.8 ms -> 2.5 ms, 32x576x14x14 3x3: 1.6 ms -> 1.35 ms, 2 threads).
template <typename T>
struct NextRows {
  const char* p[8];
  int64_t bytes[8];
  int n = 0;
  NextRows(const NhwcWgrad<T>& a, int64_t r) {
    if (r + 1 >= a.N * a.OH) return;
    const int64_t row_bytes = a.W * a.C * int64_t(sizeof(T));
    add(reinterpret_cast<const char*>(a.g + (r + 1) * a.OW * a.C), a.OW * a.C * int64_t(sizeof(T)));
    const int64_t n0 = r / a.OH, oh0 = r % a.OH, n1 = (r + 1) / a.OH, oh1 = (r + 1) % a.OH;
    const int64_t last0 = oh0 * a.sh - a.ph + (a.KH - 1) * a.dh;
    for (int64_t kh = 0; kh < a.KH && n < 8; ++kh) {
      const int64_t ih = oh1 * a.sh - a.ph + kh * a.dh;
      if (ih < 0 || ih >= a.H || (n1 == n0 && ih <= last0)) continue;
      add(reinterpret_cast<const char*>(a.x + (n1 * a.H + ih) * a.W * a.C), row_bytes);
    }
  }
  void add(const char* q, int64_t b) {
    p[n] = q;
    bytes[n++] = b;
  }
  // Slice i of nslices.
  FB_AI void fetch(int64_t i, int64_t nslices) const {
    for (int j = 0; j < n; ++j) {
      const int64_t chunk = round_up(ceil_div(bytes[j], nslices), 64);
      const int64_t e = std::min(bytes[j], (i + 1) * chunk);
      for (int64_t o = i * chunk; o < e; o += 64) __builtin_prefetch(p[j] + o, 0, 2);
    }
  }
};

template <typename T, int VB, int KW, int SW>
FB_AI void wgrad_slide_row(const NhwcWgrad<T>& a, const T* grow, int64_t r, T* F) {
  constexpr int64_t L = VB / sizeof(T);
  int64_t olo = 0, ohi = a.OW;
  for (int64_t kw = 0; kw < KW; ++kw) {
    olo = std::max(olo, a.ow_lo[kw]);
    ohi = std::min(ohi, a.ow_hi[kw]);
  }
  ohi = std::max(ohi, olo);
  const NextRows<T> next(a, r);
  const int64_t nvec = ceil_div(a.C, L);
  if constexpr (KW == 3) {
    const int64_t n = r / a.OH, oh = r % a.OH;
    const int64_t ih0 = oh * a.sh - a.ph;
    if (a.KH == 3 && ih0 >= 0 && ih0 + 2 * a.dh < a.H) {
      const T* xr[3];
      for (int kh = 0; kh < 3; ++kh) xr[kh] = a.x + (n * a.H + ih0 + kh * a.dh) * a.W * a.C - a.pw * a.C;
      int64_t cb = 0, i = 0;
      for (; cb + L <= a.C; cb += L) {
        next.fetch(i++, nvec);
        wgrad_slide_vec33<T, VB, SW>(a, grow, xr, cb, F, 0, olo, ohi);
      }
      if (cb < a.C) {
        next.fetch(i, nvec);
        wgrad_slide_vec33<T, VB, SW>(a, grow, xr, a.C - L, F, cb - (a.C - L), olo, ohi);
      }
      return;
    }
  }
  int64_t cb = 0, i = 0;
  for (; cb + L <= a.C; cb += L) {
    next.fetch(i++, nvec);
    wgrad_slide_vec<T, VB, KW, SW>(a, grow, r, cb, F, 0, olo, ohi);
  }
  if (cb < a.C) {
    next.fetch(i, nvec);
    wgrad_slide_vec<T, VB, KW, SW>(a, grow, r, a.C - L, F, cb - (a.C - L), olo, ohi);
  }
}

template <typename T, int VB>
FB_AI void nhwc_wgrad_impl(const NhwcWgrad<T>& a, int64_t r0, int64_t r1, T* F, double* D) {
  constexpr int64_t L = VB / sizeof(T);
  constexpr int UC = 2;  // 2 vectors x 4 pixels = 8 independent sums
  const int64_t C = a.C, size = a.KH * a.KW * C;
  const int64_t rows_per_flush = std::max<int64_t>(1, 64 / std::max<int64_t>(a.OW, 1));
  // Sliding blocks for dilation-1 3/5/7-wide kernel rows at stride 1 or 2 (10 * KW + sw).
  const int64_t slide = a.dw == 1 && (a.KW == 3 || a.KW == 5 || a.KW == 7) && (a.sw == 1 || a.sw == 2)
                            ? 10 * a.KW + a.sw : 0;
  int64_t pending = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* grow = a.g + r * a.OW * C;
    if (slide == 31) {
      wgrad_slide_row<T, VB, 3, 1>(a, grow, r, F);
    } else if (slide == 32) {
      wgrad_slide_row<T, VB, 3, 2>(a, grow, r, F);
    } else if (slide == 51) {
      wgrad_slide_row<T, VB, 5, 1>(a, grow, r, F);
    } else if (slide == 52) {
      wgrad_slide_row<T, VB, 5, 2>(a, grow, r, F);
    } else if (slide == 71) {
      wgrad_slide_row<T, VB, 7, 1>(a, grow, r, F);
    } else if (slide == 72) {
      wgrad_slide_row<T, VB, 7, 2>(a, grow, r, F);
    } else {
      int64_t cb = 0;
      for (; cb + UC * L <= C; cb += UC * L) wgrad_slab<T, VB, UC>(a, grow, r, cb, F, 0);
      for (; cb + L <= C; cb += L) wgrad_slab<T, VB, 1>(a, grow, r, cb, F, 0);
      if (cb < C) wgrad_slab<T, VB, 1>(a, grow, r, C - L, F, cb - (C - L));
    }
    if (++pending == rows_per_flush || r + 1 == r1) {
      for (int64_t i = 0; i < size; ++i) {
        D[i] += static_cast<double>(F[i]);
        F[i] = T(0);
      }
      pending = 0;
    }
  }
}

// exp for float vectors (fastblocks/cpu_vec.h); scalar expf would make a fused SiLU cost more
// than the convolution.
template <int VB>
FB_AI Vec<float, VB> vexp(Vec<float, VB> x) {
  return exp_cephes<Vec<float, VB>, Vec<int32_t, VB>>(x);
}

// In-place activation; the switch sits outside the loop so each case vectorizes.
template <typename T, int VB>
FB_AI void apply_act_impl(T* p, int64_t n, int act) {
  if constexpr (std::is_same_v<T, float>) {
    if (act == int(Act::kSiLU)) {
      using V = Vec<float, VB>;
      constexpr int64_t L = VB / sizeof(float);
      int64_t i = 0;
      for (; i + L <= n; i += L) {
        const V x = vload<float, VB>(p + i);
        vstore<float, VB>(p + i, x / (1.0f + vexp<VB>(-x)));
      }
      for (; i < n; ++i) p[i] = act_forward<float>(p[i], act);
      return;
    }
  }
  switch (act) {
#define FB_DW_ACT_CASE(A) \
  case A:                 \
    for (int64_t i = 0; i < n; ++i) p[i] = act_forward<T>(p[i], A); \
    break;
    FB_DW_ACT_CASE(1)
    FB_DW_ACT_CASE(2)
    FB_DW_ACT_CASE(3)
    FB_DW_ACT_CASE(4)
    FB_DW_ACT_CASE(5)
#undef FB_DW_ACT_CASE
    default:
      break;
  }
}

// ---- per-ISA instantiation --------------------------------------------------------------------

template <typename T>
struct Kernels {
  void (*flat_conv)(const T*, const int64_t*, const T*, int, T, T*, int64_t);
  void (*flat_dot)(const T*, const T*, const int64_t*, int, int64_t, double*);
  void (*fill_phases)(const T*, const RowCopy*, int64_t, int64_t, T*);
  void (*interleave2)(const T*, const T*, T*, int64_t);
  void (*nhwc_row)(const NhwcRow<T>&);
  void (*copy_pixels)(const T*, int64_t, T*, int64_t, int64_t, int64_t);
  void (*stream_pixels)(const T*, int64_t, T*, int64_t, int64_t, int64_t);
  // fp16/bf16 source rows widened to T and output rows narrowed from it (widen_pixels_impl)
  template <typename S>
  struct PixelConvert {
    void (*widen)(const S*, int64_t, T*, int64_t, int64_t, int64_t);
    void (*narrow)(const T*, int64_t, S*, int64_t, int64_t, int64_t);
  };
  PixelConvert<c10::BFloat16> bf16;
  PixelConvert<c10::Half> f16;
  void (*nhwc_wgrad)(const NhwcWgrad<T>&, int64_t, int64_t, T*, double*);
  void (*apply_act)(T*, int64_t, int);
  void (*gather_block)(const T*, int64_t, int64_t, const int64_t*, T*);
  void (*scatter_block)(const T*, int64_t, T*, int64_t);
  int64_t lanes;
  template <typename S>
  const PixelConvert<S>& convert() const {
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      return bf16;
    } else {
      return f16;
    }
  }
};

#define FB_DW_ISA_KERNELS(NS, VB)                                                             \
  namespace NS {                                                                              \
  template <typename T>                                                                       \
  void flat_conv(const T* P, const int64_t* base, const T* w, int nt, T init, T* out,         \
                 int64_t nflat) {                                                             \
    flat_conv_impl<T, VB>(P, base, w, nt, init, out, nflat);                                  \
  }                                                                                           \
  template <typename T>                                                                       \
  void flat_dot(const T* G, const T* P, const int64_t* base, int nt, int64_t nflat,           \
                double* acc) {                                                                \
    flat_dot_impl<T, VB>(G, P, base, nt, nflat, acc);                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  void fill_phases(const T* x, const RowCopy* ops, int64_t nops, int64_t sw, T* P) {          \
    fill_phases_impl<T, VB>(x, ops, nops, sw, P);                                             \
  }                                                                                           \
  template <typename T>                                                                       \
  void interleave2(const T* e, const T* o, T* row, int64_t n) {                               \
    interleave2_impl<T, VB>(e, o, row, n);                                                    \
  }                                                                                           \
  template <typename T>                                                                       \
  void nhwc_row(const NhwcRow<T>& a) {                                                        \
    nhwc_row_impl<T, VB>(a);                                                                  \
  }                                                                                           \
  template <typename T>                                                                       \
  void copy_pixels(const T* s, int64_t ss, T* d, int64_t ds, int64_t n, int64_t w) {          \
    copy_pixels_impl<T, VB, false>(s, ss, d, ds, n, w);                                       \
  }                                                                                           \
  template <typename T>                                                                       \
  void stream_pixels(const T* s, int64_t ss, T* d, int64_t ds, int64_t n, int64_t w) {        \
    copy_pixels_impl<T, VB, true>(s, ss, d, ds, n, w);                                        \
  }                                                                                           \
  template <typename S, typename T>                                                           \
  void widen_pixels(const S* s, int64_t ss, T* d, int64_t ds, int64_t n, int64_t w) {        \
    widen_pixels_impl<S, T, VB>(s, ss, d, ds, n, w);                                          \
  }                                                                                           \
  template <typename S, typename T>                                                           \
  void narrow_pixels(const T* s, int64_t ss, S* d, int64_t ds, int64_t n, int64_t w) {       \
    narrow_pixels_impl<S, T, VB>(s, ss, d, ds, n, w);                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  void nhwc_wgrad(const NhwcWgrad<T>& a, int64_t r0, int64_t r1, T* F, double* D) {          \
    nhwc_wgrad_impl<T, VB>(a, r0, r1, F, D);                                                  \
  }                                                                                           \
  template <typename T>                                                                       \
  void apply_act(T* p, int64_t n, int act) {                                                  \
    apply_act_impl<T, VB>(p, n, act);                                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  void gather_block(const T* s, int64_t pl, int64_t n, const int64_t* idx, T* d) {           \
    gather_block_impl<T, VB>(s, pl, n, idx, d);                                               \
  }                                                                                           \
  template <typename T>                                                                       \
  void scatter_block(const T* s, int64_t n, T* d, int64_t pl) {                              \
    scatter_block_impl<T, VB>(s, n, d, pl);                                                   \
  }                                                                                           \
  template <typename T>                                                                       \
  Kernels<T> table() {                                                                        \
    return {&flat_conv<T>,  &flat_dot<T>,   &fill_phases<T>, &interleave2<T>,                  \
            &nhwc_row<T>,   &copy_pixels<T>, &stream_pixels<T>,                                \
            {&widen_pixels<c10::BFloat16, T>, &narrow_pixels<c10::BFloat16, T>},                \
            {&widen_pixels<c10::Half, T>, &narrow_pixels<c10::Half, T>},                        \
            &nhwc_wgrad<T>, &apply_act<T>,                                                     \
            &gather_block<T>, &scatter_block<T>, int64_t(VB / sizeof(T))};                    \
  }                                                                                           \
  }

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
FB_DW_ISA_KERNELS(isa_avx512, 64)
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
FB_DW_ISA_KERNELS(isa_avx2, 32)
#pragma GCC pop_options

FB_DW_ISA_KERNELS(isa_sse2, 16)

enum class Isa { kSse2, kAvx2, kAvx512 };

Isa detect_isa() {
  Isa best = Isa::kSse2;
  __builtin_cpu_init();
  // The AVX2 and AVX-512 regions are compiled with F16C too and run vcvtph2ps/vcvtps2ph
  // (widen_pixels_impl), so they need it (every AVX2 CPU so far has it).
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    best = Isa::kAvx2;
  }
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
  // A narrower ISA may be forced (tests); a wider one than the CPU has is ignored.
  if (const char* env = std::getenv("FASTBLOCKS_CPU_ISA")) {
    const std::string s(env);
    if (s == "sse2") best = Isa::kSse2;
    if (s == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
  }
  return best;
}

template <typename T>
const Kernels<T>& kernels() {
  static const Kernels<T> k = [] {
    switch (detect_isa()) {
      case Isa::kAvx512:
        return isa_avx512::table<T>();
      case Isa::kAvx2:
        return isa_avx2::table<T>();
      default:
        return isa_sse2::table<T>();
    }
  }();
  return k;
}

// ---- geometry and argument checks ---------------------------------------------------------------

struct Geom {
  int64_t N, C, M, H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  int64_t OC() const { return C * M; }
  int64_t taps() const { return KH * KW; }
};

// The argument checks are fastblocks/depthwise_args.h, shared with the CUDA bindings; the
// kernels here read the geometry under these shorter names.
Geom geom_of(const DepthwiseShape& s) {
  return Geom{s.n, s.c, s.mult, s.h, s.w, s.oh, s.ow, s.kh, s.kw,
              s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w};
}

using depthwise::mem_format;

// Work (multiply-adds) below which a task is not worth its own thread.
constexpr int64_t kTaskWork = 1 << 15;
int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, work_per_task));
}

// Runs body(next) once on each of up to at::get_num_threads() threads; next(begin, end) hands
// out the tasks [0, n) in chunks of `grain` as the threads ask for them (an atomic cursor) and
// returns false when none are left. A thread that runs late, on a core shared with another
// process, then takes fewer chunks instead of holding up the op, as at::parallel_for's static
// split does (1x672x14x14 3x3 channels_last forward on the 2-core dev box with its second core
// busy: 157 us with 2 threads against 58 us with 1). body sets up its scratch once, then loops
// `for (int64_t b, e; next(b, e);)`. Each output element is still written by one task in a
// fixed order, so results do not depend on which thread ran it.
template <typename F>
void parallel_dynamic(int64_t n, int64_t grain, const F& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = ceil_div(n, grain);
  std::atomic<int64_t> cursor{0};
  const auto next = [&](int64_t& begin, int64_t& end) {
    const int64_t c = cursor.fetch_add(1, std::memory_order_relaxed);
    if (c >= chunks) return false;
    begin = c * grain;
    end = std::min(n, begin + grain);
    return true;
  };
  const int64_t workers = std::min<int64_t>(chunks, at::get_num_threads());
  if (workers == 1 || at::in_parallel_region()) {
    body(next);
  } else {
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) { body(next); });
  }
}

// ---- NCHW forward ---------------------------------------------------------------------------------

// Scratch geometry of the forward and weight-gradient passes. Planes of one channel for several
// images sit at a fixed stride in the scratch; the 1-d tap sum then runs over all of them at
// once (small planes, e.g. 7x7, would otherwise pay per-plane overhead many times over).
struct PhasePlan {
  int64_t A, PW, nflat, pstride;
  int64_t NB;                 // images per task
  bool joint;                 // one 1-d sum across the stacked planes (gaps between them small)
  std::vector<int64_t> base;  // per tap (kh, kw)
  std::vector<RowCopy> rows;  // what fill_phases copies from each plane
  int64_t flat_len(int64_t nb, int64_t lanes) const { return round_up((nb - 1) * pstride + nflat, lanes); }
  // base[t] + flat_len(nb) never passes NB * pstride + PW + lanes; outputs stay below NB * pstride.
  int64_t scratch_size(int64_t lanes) const { return NB * pstride + PW + lanes; }
};

// Stack images while the scratch stays within ~64 KB (L2-resident).
constexpr int64_t kStackElems = 16384;

PhasePlan phase_plan(const Geom& g, int64_t lanes) {
  PhasePlan s;
  const int64_t qh_max = ((g.KH - 1) * g.dh) / g.sh, qw_max = ((g.KW - 1) * g.dw) / g.sw;
  const int64_t A = g.OH + qh_max, PW = g.OW + qw_max;
  s.A = A;
  s.PW = PW;
  s.nflat = g.OH * PW;
  // Plane stride: a whole number of vectors past the phase planes, so a plane's output run
  // rounded up to whole vectors stays inside its own (zero-padded) slot.
  s.pstride = round_up(g.sh * g.sw * A * PW, lanes) + lanes;
  s.NB = std::clamp<int64_t>(kStackElems / std::max<int64_t>(s.pstride, 1), 1, std::max<int64_t>(g.N, 1));
  // Summing across the gaps between stacked planes is wasted work: worth one call only while the
  // gaps stay under a quarter of the outputs (stride 1); stride-2 phase planes are 4x larger
  // than their outputs and go plane by plane.
  s.joint = 4 * (s.pstride - s.nflat) <= s.nflat;
  s.base.resize(g.taps());
  for (int64_t kh = 0; kh < g.KH; ++kh) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t b = (kh * g.dh) % g.sh, qh = (kh * g.dh) / g.sh;
      const int64_t p = (kw * g.dw) % g.sw, qw = (kw * g.dw) / g.sw;
      s.base[kh * g.KW + kw] = ((b * g.sw + p) * A + qh) * PW + qw;
    }
  }
  for (int64_t b = 0; b < g.sh; ++b) {
    for (int64_t a = 0; a < A; ++a) {
      const int64_t ih = a * g.sh + b - g.ph;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t p = 0; p < g.sw; ++p) {
        const int64_t jlo = std::clamp<int64_t>(ceil_div(g.pw - p, g.sw), 0, PW);
        const int64_t jhi = std::clamp<int64_t>(floor_div(g.W - 1 + g.pw - p, g.sw) + 1, jlo, PW);
        if (jhi > jlo) {
          s.rows.push_back({ih * g.W + jlo * g.sw + p - g.pw, ((b * g.sw + p) * A + a) * PW + jlo, jhi - jlo});
        }
      }
    }
  }
  return s;
}

// A plane of scalar_t as T: itself when the types agree, else converted into tmp.
template <typename T, typename scalar_t>
const T* plane_as(const scalar_t* x, int64_t n, std::vector<T>& tmp) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return x;
  } else {
    tmp.resize(n);
    widen_n(x, tmp.data(), n);
    return tmp.data();
  }
}

// Copies rows of n elements; short rows (7x7 layers) by a plain loop rather than a call.
template <typename T, typename scalar_t>
void copy_rows(const T* src, int64_t sstride, scalar_t* dst, int64_t dstride, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * sstride;
    scalar_t* d = dst + r * dstride;
    if constexpr (!std::is_same_v<T, scalar_t>) {
      narrow_n(s, d, n);
    } else if (n > 32) {
      std::memcpy(d, s, n * sizeof(T));
    } else {
      for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    }
  }
}

template <typename scalar_t>
void forward_nchw(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                  const Geom& g, int act, at::Tensor& y) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& k = kernels<T>();
  const PhasePlan s = phase_plan(g, k.lanes);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t nt = g.taps(), NB = s.NB, groups = ceil_div(g.N, NB);
  parallel_dynamic(g.C * groups, grain_for(NB * g.M * s.nflat * nt), [&](const auto& next) {
    std::vector<T> P(s.scratch_size(k.lanes), T(0)), out(NB * s.pstride), w(nt), tmp;
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups, n0 = (task % groups) * NB, nb = std::min(NB, g.N - n0);
      for (int64_t i = 0; i < nb; ++i) {
        k.fill_phases(plane_as<T>(xp + ((n0 + i) * g.C + c) * g.H * g.W, g.H * g.W, tmp), s.rows.data(),
                      int64_t(s.rows.size()), g.sw, P.data() + i * s.pstride);
      }
      const int64_t len = s.flat_len(nb, k.lanes), plane_len = s.flat_len(1, k.lanes);
      for (int64_t j = 0; j < g.M; ++j) {
        const int64_t oc = c * g.M + j;
        for (int64_t t = 0; t < nt; ++t) w[t] = static_cast<T>(wp[oc * nt + t]);
        const T init = bp ? static_cast<T>(bp[oc]) : T(0);
        if (s.joint) {
          k.flat_conv(P.data(), s.base.data(), w.data(), int(nt), init, out.data(), len);
          if (act) k.apply_act(out.data(), len, act);
        } else {
          for (int64_t i = 0; i < nb; ++i) {
            T* o = out.data() + i * s.pstride;
            k.flat_conv(P.data() + i * s.pstride, s.base.data(), w.data(), int(nt), init, o, plane_len);
            if (act) k.apply_act(o, s.nflat, act);
          }
        }
        for (int64_t i = 0; i < nb; ++i) {
          copy_rows(out.data() + i * s.pstride, s.PW, yp + ((n0 + i) * g.OC() + oc) * g.OH * g.OW, g.OW,
                    g.OH, g.OW);
        }
      }
    }
  });
}

// ---- NCHW input gradient -------------------------------------------------------------------------

template <typename scalar_t>
void backward_input_nchw(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                         at::Tensor& gx) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& k = kernels<T>();
  const int64_t lanes = k.lanes;
  // Zero-padded gradient planes G[i][j][LH + oh][LW + ow] (image i of the task, multiplier
  // index j); input pixel (sh*a + rb, sw*t + rp) reads G[i][j][a + qh + LH][t + qw + LW] for the
  // taps of its residue class: a 1-d sum over f = i*gslot + a*GW + t.
  const int64_t LH = std::max<int64_t>(0, -floor_div(g.ph - (g.KH - 1) * g.dh, g.sh));
  const int64_t LW = std::max<int64_t>(0, -floor_div(g.pw - (g.KW - 1) * g.dw, g.sw));
  const int64_t qh_max = floor_div(g.sh - 1 + g.ph, g.sh), qw_max = floor_div(g.sw - 1 + g.pw, g.sw);
  const int64_t GH = std::max(LH + g.OH, LH + qh_max + ceil_div(g.H, g.sh));
  const int64_t GW = std::max(LW + g.OW, LW + qw_max + ceil_div(g.W, g.sw));
  // Slot stride of one image: whole vectors plus one, so per-image output runs rounded up to
  // whole vectors stay inside their slot.
  const int64_t gplane = GH * GW, gslot = round_up(g.M * gplane, lanes) + lanes;
  const int64_t NB = std::clamp<int64_t>(kStackElems / gslot, 1, g.N);
  const int64_t groups = ceil_div(g.N, NB);
  const int64_t gsize = NB * gslot + GW + lanes;
  const int64_t Amax = ceil_div(g.H, g.sh);
  const int64_t olen = NB * gslot;
  // As in the forward: one sum across the stacked images only while the gaps between them stay
  // under a quarter of their outputs.
  const bool joint = 4 * (gslot - Amax * GW) <= Amax * GW;
  const int64_t nres_h = std::min(g.sh, g.H), nres_w = std::min(g.sw, g.W);
  // Taps of each residue class (rb, rp): weight index (j, kh, kw) and scratch offset.
  const int64_t nt = g.taps();
  std::vector<std::vector<int64_t>> rtap(nres_h * nres_w), rbase(nres_h * nres_w);
  for (int64_t rb = 0; rb < nres_h; ++rb) {
    for (int64_t rp = 0; rp < nres_w; ++rp) {
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t vh = rb + g.ph - kh * g.dh;
        if (floor_mod(vh, g.sh) != 0) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t vw = rp + g.pw - kw * g.dw;
          if (floor_mod(vw, g.sw) != 0) continue;
          for (int64_t j = 0; j < g.M; ++j) {
            rtap[rb * nres_w + rp].push_back(j * nt + kh * g.KW + kw);
            rbase[rb * nres_w + rp].push_back(j * gplane + (floor_div(vh, g.sh) + LH) * GW + floor_div(vw, g.sw) + LW);
          }
        }
      }
    }
  }
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  scalar_t* op = gx.mutable_data_ptr<scalar_t>();
  parallel_dynamic(g.C * groups, grain_for(NB * g.M * g.H * g.W * nt), [&](const auto& next) {
    std::vector<T> G(gsize, T(0)), out(nres_w * olen), wc(g.M * nt), w(g.M * nt), tmp, row(g.W);
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups, n0 = (task % groups) * NB, nb = std::min(NB, g.N - n0);
      for (int64_t i = 0; i < nb; ++i) {
        for (int64_t j = 0; j < g.M; ++j) {
          const T* src = plane_as<T>(gp + ((n0 + i) * g.OC() + c * g.M + j) * g.OH * g.OW, g.OH * g.OW, tmp);
          copy_rows(src, g.OW, G.data() + i * gslot + j * gplane + LH * GW + LW, GW, g.OH, g.OW);
        }
      }
      for (int64_t q = 0; q < g.M * nt; ++q) wc[q] = static_cast<T>(wp[c * g.M * nt + q]);
      for (int64_t rb = 0; rb < nres_h; ++rb) {
        const int64_t Ar = ceil_div(g.H - rb, g.sh);
        for (int64_t rp = 0; rp < nres_w; ++rp) {
          const std::vector<int64_t>& taps = rtap[rb * nres_w + rp];
          for (size_t q = 0; q < taps.size(); ++q) w[q] = wc[taps[q]];
          if (joint) {
            k.flat_conv(G.data(), rbase[rb * nres_w + rp].data(), w.data(), int(taps.size()), T(0),
                        out.data() + rp * olen, round_up((nb - 1) * gslot + Ar * GW, lanes));
          } else {
            for (int64_t i = 0; i < nb; ++i) {
              k.flat_conv(G.data() + i * gslot, rbase[rb * nres_w + rp].data(), w.data(), int(taps.size()), T(0),
                          out.data() + rp * olen + i * gslot, round_up(Ar * GW, lanes));
            }
          }
        }
        // Input row sh*a + rb gathers its column residues back together.
        for (int64_t i = 0; i < nb; ++i) {
          scalar_t* gxp = op + ((n0 + i) * g.C + c) * g.H * g.W;
          for (int64_t a = 0; a < Ar; ++a) {
            scalar_t* dst = gxp + (a * g.sh + rb) * g.W;
            const T* o = out.data() + i * gslot + a * GW;
            if (nres_w == 1) {
              copy_rows(o, 0, dst, 0, 1, g.W);
            } else if (nres_w == 2) {
              if constexpr (std::is_same_v<T, scalar_t>) {
                k.interleave2(o, o + olen, dst, g.W);
              } else {
                k.interleave2(o, o + olen, row.data(), g.W);
                copy_rows(row.data(), 0, dst, 0, 1, g.W);
              }
            } else {
              for (int64_t iw = 0; iw < g.W; ++iw) {
                dst[iw] = static_cast<scalar_t>(o[(iw % g.sw) * olen + iw / g.sw]);
              }
            }
          }
        }
      }
    }
  });
}

// ---- NCHW weight gradient ------------------------------------------------------------------------

// The weight gradient of input channel c (its M output channels, all taps; NCHW), summed in
// double over exactly the (output, input) pixel pairs each tap joins: slow, for channels whose
// input holds inf or NaN (see backward_weight_nchw).
template <typename scalar_t>
void weight_grad_channel_direct(const scalar_t* gp, const scalar_t* xp, const Geom& g, int64_t c, scalar_t* out) {
  for (int64_t j = 0; j < g.M; ++j) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        double sum = 0;
        for (int64_t n = 0; n < g.N; ++n) {
          const scalar_t* gplane = gp + (n * g.OC() + c * g.M + j) * g.OH * g.OW;
          const scalar_t* xplane = xp + (n * g.C + c) * g.H * g.W;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t ow = 0; ow < g.OW; ++ow) {
              const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              sum += widen<double>(gplane[oh * g.OW + ow]) * widen<double>(xplane[ih * g.W + iw]);
            }
          }
        }
        out[(j * g.KH + kh) * g.KW + kw] = static_cast<scalar_t>(sum);
      }
    }
  }
}

template <typename scalar_t>
void backward_weight_nchw(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                          at::Tensor& gw) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes;
  const PhasePlan s = phase_plan(g, L);
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = gw.mutable_data_ptr<scalar_t>();
  const int64_t nt = g.taps(), NB = s.NB, gsz = NB * s.pstride;
  // One task per input channel: its m output channels' sums never leave the task, so the
  // order of additions is fixed.
  at::parallel_for(0, g.C, grain_for(g.N * g.M * s.nflat * nt), [&](int64_t begin, int64_t end) {
    // Gf: the gradient planes laid out like the scratch's output positions, zero elsewhere, so
    // the dot products ignore the extra columns and the gaps between stacked planes.
    std::vector<T> P(s.scratch_size(L), T(0)), Gf(g.M * gsz, T(0)), tmp;
    std::vector<double> D(g.M * nt * L);
    for (int64_t c = begin; c < end; ++c) {
      std::fill(D.begin(), D.end(), 0.0);
      for (int64_t n0 = 0; n0 < g.N; n0 += NB) {
        const int64_t nb = std::min(NB, g.N - n0);
        for (int64_t i = 0; i < nb; ++i) {
          k.fill_phases(plane_as<T>(xp + ((n0 + i) * g.C + c) * g.H * g.W, g.H * g.W, tmp), s.rows.data(),
                        int64_t(s.rows.size()), g.sw, P.data() + i * s.pstride);
          for (int64_t j = 0; j < g.M; ++j) {
            const T* src = plane_as<T>(gp + ((n0 + i) * g.OC() + c * g.M + j) * g.OH * g.OW, g.OH * g.OW, tmp);
            copy_rows(src, g.OW, Gf.data() + j * gsz + i * s.pstride, s.PW, g.OH, g.OW);
          }
        }
        if (nb < NB) {  // a short last group: clear the planes the previous group left behind
          for (int64_t j = 0; j < g.M; ++j) {
            std::fill(Gf.begin() + j * gsz + nb * s.pstride, Gf.begin() + (j + 1) * gsz, T(0));
          }
        }
        for (int64_t j = 0; j < g.M; ++j) {
          if (s.joint) {
            k.flat_dot(Gf.data() + j * gsz, P.data(), s.base.data(), int(nt), s.flat_len(nb, L), D.data() + j * nt * L);
          } else {
            for (int64_t i = 0; i < nb; ++i) {
              k.flat_dot(Gf.data() + j * gsz + i * s.pstride, P.data() + i * s.pstride, s.base.data(), int(nt),
                         s.flat_len(1, L), D.data() + j * nt * L);
            }
          }
        }
      }
      bool finite = true;
      for (int64_t i = 0; i < g.M * nt; ++i) {
        double sum = 0;
        for (int64_t l = 0; l < L; ++l) sum += D[i * L + l];
        op[c * g.M * nt + i] = static_cast<scalar_t>(sum);
        finite = finite && std::isfinite(sum);
      }
      // The dot products multiply the zero columns of Gf by x too: an inf or NaN in x there
      // makes NaN of taps that never meet it. Such a channel is summed again tap by tap over
      // its valid pixels only, as eager's result has it.
      if (!finite) weight_grad_channel_direct(gp, xp, g, c, op + c * g.M * nt);
    }
  });
}

// ---- channels_last (m == 1, C >= one vector) -----------------------------------------------------

// Work split of the channels_last row kernels: tasks (image, channel chunk, band of rows); bands
// only split images when there are too few (image, chunk) pairs to fill the threads. Images
// that stream from memory (over 1 MB) take all channels in one chunk, so rows are read and
// written contiguously (8x144x56x56 3x3: 1.3-1.4x faster than 64-channel chunks); smaller ones
// take as many 4-vector slabs as keep the chunk's ring of padded source rows within 64 KB
// (8x672x14x14 5x5 and 8x960x7x7 5x5: 1.15x faster than one chunk), measured by sweep.
struct RowSplit {
  int64_t nch, nbands, rows;
  int64_t tasks(int64_t N) const { return N * nch * nbands; }
};

RowSplit row_split(int64_t N, int64_t rows, int64_t C, int64_t lanes, int64_t ring_pixels, int64_t elem,
                   int64_t image_bytes) {
  const int64_t ring_bytes = image_bytes > (int64_t(1) << 20) ? int64_t(512) << 10 : int64_t(64) << 10;
  RowSplit s;
  s.rows = rows;
  const int64_t slabs = std::max<int64_t>(1, C / (4 * lanes));
  const int64_t per_chunk = std::clamp<int64_t>(ring_bytes / (std::max<int64_t>(ring_pixels, 1) * 4 * lanes * elem), 1, slabs);
  s.nch = std::max<int64_t>(1, slabs / per_chunk);
  s.nbands = std::clamp<int64_t>(ceil_div(8 * at::get_num_threads(), N * s.nch), 1, std::max<int64_t>(rows, 1));
  return s;
}

// Chunk k of nch (nch <= C / (4 * lanes)): whole 4-vector slabs; the last chunk takes the tail.
std::pair<int64_t, int64_t> chunk_range(int64_t k, int64_t nch, int64_t C, int64_t lanes) {
  const int64_t slab = 4 * lanes, slabs = C / slab;
  const int64_t c0 = (k * slabs / nch) * slab;
  const int64_t c1 = k + 1 == nch ? C : ((k + 1) * slabs / nch) * slab;
  return {c0, c1};
}

// Task `task`: image n, channels [c0, c1), rows [r0, r1).
struct TaskRows {
  int64_t n, c0, c1, r0, r1;
};

TaskRows task_rows(const RowSplit& s, int64_t C, int64_t lanes, int64_t task) {
  const int64_t band = task % s.nbands, ck = (task / s.nbands) % s.nch, n = task / (s.nbands * s.nch);
  const auto [c0, c1] = chunk_range(ck, s.nch, C, lanes);
  return {n, c0, c1, band * s.rows / s.nbands, (band + 1) * s.rows / s.nbands};
}

// Calls fn(task, t, row) for every row of every task in [begin, end), rows in order (t =
// task_rows(task)).
template <typename F>
void for_task_rows(const RowSplit& s, int64_t C, int64_t lanes, int64_t begin, int64_t end, const F& fn) {
  for (int64_t task = begin; task < end; ++task) {
    const TaskRows t = task_rows(s, C, lanes, task);
    for (int64_t r = t.r0; r < t.r1; ++r) fn(task, t, r);
  }
}

// What the row kernels read through their ring: source rows of `rows` x `pixels` pixels of C
// channels of `elem` bytes from `base` (image n's row h at base + ((n * rows + h) * pixels) *
// C * elem).
struct RingSource {
  const char* base;
  int64_t rows, pixels, C, elem;
};

// Plans the prefetch, during row r of `task`, of the source rows that the row `ahead` rows
// later in this thread's run of tasks [task, end) adds to its ring: sources(row, f) calls f(h)
// for each source row h of output row `row`; a task's first row needs all its source rows,
// a later one those its predecessor did not read. blocks: about how many register blocks the
// current row has, to spread the lines over.
template <typename Sources>
RowPrefetch plan_prefetch(const RowSplit& s, int64_t lanes, int64_t task, int64_t r, int64_t end, int64_t ahead,
                          const RingSource& src, const Sources& sources, int64_t blocks) {
  RowPrefetch pf;
  if (ahead <= 0) return pf;
  TaskRows t = task_rows(s, src.C, lanes, task);
  int64_t row = r + ahead;
  while (row >= t.r1) {  // into the next tasks of the run
    if (++task >= end) return pf;
    row = row - t.r1 + (t = task_rows(s, src.C, lanes, task)).r0;
  }
  int64_t prev[16];
  int nprev = 0;
  if (row > t.r0) sources(row - 1, [&](int64_t h) { if (nprev < 16) prev[nprev++] = h; });
  sources(row, [&](int64_t h) {
    if (pf.nrows == 8 || std::find(prev, prev + nprev, h) != prev + nprev) return;
    pf.rows[pf.nrows++] = src.base + ((t.n * src.rows + h) * src.pixels * src.C + t.c0) * src.elem;
  });
  pf.pix_stride = src.C * src.elem;
  pf.pix_bytes = (t.c1 - t.c0) * src.elem;
  pf.npix = src.pixels;
  pf.per_step = int(ceil_div(pf.nrows * src.pixels * ((pf.pix_bytes + 127) / 64), std::max<int64_t>(blocks, 1)));
  return pf;
}

// A 64-byte aligned buffer (vector loads from std::vector storage would straddle cache lines).
template <typename T>
struct AlignedBuf {
  std::vector<T> store;
  T* ptr = nullptr;
  explicit AlignedBuf(int64_t n) : store(n + 64 / sizeof(T)) {
    const auto addr = reinterpret_cast<uintptr_t>(store.data());
    ptr = store.data() + ((64 - addr % 64) % 64) / sizeof(T);
  }
};

// wT[t][c] = weight[c][t] in T (by hand: a few ATen calls would cost more than a 7x7 layer).
template <typename T>
AlignedBuf<T> tap_major(const at::Tensor& weight, const Geom& g) {
  AlignedBuf<T> wT(g.taps() * g.OC());
  FB_DISPATCH_FLOATING(weight.scalar_type(), "depthwise", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < g.OC(); ++c) {
      for (int64_t t = 0; t < g.taps(); ++t) wT.ptr[t * g.OC() + c] = static_cast<T>(w[c * g.taps() + t]);
    }
  });
  return wT;
}

template <typename T>
AlignedBuf<T> to_aligned(const at::Tensor& v) {
  AlignedBuf<T> out(v.numel());
  FB_DISPATCH_FLOATING(v.scalar_type(), "depthwise", [&] {
    const scalar_t* p = v.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < v.numel(); ++i) out.ptr[i] = static_cast<T>(p[i]);
  });
  return out;
}

// Zero-padded copies of the source rows one task reads, for its channel chunk, in a ring of
// `span` rows: each source row is copied once and serves every output row that needs it, and
// the row kernels never meet a border. Source pixel s sits at padded pixel s + off; the pixels
// outside the source stay zero (the same ones for every row, so they are zeroed once).
template <typename T>
struct PaddedRows {
  int64_t span, Wp, off, stride;
  AlignedBuf<T> buf;
  std::vector<int64_t> tag;
  PaddedRows(int64_t span_, int64_t Wp_, int64_t off_, int64_t stride_)
      : span(span_), Wp(Wp_), off(off_), stride(stride_), buf(span_ * Wp_ * stride_), tag(span_) {
    reset();
  }
  void reset() { std::fill(tag.begin(), tag.end(), std::numeric_limits<int64_t>::min()); }
  // Row `row` of the current image and chunk; src: its pixel 0 at the chunk's first channel,
  // in the storage type S (fp16/bf16 rows are widened to T here, in cache).
  template <typename S>
  const T* get(const Kernels<T>& k, int64_t row, const S* src, int64_t src_pixels, int64_t src_stride,
               int64_t width) {
    const int64_t slot = floor_mod(row, span);
    T* d = buf.ptr + slot * Wp * stride;
    if (tag[slot] != row) {
      const int64_t p0 = std::max<int64_t>(0, -off), p1 = std::min(src_pixels, Wp - off);
      if (p1 > p0) {
        src += p0 * src_stride;
        d += (p0 + off) * stride;
        if constexpr (std::is_same_v<S, T>) {
          k.copy_pixels(src, src_stride, d, stride, p1 - p0, width);
        } else {
          k.template convert<S>().widen(src, src_stride, d, stride, p1 - p0, width);
        }
        d = buf.ptr + slot * Wp * stride;
      }
      tag[slot] = row;
    }
    return d;
  }
  // The row the kernels read: the tensor's own row where `in_place` (possible only when S is
  // T; the kernels then take the borders from a row of zeros), else get()'s padded copy.
  template <typename S>
  const T* read(const Kernels<T>& k, bool in_place, int64_t row, const S* src, int64_t src_pixels,
                int64_t src_stride, int64_t width) {
    if constexpr (std::is_same_v<S, T>) {
      if (in_place) return src;
    }
    return get(k, row, src, src_pixels, src_stride, width);
  }
};

int64_t max_chunk_width(const RowSplit& s, int64_t C, int64_t lanes) {
  int64_t w = 0;
  for (int64_t k = 0; k < s.nch; ++k) {
    const auto [c0, c1] = chunk_range(k, s.nch, C, lanes);
    w = std::max(w, c1 - c0);
  }
  return w;
}

// Outputs over this size are written with non-temporal stores: they outgrow the last-level
// cache, so caching them only evicts the input still to be read (32x672x14x14 5x5 and
// 32x240x28x28 5x5 channels_last forwards, 1 thread: 151 -> 129 and 241 -> 184 us per image).
// Only where every pixel starts on a cache line: non-temporal and plain stores into the same
// line (72 channels: 288-byte pixels) made 32x72x56x56 3x3 2.5x slower than eager.
bool streams_to_memory(const at::Tensor& y) {
  return y.nbytes() >= (int64_t(16) << 20) && y.size(1) * y.element_size() % 64 == 0 &&
         reinterpret_cast<uintptr_t>(y.const_data_ptr()) % 64 == 0;
}

// Rows ahead whose source rows are prefetched during a row (1 and 2 measured alike; 1 keeps
// the fewest lines in flight), when source and output together outgrow the last-level cache.
// Batch-32 channels_last forwards, 2 threads of an AMD EPYC, geomean over the bench's 28
// layers: 1.14x eager without prefetching, 1.49x with (on a 2-thread Xeon with a large L3:
// 1.31-1.35x either way, also with prefetching below the threshold). Below the threshold,
// on the EPYC, they cost more than they save (measured on ring rows: 32x960x7x7 3x3 and
// 32x1152x7x7 5x5, 0.76-0.82x eager with, 0.85-0.92x without).
constexpr int64_t kPrefetchRows = 1;
int64_t prefetch_rows(const at::Tensor& src, const at::Tensor& out) {
  return src.nbytes() + out.nbytes() >= (int64_t(16) << 20) ? kPrefetchRows : 0;
}

// Tasks per chunk of parallel_dynamic for the ring kernels: enough for every task to be worth
// its thread, and several where tasks are many, so that a task's last row knows the next
// task's first rows to prefetch (a thread's next chunk is not known in advance).
int64_t ring_grain(int64_t tasks, int64_t work_per_task) {
  return std::max(grain_for(work_per_task), std::min<int64_t>(8, tasks / (8 * at::get_num_threads())));
}

// Writes a row of npix pixels x width channels from the kernels' row buffer (T, pixel stride
// rstride) to the tensor (S, pixel stride C): narrowed for fp16/bf16, streamed past the cache
// when `stream`; nothing to do when the kernels wrote the tensor directly (row == out).
template <typename S, typename T>
void store_row(const Kernels<T>& k, const T* row, int64_t rstride, S* out, int64_t C, int64_t npix, int64_t width,
               bool stream) {
  if constexpr (std::is_same_v<S, T>) {
    if (stream) k.stream_pixels(row, rstride, out, C, npix, width);
  } else {
    k.template convert<S>().narrow(row, rstride, out, C, npix, width);
  }
}

// x and y in the storage type S, the sums in T. fp16/bf16 (S != T) are widened as the padded
// rows are copied and narrowed from a row of T after the epilogue, so the tensors are read and
// written once, in their own type.
template <typename S, typename T>
void forward_nhwc(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                  const Geom& g, int act, at::Tensor& y) {
  constexpr bool direct = std::is_same_v<S, T>;
  const Kernels<T>& k = kernels<T>();
  const AlignedBuf<T> wT = tap_major<T>(weight, g);
  const AlignedBuf<T> bT = bias ? to_aligned<T>(*bias) : AlignedBuf<T>(0);
  const S* xp = x.const_data_ptr<S>();
  const T* wp = wT.ptr;
  const T* bp = bias ? bT.ptr : nullptr;
  S* yp = y.mutable_data_ptr<S>();
  const int64_t C = g.C;
  // Padded input rows: output column t, tap kw reads padded pixel t*sw + kw*dw (input column
  // t*sw + kw*dw - pw).
  std::vector<int64_t> q(g.KW), wcol(g.KW);
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    q[kw] = kw * g.dw;
    wcol[kw] = kw * C;
  }
  // Calls f(kh, ih) for the kernel rows of output row oh that fall inside the input.
  const auto sources = [&](int64_t oh, const auto& f) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih >= 0 && ih < g.H) f(kh, ih);
    }
  };
  const RingSource src{reinterpret_cast<const char*>(xp), g.H, g.W, C, int64_t(sizeof(S))};
  const int64_t Wp = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1, span = (g.KH - 1) * g.dh + 1;
  const RowSplit split = row_split(g.N, g.OH, C, k.lanes, span * Wp, sizeof(T), g.H * g.W * C * sizeof(T));
  const int64_t stride = max_chunk_width(split, C, k.lanes);
  const int64_t work = g.OH / split.nbands * g.OW * (C / split.nch) * g.taps();
  const bool stream = direct && streams_to_memory(y);
  const int64_t ahead = prefetch_rows(x, y);
  // fp32/fp64 sliding rows read the input in place, the borders through a row of zeros: the
  // copy to the ring took a fifth of the time with the input in cache (perf, 2x672x14x14 5x5).
  // Batch-32 channels_last forwards, 2 threads, bench geomean: 1.41x eager copying, 1.49x in
  // place (same build, one after the other); batch 1: 1.17x in the committed results before,
  // 1.39x after.
  const bool in_place = direct && g.dw == 1 && slides(g.sw, g.KW);
  const AlignedBuf<T> zeros(in_place ? stride : 0);
  parallel_dynamic(split.tasks(g.N), ring_grain(split.tasks(g.N), work), [&](const auto& next) {
    std::vector<const T*> rp(g.KH), wr(g.KH), scratch(2 * g.taps());
    PaddedRows<T> pad(in_place ? 0 : span, Wp, g.pw, stride);
    // One output row in T before narrowing or streaming to memory.
    AlignedBuf<T> row(direct && !stream ? 0 : g.OW * stride);
    int64_t cur_n = -1, cur_c = -1;
    for (int64_t begin, end; next(begin, end);)
    for_task_rows(split, C, k.lanes, begin, end, [&](int64_t task, const TaskRows& t, int64_t oh) {
      const int64_t n = t.n, c0 = t.c0, c1 = t.c1;
      if (n != cur_n || c0 != cur_c) {
        pad.reset();
        cur_n = n;
        cur_c = c0;
      }
      int nrows = 0;
      sources(oh, [&](int64_t kh, int64_t ih) {
        rp[nrows] = pad.read(k, in_place, ih, xp + (n * g.H + ih) * g.W * C + c0, g.W, C, c1 - c0);
        wr[nrows++] = wp + kh * g.KW * C + c0;
      });
      RowPrefetch pf = plan_prefetch(split, k.lanes, task, oh, end, ahead, src,
                                     [&](int64_t r, const auto& f) { sources(r, [&](int64_t, int64_t ih) { f(ih); }); },
                                     ceil_div(c1 - c0, k.lanes) * ceil_div(g.OW, 8));
      S* out = yp + (n * g.OH + oh) * g.OW * C + c0;
      T* dst;
      int64_t dst_step;
      if (direct && !stream) {
        dst = reinterpret_cast<T*>(out);
        dst_step = C;
      } else {
        dst = row.ptr;
        dst_step = stride;
      }
      NhwcRow<T> a{rp.data(), wr.data(), nrows, q.data(), wcol.data(), int(g.KW), g.sw, g.OW,
                   dst, dst_step, stride, c1 - c0, bp ? bp + c0 : nullptr, scratch.data(), &pf};
      if (in_place) {
        a.C = C;
        a.src_off = g.pw;
        a.src_pixels = g.W;
        a.zeros = zeros.ptr;
      }
      k.nhwc_row(a);
      pf.finish();
      if (act && dst_step == c1 - c0) {  // whole pixels: one call per row
        k.apply_act(dst, g.OW * dst_step, act);
      } else if (act) {
        for (int64_t ow = 0; ow < g.OW; ++ow) k.apply_act(dst + ow * dst_step, c1 - c0, act);
      }
      store_row<S, T>(k, dst, dst_step, out, C, g.OW, c1 - c0, stream);
    });
    if (stream) _mm_sfence();
  });
}

// The input gradient as a gather: input column iw = rp + sw*t (residue class rp = iw % sw)
// reads gradient column t + q[rp][i] with weight column wcol[rp][i] (kw * col_step, the
// weight's stride between kernel columns in the caller's layout). q is shifted so the
// leftmost tap reads padded gradient column 0: gradient column ow sits at ow - qmin in padded
// rows of Wp pixels.
struct ColumnTaps {
  std::vector<std::vector<int64_t>> q, wcol;
  int64_t qmin = 0, Wp = 1;
  int64_t nres() const { return static_cast<int64_t>(q.size()); }
};

ColumnTaps column_taps(const Geom& g, int64_t col_step) {
  ColumnTaps t;
  const int64_t nres = std::min(g.sw, g.W);
  t.q.resize(nres);
  t.wcol.resize(nres);
  int64_t qmax = 0;
  bool any = false;
  for (int64_t rp = 0; rp < nres; ++rp) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t v = rp + g.pw - kw * g.dw;
      if (floor_mod(v, g.sw) != 0) continue;
      const int64_t qq = floor_div(v, g.sw);
      t.qmin = any ? std::min(t.qmin, qq) : qq;
      qmax = any ? std::max(qmax, qq) : qq;
      any = true;
      t.q[rp].push_back(qq);
      t.wcol[rp].push_back(kw * col_step);
    }
  }
  for (auto& v : t.q) {
    for (auto& qq : v) qq -= t.qmin;
  }
  t.Wp = std::max<int64_t>(1, qmax - t.qmin + ceil_div(g.W, g.sw));
  return t;
}

// grad and gx in the storage type S, the sums in T, as in forward_nhwc.
template <typename S, typename T>
void backward_input_nhwc(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                         at::Tensor& gx) {
  constexpr bool direct = std::is_same_v<S, T>;
  const Kernels<T>& k = kernels<T>();
  const AlignedBuf<T> wT = tap_major<T>(weight, g);
  const S* gp = grad.const_data_ptr<S>();
  const T* wp = wT.ptr;
  S* op = gx.mutable_data_ptr<S>();
  const int64_t C = g.C;
  const ColumnTaps taps = column_taps(g, C);
  const auto& q = taps.q;
  const auto& wcol = taps.wcol;
  const int64_t nres = taps.nres(), qmin = taps.qmin, Wp = taps.Wp;
  // Calls f(kh, oh) for the gradient rows that reach input row ih through kernel row kh.
  const auto sources = [&](int64_t ih, const auto& f) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t v = ih + g.ph - kh * g.dh;
      if (floor_mod(v, g.sh) != 0) continue;
      const int64_t oh = floor_div(v, g.sh);
      if (oh >= 0 && oh < g.OH) f(kh, oh);
    }
  };
  const RingSource src{reinterpret_cast<const char*>(gp), g.OH, g.OW, C, int64_t(sizeof(S))};
  const int64_t span = (g.KH - 1) * g.dh / g.sh + 2;
  const RowSplit split = row_split(g.N, g.H, C, k.lanes, span * Wp, sizeof(T), g.H * g.W * C * sizeof(T));
  const int64_t stride = max_chunk_width(split, C, k.lanes);
  const int64_t work = g.H / split.nbands * g.W * (C / split.nch) * ceil_div(g.KH, g.sh) * ceil_div(g.KW, g.sw);
  const bool stream = direct && streams_to_memory(gx);
  const int64_t ahead = prefetch_rows(grad, gx);
  // fp32/fp64 gradient rows are read in place, as the forward reads its input, when every
  // residue class of input columns slides (its taps are consecutive gradient columns).
  // Batch-32 channels_last forward+backward bench, 2 threads of a Xeon (AVX-512), two runs
  // each: 1.42-1.43x eager geomean copying, 1.46x in place.
  bool in_place = direct && g.dw == 1;
  for (int64_t rp = 0; rp < nres; ++rp) {
    std::vector<int64_t> sorted = q[rp];
    std::sort(sorted.begin(), sorted.end());
    const bool consecutive = std::adjacent_find(sorted.begin(), sorted.end(),
                                                [](int64_t a, int64_t b) { return b != a + 1; }) == sorted.end();
    in_place = in_place && slides(1, int64_t(sorted.size())) && consecutive;
  }
  const AlignedBuf<T> zeros(in_place ? stride : 0);
  parallel_dynamic(split.tasks(g.N), ring_grain(split.tasks(g.N), work), [&](const auto& next) {
    std::vector<const T*> rows(g.KH), wr(g.KH), scratch(2 * g.taps());
    PaddedRows<T> pad(in_place ? 0 : span, Wp, -qmin, stride);
    // One input-gradient row in T before narrowing or streaming to memory.
    AlignedBuf<T> row(direct && !stream ? 0 : g.W * stride);
    int64_t cur_n = -1, cur_c = -1;
    for (int64_t begin, end; next(begin, end);)
    for_task_rows(split, C, k.lanes, begin, end, [&](int64_t task, const TaskRows& t, int64_t ih) {
      const int64_t n = t.n, c0 = t.c0, c1 = t.c1;
      if (n != cur_n || c0 != cur_c) {
        pad.reset();
        cur_n = n;
        cur_c = c0;
      }
      int nrows = 0;
      sources(ih, [&](int64_t kh, int64_t oh) {
        rows[nrows] = pad.read(k, in_place, oh, gp + (n * g.OH + oh) * g.OW * C + c0, g.OW, C, c1 - c0);
        wr[nrows++] = wp + kh * g.KW * C + c0;
      });
      RowPrefetch pf = plan_prefetch(split, k.lanes, task, ih, end, ahead, src,
                                     [&](int64_t r, const auto& f) { sources(r, [&](int64_t, int64_t oh) { f(oh); }); },
                                     ceil_div(c1 - c0, k.lanes) * ceil_div(g.W, 8));
      S* out = op + (n * g.H + ih) * g.W * C + c0;
      T* dst;
      int64_t pix;  // pixel stride of dst
      if (direct && !stream) {
        dst = reinterpret_cast<T*>(out);
        pix = C;
      } else {
        dst = row.ptr;
        pix = stride;
      }
      for (int64_t rp = 0; rp < nres; ++rp) {
        NhwcRow<T> a{rows.data(), wr.data(), nrows, q[rp].data(), wcol[rp].data(), int(q[rp].size()),
                     1, ceil_div(g.W - rp, g.sw), dst + rp * pix, g.sw * pix,
                     stride, c1 - c0, nullptr, scratch.data(), &pf};
        if (in_place) {
          a.C = C;
          a.src_off = -qmin;  // padded column p is gradient column p + qmin
          a.src_pixels = g.OW;
          a.zeros = zeros.ptr;
        }
        k.nhwc_row(a);
      }
      pf.finish();
      store_row<S, T>(k, dst, pix, out, C, g.W, c1 - c0, stream);
    });
    if (stream) _mm_sfence();
  });
}

template <typename T>
void backward_weight_nhwc(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                          at::Tensor& gwT) {
  const Kernels<T>& k = kernels<T>();
  const int64_t C = g.C, nt = g.taps();
  std::vector<int64_t> lo(g.KW), hi(g.KW);
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    const int64_t off = kw * g.dw - g.pw;
    lo[kw] = std::clamp<int64_t>(ceil_div(-off, g.sw), 0, g.OW);
    hi[kw] = std::clamp<int64_t>(floor_div(g.W - 1 - off, g.sw) + 1, lo[kw], g.OW);
  }
  NhwcWgrad<T> a{grad.const_data_ptr<T>(), x.const_data_ptr<T>(), g.N, C, g.H, g.W, g.OH, g.OW,
                 g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, lo.data(), hi.data()};
  T* op = gwT.mutable_data_ptr<T>();  // (C, taps)
  // Rows split into a fixed number of chunks (never depending on the thread count), each summed
  // by one task, then the chunks added in order: deterministic and cache-friendly (a chunk
  // walks whole rows, all channels).
  // Chunk count: a power of two from the work (2 for a 14x14x576 layer, 16 from 4M multiply-
  // adds up), capped so the per-chunk double sums stay within 4 MB.
  const int64_t rows = g.N * g.OH, size = nt * C;
  const int64_t work = rows * g.OW * size;
  int64_t K = 2;
  while (K < 16 && (K << 19) <= work) K *= 2;
  K = std::clamp<int64_t>(std::min<int64_t>(K, (int64_t(1) << 22) / (size * 8)), 1, rows);
  std::vector<double> D(K * size, 0.0);
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> F(size, T(0));
    for (int64_t kc = begin; kc < end; ++kc) {
      k.nhwc_wgrad(a, kc * rows / K, (kc + 1) * rows / K, F.data(), D.data() + kc * size);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < nt; ++t) {
      double sum = 0;
      for (int64_t kc = 0; kc < K; ++kc) sum += D[kc * size + t * C + c];
      op[c * nt + t] = static_cast<T>(sum);
    }
  }
}

// ---- NCHW small planes in channel blocks ----------------------------------------------------------

// Planes this small go through channel blocks: one task gathers L channels (L = vector lanes) of
// one image into pixel vectors [row][col][L], runs the channels_last row kernels there and
// transposes the result back into the L output planes. The phase-split path pays per-plane
// overhead (scratch fill, a 1-d sum of a few vectors, row copies) that dominates at 7x7/14x14.
constexpr int64_t kBlockedMaxPixels = 1024;

bool nchw_blocked(const Geom& g, int64_t lanes) {
  return g.M == 1 && g.C >= lanes && g.H * g.W >= lanes && g.OH * g.OW >= lanes &&
         std::max(g.H * g.W, g.OH * g.OW) <= kBlockedMaxPixels;
}

// dst[idx[p]*L + l] = src[l*plane + p] (idx[p] >= 0), converted to T.
template <typename T, typename scalar_t>
void gather_planes(const Kernels<T>& k, const scalar_t* src, int64_t plane, int64_t npix, const int64_t* idx,
                   T* dst) {
  const int64_t L = k.lanes;
  if constexpr (std::is_same_v<T, scalar_t>) {
    k.gather_block(src, plane, npix, idx, dst);
  } else {  // fp16/bf16: widen the L planes (contiguous in NCHW), then the same transposes
    thread_local std::vector<T> wide;
    wide.resize(L * plane);
    widen_n(src, wide.data(), L * plane);
    k.gather_block(wide.data(), plane, npix, idx, dst);
  }
}

// dst[l*plane + p] = src[p*L + l], converted to scalar_t.
template <typename T, typename scalar_t>
void scatter_planes(const Kernels<T>& k, const T* src, int64_t npix, scalar_t* dst, int64_t plane) {
  const int64_t L = k.lanes;
  if constexpr (std::is_same_v<T, scalar_t>) {
    k.scatter_block(src, npix, dst, plane);
  } else if (npix == plane) {  // fp16/bf16: the transposes in T, then one narrowing pass
    thread_local std::vector<T> wide;
    wide.resize(L * plane);
    k.scatter_block(src, npix, wide.data(), plane);
    narrow_n(wide.data(), dst, L * plane);
  } else {
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t p = 0; p < npix; ++p) dst[l * plane + p] = narrow<scalar_t>(src[p * L + l]);
    }
  }
}

// First channel of block b of ceil(C / L): the last block overlaps its neighbour.
inline int64_t block_c0(int64_t b, int64_t C, int64_t L) { return std::min(b * L, C - L); }

// wb[t*L + l] = weight[c0 + l][t] in T.
template <typename T, typename scalar_t>
void block_weights(const scalar_t* w, int64_t c0, int64_t nt, int64_t L, T* wb) {
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t t = 0; t < nt; ++t) wb[t * L + l] = static_cast<T>(w[(c0 + l) * nt + t]);
  }
}

template <typename scalar_t>
void forward_nchw_blocked(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                          const Geom& g, int act, at::Tensor& y) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, nt = g.taps(), HW = g.H * g.W, OHW = g.OH * g.OW;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  // Scratch S[ih][col][L], input column iw at col iw + pw (columns past Wp are never read);
  // rows outside the input are left out of the tap sums, as in forward_nhwc.
  const int64_t Wp = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  std::vector<int64_t> idx(HW), q(g.KW), wcol(g.KW);
  for (int64_t p = 0; p < HW; ++p) {
    const int64_t col = p % g.W + g.pw;
    idx[p] = col < Wp ? (p / g.W) * Wp + col : -1;
  }
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    q[kw] = kw * g.dw;
    wcol[kw] = kw * L;
  }
  const int64_t nblk = ceil_div(g.C, L);
  parallel_dynamic(g.N * nblk, grain_for(OHW * L * nt), [&](const auto& next) {
    AlignedBuf<T> S(g.H * Wp * L), O(OHW * L), wb(nt * L), bb(L);
    std::fill(S.ptr, S.ptr + g.H * Wp * L, T(0));
    std::vector<const T*> rp(g.KH), wr(g.KH), scratch(2 * nt);
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / nblk, c0 = block_c0(task % nblk, g.C, L);
      gather_planes(k, xp + (n * g.C + c0) * HW, HW, HW, idx.data(), S.ptr);
      block_weights(wp, c0, nt, L, wb.ptr);
      if (bp) {
        for (int64_t l = 0; l < L; ++l) bb.ptr[l] = static_cast<T>(bp[c0 + l]);
      }
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        int nrows = 0;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          rp[nrows] = S.ptr + ih * Wp * L;
          wr[nrows++] = wb.ptr + kh * g.KW * L;
        }
        NhwcRow<T> a{rp.data(), wr.data(), nrows, q.data(), wcol.data(), int(g.KW), g.sw, g.OW,
                     O.ptr + oh * g.OW * L, L, L, L, bp ? bb.ptr : nullptr, scratch.data()};
        k.nhwc_row(a);
      }
      if (act) k.apply_act(O.ptr, OHW * L, act);
      scatter_planes(k, O.ptr, OHW, yp + (n * g.C + c0) * OHW, OHW);
    }
  });
}

// Input gradient in channel blocks: the gradient block goes into S[oh][col][L] (gradient column
// ow at col ow - qmin) and each input row is the channels_last transposed row sum over it.
template <typename scalar_t>
void backward_input_nchw_blocked(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                                 at::Tensor& gx) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, nt = g.taps(), HW = g.H * g.W, OHW = g.OH * g.OW;
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  scalar_t* op = gx.mutable_data_ptr<scalar_t>();
  const ColumnTaps taps = column_taps(g, L);
  const auto& q = taps.q;
  const auto& wcol = taps.wcol;
  const int64_t nres = taps.nres(), qmin = taps.qmin, Wp = taps.Wp;
  std::vector<int64_t> idx(OHW);
  for (int64_t p = 0; p < OHW; ++p) {
    const int64_t col = p % g.OW - qmin;
    idx[p] = col >= 0 && col < Wp ? (p / g.OW) * Wp + col : -1;
  }
  const int64_t nblk = ceil_div(g.C, L);
  const int64_t work = HW * L * ceil_div(g.KH, g.sh) * ceil_div(g.KW, g.sw);
  parallel_dynamic(g.N * nblk, grain_for(work), [&](const auto& next) {
    AlignedBuf<T> S(g.OH * Wp * L), O(HW * L), wb(nt * L);
    std::fill(S.ptr, S.ptr + g.OH * Wp * L, T(0));
    std::vector<const T*> rows(g.KH), wr(g.KH), scratch(2 * nt);
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / nblk, c0 = block_c0(task % nblk, g.C, L);
      gather_planes(k, gp + (n * g.C + c0) * OHW, OHW, OHW, idx.data(), S.ptr);
      block_weights(wp, c0, nt, L, wb.ptr);
      for (int64_t ih = 0; ih < g.H; ++ih) {
        int nrows = 0;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t v = ih + g.ph - kh * g.dh;
          if (floor_mod(v, g.sh) != 0) continue;
          const int64_t oh = floor_div(v, g.sh);
          if (oh < 0 || oh >= g.OH) continue;
          rows[nrows] = S.ptr + oh * Wp * L;
          wr[nrows++] = wb.ptr + kh * g.KW * L;
        }
        for (int64_t rp = 0; rp < nres; ++rp) {
          NhwcRow<T> a{rows.data(), wr.data(), nrows, q[rp].data(), wcol[rp].data(), int(q[rp].size()),
                       1, ceil_div(g.W - rp, g.sw), O.ptr + (ih * g.W + rp) * L, g.sw * L,
                       L, L, nullptr, scratch.data()};
          k.nhwc_row(a);
        }
      }
      scatter_planes(k, O.ptr, HW, op + (n * g.C + c0) * HW, HW);
    }
  });
}

// Weight gradient in channel blocks: one task per block of L channels walks the images in order
// (so the sums do not depend on the thread count), gathering x and the gradient into pixel
// vectors and summing them with the channels_last weight-gradient kernel.
template <typename scalar_t>
void backward_weight_nchw_blocked(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                                  at::Tensor& gw) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& k = kernels<T>();
  const int64_t L = k.lanes, nt = g.taps(), HW = g.H * g.W, OHW = g.OH * g.OW;
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = gw.mutable_data_ptr<scalar_t>();
  std::vector<int64_t> lo(g.KW), hi(g.KW), xidx(HW), gidx(OHW);
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    const int64_t off = kw * g.dw - g.pw;
    lo[kw] = std::clamp<int64_t>(ceil_div(-off, g.sw), 0, g.OW);
    hi[kw] = std::clamp<int64_t>(floor_div(g.W - 1 - off, g.sw) + 1, lo[kw], g.OW);
  }
  for (int64_t p = 0; p < HW; ++p) xidx[p] = p;
  for (int64_t p = 0; p < OHW; ++p) gidx[p] = p;
  const int64_t nblk = ceil_div(g.C, L);
  at::parallel_for(0, nblk, grain_for(g.N * OHW * L * nt), [&](int64_t begin, int64_t end) {
    AlignedBuf<T> X(HW * L), G(OHW * L);
    std::vector<T> F(nt * L, T(0));
    std::vector<double> D(nt * L);
    const NhwcWgrad<T> a{G.ptr, X.ptr, 1, L, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw,
                         g.dh, g.dw, lo.data(), hi.data()};
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c0 = block_c0(b, g.C, L);
      std::fill(D.begin(), D.end(), 0.0);
      for (int64_t n = 0; n < g.N; ++n) {
        gather_planes(k, xp + (n * g.C + c0) * HW, HW, HW, xidx.data(), X.ptr);
        gather_planes(k, gp + (n * g.C + c0) * OHW, OHW, OHW, gidx.data(), G.ptr);
        k.nhwc_wgrad(a, 0, g.OH, F.data(), D.data());
      }
      // The last block overlaps its neighbour; it writes only its own channels.
      for (int64_t l = b * L - c0; l < L; ++l) {
        for (int64_t t = 0; t < nt; ++t) op[(c0 + l) * nt + t] = static_cast<scalar_t>(D[t * L + l]);
      }
    }
  });
}

// channels_last runs natively for m == 1 and at least one vector of channels.
bool nhwc_native(const Geom& g, at::ScalarType dtype) {
  const int64_t lanes = dtype == at::kDouble ? kernels<double>().lanes : kernels<float>().lanes;
  return g.M == 1 && g.C >= lanes;
}

// The channels_last weight gradient computes in float or double; fp16/bf16 go through float
// copies of grad and x (the forward and input gradient widen row by row instead).
at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ---- ops ----------------------------------------------------------------------------------------

at::Tensor depthwise_forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             at::IntArrayRef out_size, int64_t act, bool channels_last) {
  constexpr const char* op = "depthwise_forward";
  const at::Tensor x = depthwise::in_format(x_in, op, "x", channels_last);
  const at::Tensor weight = weight_in.contiguous();
  const std::optional<at::Tensor> bias = depthwise::contiguous_opt(bias_in);
  const DepthwiseShape shape = depthwise::forward_shape(x, weight, bias, stride, padding, dilation,
                                                        out_size, act, channels_last);
  const Geom g = geom_of(shape);
  const at::Tensor* b = bias.has_value() ? &*bias : nullptr;
  at::Tensor y = at::empty({g.N, g.OC(), g.OH, g.OW}, x.options().memory_format(mem_format(channels_last)));
  if (y.numel() == 0) return y;
  const int a = static_cast<int>(act);
  if (direct::preferred(shape)) {
    direct::forward(x, weight, b, shape, a, y);
    return y;
  }
  if (channels_last && nhwc_native(g, x.scalar_type())) {
    FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
      forward_nhwc<scalar_t, at::opmath_type<scalar_t>>(x, weight, b, g, a, y);
    });
    return y;
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor yc = channels_last ? at::empty({g.N, g.OC(), g.OH, g.OW}, x.options()) : y;
  FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
    if (nchw_blocked(g, kernels<at::opmath_type<scalar_t>>().lanes)) {
      forward_nchw_blocked<scalar_t>(xc, weight, b, g, a, yc);
    } else {
      forward_nchw<scalar_t>(xc, weight, b, g, a, yc);
    }
  });
  if (!yc.is_same(y)) y.copy_(yc);
  return y;
}

// in_size is (H, W), meaning multiplier 1 (C = grad channels), or (C, H, W): grad and weight alone
// cannot tell C from m.
at::Tensor depthwise_backward_input(const at::Tensor& grad_in, const at::Tensor& weight_in,
                                    at::IntArrayRef in_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    bool channels_last) {
  constexpr const char* op = "depthwise_backward_input";
  const at::Tensor grad = depthwise::in_format(grad_in, op, "grad", channels_last);
  const at::Tensor weight = weight_in.contiguous();
  const DepthwiseShape shape = depthwise::backward_input_shape(grad, weight, in_size, stride, padding,
                                                               dilation, channels_last);
  const Geom g = geom_of(shape);
  at::Tensor gx = at::empty({g.N, g.C, g.H, g.W}, grad.options().memory_format(mem_format(channels_last)));
  if (gx.numel() == 0) return gx;
  if (g.OH == 0 || g.OW == 0) return gx.zero_();
  if (direct::preferred(shape)) {
    direct::backward_input(grad, weight, shape, gx);
    return gx;
  }
  if (channels_last && nhwc_native(g, grad.scalar_type())) {
    FB_DISPATCH_FLOATING(grad.scalar_type(), op, [&] {
      backward_input_nhwc<scalar_t, at::opmath_type<scalar_t>>(grad, weight, g, gx);
    });
    return gx;
  }
  const at::Tensor gc = grad.contiguous();
  at::Tensor xc = channels_last ? at::empty({g.N, g.C, g.H, g.W}, grad.options()) : gx;
  FB_DISPATCH_FLOATING(grad.scalar_type(), op, [&] {
    if (nchw_blocked(g, kernels<at::opmath_type<scalar_t>>().lanes)) {
      backward_input_nchw_blocked<scalar_t>(gc, weight, g, xc);
    } else {
      backward_input_nchw<scalar_t>(gc, weight, g, xc);
    }
  });
  if (!xc.is_same(gx)) gx.copy_(xc);
  return gx;
}

at::Tensor depthwise_backward_weight(const at::Tensor& grad_in, const at::Tensor& x_in,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     bool channels_last) {
  constexpr const char* op = "depthwise_backward_weight";
  const at::Tensor grad = depthwise::in_format(grad_in, op, "grad", channels_last);
  const at::Tensor x = depthwise::in_format(x_in, op, "x", channels_last);
  const DepthwiseShape shape = depthwise::backward_weight_shape(grad, x, kernel_size, stride, padding,
                                                                dilation, channels_last);
  const Geom g = geom_of(shape);
  const int64_t OC = g.OC();
  at::Tensor gw = at::zeros({OC, 1, g.KH, g.KW}, x.options());
  if (g.N == 0 || g.OH == 0 || g.OW == 0 || g.H == 0 || g.W == 0) return gw;
  if (direct::preferred(shape)) {
    direct::backward_weight(grad, x, shape, gw);
    return gw;
  }
  if (channels_last && nhwc_native(g, x.scalar_type())) {
    const at::ScalarType ct = compute_type(x.scalar_type());
    const at::Tensor gc = grad.to(ct), xc = x.to(ct);
    at::Tensor wc = x.scalar_type() == ct ? gw : at::empty_like(gw, gw.options().dtype(ct));
    if (ct == at::kDouble) {
      backward_weight_nhwc<double>(gc, xc, g, wc);
    } else {
      backward_weight_nhwc<float>(gc, xc, g, wc);
    }
    if (!wc.is_same(gw)) gw.copy_(wc);
    return gw;
  }
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
  FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
    if (nchw_blocked(g, kernels<at::opmath_type<scalar_t>>().lanes)) {
      backward_weight_nchw_blocked<scalar_t>(gc, xc, g, gw);
    } else {
      backward_weight_nchw<scalar_t>(gc, xc, g, gw);
    }
  });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("depthwise_forward", &depthwise_forward);
  m.impl("depthwise_backward_input", &depthwise_backward_input);
  m.impl("depthwise_backward_weight", &depthwise_backward_weight);
}

}  // namespace fastblocks::cpu
