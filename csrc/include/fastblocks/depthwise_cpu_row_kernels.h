// The vector kernels of the channels_last rows, included only by the ISA translation units
// (depthwise_cpu_isa_table.h): one output row of one channel chunk (nhwc_row: sliding register
// blocks where a row's column taps are consecutive source pixels, 4-pixel generic blocks
// otherwise; the forward and the input gradient share it, csrc/cpu/depthwise_forward.cpp says
// how the rows are fed), and the pixel copies between the tensors and the kernels' rows: plain,
// streamed past the cache, and widened from / narrowed to fp16 and bf16 in registers.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "fastblocks/cpu_convert.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {
// Internal to each ISA translation unit, as are the wrappers that instantiate these: what GCC
// does not inline (std::sort's loop, NextRows) stays a local function of that unit.
namespace {

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

// Source pixel p of a row read in place (src at channel c0): the row of zeros outside the
// source where BORDER.
template <typename T, int VB, bool BORDER>
FB_AI Vec<T, VB> slide_source(const NhwcRow<T>& a, const T* src, int64_t p, int64_t c0) {
  if constexpr (BORDER) {
    return vload<T, VB>(uint64_t(p) < uint64_t(a.src_pixels) ? src + p * a.C : a.zeros + c0);
  } else {
    return vload<T, VB>(src + p * a.C);
  }
}

// Outputs t .. t+UP at step SW whose KW column taps are consecutive source pixels q0 + j
// (weights at wcol[j]): output u reads source pixels (t+u)*SW + q0 + j, so the (UP-1)*SW + KW
// source vectors of a block are each loaded once and meet all their taps in registers (about
// 0.4 loads per FMA for a 5-wide kernel at step 1, 0.6 at step 2, instead of 1.25).
template <typename T, int VB, int KW, int SW, int UP, bool BORDER>
FB_AI void nhwc_slide(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol, int64_t t, int64_t c0) {
  using V = Vec<T, VB>;
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
      const V xv = slide_source<T, VB, BORDER>(a, src, p0 + i, c0);
#pragma GCC unroll 8
      for (int u = 0; u < UP; ++u) {
        const int j = i - u * SW;
        if (j >= 0 && j < KW) acc[u] += wv[j] * xv;
      }
    }
  }
  T* dst = a.dst + t * a.dst_step + c0;
  if (act_in_registers(a.act)) {
#pragma GCC unroll 8
    for (int u = 0; u < UP; ++u) acc[u] = act_vec<T, VB>(acc[u], a.act);
  }
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) vstore<T, VB>(dst + u * a.dst_step, acc[u]);
}

// nhwc_slide for two output rows at once (NhwcRow::pair): source row r feeds the first row's
// sums with weights wrows[r] (r < nrows) and the second's with wrows[r - pair] (r >= pair),
// each source vector loaded once for both.
template <typename T, int VB, int KW, int SW, int UP, bool BORDER>
FB_AI void nhwc_slide2(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol, int64_t t, int64_t c0) {
  using V = Vec<T, VB>;
  V acc0[UP], acc1[UP];
  const V b = a.bias ? vload<T, VB>(a.bias + c0) : V{};
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) acc0[u] = acc1[u] = b;
  const int64_t p0 = q0 + t * SW - a.src_off;
  const auto row = [&](int r, V* acc_a, const T* wa, V* acc_b, const T* wb) FB_AI_LAMBDA {
    V wva[KW], wvb[KW];
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j) {
      if (acc_a) wva[j] = vload<T, VB>(wa + wcol[j] + c0);
      if (acc_b) wvb[j] = vload<T, VB>(wb + wcol[j] + c0);
    }
    const T* src = a.rows[r] + c0;
