// The vector kernels of the NCHW paths, included only by the ISA translation units
// (depthwise_cpu_isa_table.h). Phase-split planes (csrc/cpu/depthwise.cpp says why): the
// 1-d tap sum (flat_conv), the weight gradient's per-tap dot products (flat_dot), the
// phase-split copy of a plane (fill_phases) and the re-interleaving of two column residues
// (interleave2). Channel blocks: the register transposes between L planes and pixel vectors of
// L channels (gather_block, scatter_block) that let small NCHW planes run the channels_last row
// kernels.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {
// Internal to each ISA translation unit, as are the wrappers that instantiate these: what GCC
// does not inline (std::sort's loop, NextRows) stays a local function of that unit.
namespace {

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

// Copies plane x into the phase-split scratch P along the row copies `ops` (RowCopy); stride-2
// rows deinterleave in registers.
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

// ---- NCHW in channel blocks: one image's L channels (L = vector lanes) at a time -------------

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

}  // namespace
}  // namespace fastblocks::cpu::dw
