// The vector kernels of the channels_last weight gradient, included only by the ISA translation
// units (depthwise_cpu_isa_table.h): nhwc_wgrad sums, for rows [r0, r1) of the flattened
// (image, output row), every tap's products of gradient and input over all channels
// (NhwcWgrad in depthwise_cpu_kernels.h). Dilation-1 kernel rows 3, 5 or 7 wide at stride 1 or
// 2 keep a block of gradient vectors in registers and load each source vector once for all its
// taps (3x3: the three kernel rows together); other geometries take plain per-tap segments.
// The NCHW channel-block weight gradient runs the same kernel on transposed blocks.
#pragma once
#include <algorithm>
#include <cstdint>

#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {
// Internal to each ISA translation unit, as are the wrappers that instantiate these: what GCC
// does not inline (std::sort's loop, NextRows) stays a local function of that unit.
namespace {

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
    if (skip > 0) sum = zero_lanes_below<T, VB>(sum, skip);
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
      if (skip > 0) sum = zero_lanes_below<T, VB>(sum, skip);
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
      if (skip > 0) sum = zero_lanes_below<T, VB>(sum, skip);
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

}  // namespace
}  // namespace fastblocks::cpu::dw
