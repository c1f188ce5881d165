// NCHW planes in channel blocks, shared by the three passes: small planes (up to
// kBlockedMaxPixels) of one image are gathered L channels at a time (L = vector lanes) into
// pixel vectors, run through the channels_last kernels there and scattered back
// (csrc/cpu/depthwise.cpp says what that bought). Here: which geometries go that way,
// and the gather/scatter of L planes with fp16/bf16 widened or narrowed on the way.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_passes.h"

namespace fastblocks::cpu::dw {

// Planes this small go through channel blocks: one task gathers L channels (L = vector lanes) of
// one image into pixel vectors [row][col][L], runs the channels_last row kernels there and
// transposes the result back into the L output planes. The phase-split path pays per-plane
// overhead (scratch fill, a 1-d sum of a few vectors, row copies) that dominates at 7x7/14x14.
constexpr int64_t kBlockedMaxPixels = 1024;

inline bool nchw_blocked(const Geom& g, int64_t lanes) {
  return g.M == 1 && g.C >= lanes && g.H * g.W >= lanes && g.OH * g.OW >= lanes &&
         std::max(g.H * g.W, g.OH * g.OW) <= kBlockedMaxPixels;
}

// dst[idx[p]*L + l] = src[l*plane + p] (idx[p] >= 0), converted to T.
template <typename T, typename scalar_t>
void gather_planes(const Kernels<T>& isa, const scalar_t* src, int64_t plane, int64_t npix, const int64_t* idx,
                   T* dst) {
  const int64_t L = isa.lanes;
  if constexpr (std::is_same_v<T, scalar_t>) {
    isa.gather_block(src, plane, npix, idx, dst);
  } else {  // fp16/bf16: widen the L planes (contiguous in NCHW), then the same transposes
    thread_local std::vector<T> wide;
    wide.resize(L * plane);
    widen_n(src, wide.data(), L * plane);
    isa.gather_block(wide.data(), plane, npix, idx, dst);
  }
}

// dst[l*plane + p] = src[p*L + l], converted to scalar_t.
template <typename T, typename scalar_t>
void scatter_planes(const Kernels<T>& isa, const T* src, int64_t npix, scalar_t* dst, int64_t plane) {
  const int64_t L = isa.lanes;
  if constexpr (std::is_same_v<T, scalar_t>) {
    isa.scatter_block(src, npix, dst, plane);
  } else if (npix == plane) {  // fp16/bf16: the transposes in T, then one narrowing pass
    thread_local std::vector<T> wide;
    wide.resize(L * plane);
    isa.scatter_block(src, npix, wide.data(), plane);
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

}  // namespace fastblocks::cpu::dw