#pragma GCC unroll 32
    for (int i = 0; i < (UP - 1) * SW + KW; ++i) {
      const V xv = slide_source<T, VB, BORDER>(a, src, p0 + i, c0);
#pragma GCC unroll 8
      for (int u = 0; u < UP; ++u) {
        const int j = i - u * SW;
        if (j >= 0 && j < KW) {
          if (acc_a) acc_a[u] += wva[j] * xv;
          if (acc_b) acc_b[u] += wvb[j] * xv;
        }
      }
    }
  };
  const int n = a.nrows + a.pair;
  for (int r = 0; r < n; ++r) {
    const bool fa = r < a.nrows, fb = r >= a.pair;
    if (fa && fb) {
      row(r, acc0, a.wrows[r], acc1, a.wrows[r - a.pair]);
    } else if (fa) {
      row(r, acc0, a.wrows[r], nullptr, nullptr);
    } else {
      row(r, nullptr, nullptr, acc1, a.wrows[r - a.pair]);
    }
  }
  T* dst0 = a.dst + t * a.dst_step + c0;
  T* dst1 = a.dst2 + t * a.dst_step + c0;
  if (act_in_registers(a.act)) {
#pragma GCC unroll 8
    for (int u = 0; u < UP; ++u) {
      acc0[u] = act_vec<T, VB>(acc0[u], a.act);
      acc1[u] = act_vec<T, VB>(acc1[u], a.act);
    }
  }
#pragma GCC unroll 8
  for (int u = 0; u < UP; ++u) {
    vstore<T, VB>(dst0 + u * a.dst_step, acc0[u]);
    vstore<T, VB>(dst1 + u * a.dst_step, acc1[u]);
  }
}

// The activation over channels [c_begin, c_end) of npix pixels at dst (pixel stride step).
template <typename T, int VB>
FB_AI void act_pixels(T* dst, int64_t step, int64_t npix, int64_t c_begin, int64_t c_end, int act) {
  if (step == c_end - c_begin) {  // whole pixels: one run
    apply_act_impl<T, VB>(dst + c_begin, npix * step, act);
    return;
  }
  for (int64_t p = 0; p < npix; ++p) apply_act_impl<T, VB>(dst + p * step + c_begin, c_end - c_begin, act);
}

// Block starts covering [0, count) with blocks of up pixels; the last block overlaps its
// neighbour rather than shrinking (the same values are stored twice). Requires count >= up.
#define FB_DW_FOR_BLOCKS(t, count, up) \
  for (int64_t t##_i = 0, t = 0; t##_i < (count); t##_i += (up), t = std::min(t##_i, (count) - (up)))

// A pixel block's channel vectors one after another, so the block's source pixels (all their
// cache lines) are fetched from L2 once; the activation in registers, or for SiLU over the
// block while it is in L1. Thread CPU time per batch of 8, AVX2 (EPYC dev VM, 2.6 GHz: 83 GF/s
// of FMA), MobileNetV2's 3x3 rows as the inverted residual runs them (input read in place from
// an L2-resident band, relu6), channel vectors outer + a separate activation pass -> this:
// C=32 112x112 1.73 -> 1.19 ms (33 -> 49 GF/s), C=96 112->56 2.01 -> 1.47 (22 -> 30),
// C=144 56x56 1.47 -> 1.24 (44 -> 52), C=144 56->28 0.54 -> 0.46, C=192 28x28 0.53 -> 0.48,
// C=576 14x14 0.42 -> 0.38. Walking a channel tile down several output rows (rows they share
// read from L1) measured no faster, and slower where the input streams from memory; blocks of
// 10 or 12 pixels slower than 8.
template <typename T, int VB, int KW, int SW, int UP, bool PAIR>
FB_AI void nhwc_row_slide_up(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol) {
  constexpr int64_t L = VB / sizeof(T);
  FB_DW_FOR_BLOCKS(t, a.count, UP) {
    const int64_t p0 = q0 + t * SW - a.src_off;
    const bool inside = p0 >= 0 && p0 + (UP - 1) * SW + KW <= a.src_pixels;
    for (int64_t cb = 0; cb < a.width; cb += L) {
      const int64_t c0 = std::min(cb, a.width - L);  // the last vector overlaps its neighbour
      if (PAIR) {
        if (inside) {
          nhwc_slide2<T, VB, KW, SW, UP, false>(a, q0, wcol, t, c0);
        } else {
          nhwc_slide2<T, VB, KW, SW, UP, true>(a, q0, wcol, t, c0);
        }
      } else if (inside) {
        nhwc_slide<T, VB, KW, SW, UP, false>(a, q0, wcol, t, c0);
      } else {
        nhwc_slide<T, VB, KW, SW, UP, true>(a, q0, wcol, t, c0);
      }
      if (a.pf) a.pf->step();
    }
    // The whole block: where it overlaps the one before, it stored its own sums over that
    // block's activated pixels.
    if (a.act && !act_in_registers(a.act)) {
      act_pixels<T, VB>(a.dst + t * a.dst_step, a.dst_step, UP, 0, a.width, a.act);
      if (PAIR) act_pixels<T, VB>(a.dst2 + t * a.dst_step, a.dst_step, UP, 0, a.width, a.act);
    }
  }
}

// Blocks of up to 8 pixels (8 sums + KW weights + 1 source vector fit 16 registers), as even as
// possible: a 14-wide row takes 7 + 7, not 8 + 8 overlapping.
template <typename T, int VB, int KW, int SW, bool PAIR>
FB_AI void nhwc_row_slide_pairs(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol) {
  const int64_t up = a.count <= 8 ? a.count : ceil_div(a.count, ceil_div(a.count, 8));
  switch (up) {
    case 1: return nhwc_row_slide_up<T, VB, KW, SW, 1, PAIR>(a, q0, wcol);
    case 2: return nhwc_row_slide_up<T, VB, KW, SW, 2, PAIR>(a, q0, wcol);
    case 3: return nhwc_row_slide_up<T, VB, KW, SW, 3, PAIR>(a, q0, wcol);
    case 4: return nhwc_row_slide_up<T, VB, KW, SW, 4, PAIR>(a, q0, wcol);
    case 5: return nhwc_row_slide_up<T, VB, KW, SW, 5, PAIR>(a, q0, wcol);
    case 6: return nhwc_row_slide_up<T, VB, KW, SW, 6, PAIR>(a, q0, wcol);
    case 7: return nhwc_row_slide_up<T, VB, KW, SW, 7, PAIR>(a, q0, wcol);
    default: return nhwc_row_slide_up<T, VB, KW, SW, 8, PAIR>(a, q0, wcol);
  }
}

// One output row, or two (NhwcRow::pair) sharing the loads of their common source rows where
// the ISA has 32 registers (2 x 8 sums + 2 x 3 weights + 1 source vector) and the rows are 3
// wide at column step 2, in float (the inverted residual's rows); otherwise the two rows one
// after the other. At stride 2 an 8-pixel block loads 17
// source vectors a row for 24 FMAs, each its own cache line from L2; two rows read 5 source rows
// instead of 6. Thread CPU time, 1 thread, AVX-512, EPYC (Zen 4) dev VM, MobileNetV2's stride-2
// 3x3 rows as the inverted residual runs them (batch 8, relu6, L2-resident band, medians of
// 11), one row -> two rows a call: C=96 112->56 33.8 -> 35.8 GF/s, C=144 56->28 39.0 -> 42.0,
// C=192 28->14 38.9 -> 39.8, C=576 14->7 41.6 -> 42.0. Software prefetch of the next channel
// vector's lines measured no faster (32.3 against 33.5 GF/s at C=96).
template <typename T, int VB, int KW, int SW>
FB_AI void nhwc_row_slide(const NhwcRow<T>& a, int64_t q0, const int64_t* wcol) {
  if constexpr (VB == 64 && KW == 3 && SW == 2 && std::is_same_v<T, float>) {
    if (a.pair != 0) return nhwc_row_slide_pairs<T, VB, KW, SW, true>(a, q0, wcol);
  }
  // One row, or the two one after the other, from a single call site, so the always-inline,
  // fully unrolled blocks are inlined once per instantiation. Three call sites here and the
  // paired blocks instantiated for every step and for double took the AVX-512 unit's compile
  // from 44 to 150 s (g++ 12, -O3, the dev VM); this way 62 s.
  NhwcRow<T> b = a;
  b.pair = 0;
  for (int k = 0; k <= (a.pair != 0 ? 1 : 0); ++k) {
    if (k == 1) {
      b.rows = a.rows + a.pair;
      b.dst = a.dst2;
      b.pf = nullptr;
    }
    nhwc_row_slide_pairs<T, VB, KW, SW, false>(b, q0, wcol);
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
  for (int k = 0; k <= (a.pair ? 1 : 0); ++k) {  // with NhwcRow::pair, the second row on its own
    NhwcRow<T> b = a;
    if (k) {
      b.rows = a.rows + a.pair;
      b.dst = a.dst2;
      b.pair = 0;
      b.pf = nullptr;
    }
    nhwc_row_generic<T, VB>(b);
    if (b.act) act_pixels<T, VB>(b.dst, b.dst_step, b.count, 0, b.width, b.act);
  }
}

// ---- pixel copies between the tensors and the kernels' rows -----------------------------------

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

}  // namespace
}  // namespace fastblocks::cpu::dw
