// The micro-kernels behind pointwise_cpu_gemm.h, written once for a vector width of VB bytes
// and compiled by each ISA unit (csrc/cpu/pointwise_gemm_isa_{avx512,avx2,sse2}.cpp) inside its
// `#pragma GCC target` region; everything here is always-inline so it takes that region's ISA.
//
// A tile is MR rows x NV vectors of columns held in MR * NV accumulator registers: per k, NV
// vector loads of the packed weights, MR broadcasts of a[m][k], MR * NV FMAs (the BLIS/Goto
// register block, B packed, A read in place: its rows are the pixels' channels, K contiguous
// floats). 12 accumulators on the 16-register ISAs (6 x 2, 4 x 3, 12 x 1 vectors), up to 24 on
// AVX-512's 32 (12 x 2, 8 x 3, 12 x 1). The accumulators start at the bias (an add less per
// output vector: standalone, hot, GF/s AVX-512 (M, K, N) (3000, 16, 96) 85-89 -> 90, (3000,
// 24, 144) 84-94 -> 95-97; K = 960 unchanged); activation and residual are applied to them
// before the one store. Rows past M repeat the last row's loads and are not stored;
// columns past N (the padded panel) are not stored.
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>

#include "fastblocks/depthwise_cpu_simd.h"
#include "fastblocks/pointwise_cpu_gemm.h"

namespace fastblocks::cpu::pw {

template <int VB>
using VF = dw::Vec<float, VB>;

// *p in every lane. AVX2/AVX-512: one vbroadcastss from memory, as inline assembly (the
// intrinsic cannot be inlined into the ISA regions, dw::vstream's note; GCC's own broadcast of a
// scalar took a vmovss and a vmovaps first, and dw::vsplat adds the scalar to a zero vector, an
// add GCC must keep since -0.0 + 0.0 is +0.0). SSE2: a shuffle of lane 0.
template <int VB, size_t... I>
FB_AI VF<VB> splat_impl(const float* p, std::index_sequence<I...>) {
  VF<VB> v{};
  if constexpr (VB == 16) {
    v[0] = *p;
    return __builtin_shufflevector(v, v, (I * 0)...);
  } else {
    asm("vbroadcastss %1, %0" : "=v"(v) : "m"(*p));
    return v;
  }
}
template <int VB>
FB_AI VF<VB> splat(const float* p) {
  return splat_impl<VB>(p, std::make_index_sequence<VB / 4>{});
}

// The activation of fastblocks::act_forward on a vector: the depthwise family's act_vec (the
// same operations in the same order; ACT is a constant, so its switch folds away) and SiLU.
template <int ACT, int VB>
FB_AI VF<VB> vact(VF<VB> x) {
  if constexpr (ACT == int(Act::kSiLU)) {
    return x / (1.0f + dw::vexp<VB>(-x));
  } else {
    return dw::act_vec<float, VB>(x, ACT);
  }
}

// Rows of a tile per vectors of columns: 12 accumulators (16-register ISAs) or up to 24
// (AVX-512), never more than 12 rows (12 row pointers already fill the integer registers).
template <int VB, int NV>
constexpr int tile_rows() {
  constexpr int acc = VB == 64 ? 24 : 12;
  return std::min(12, acc / NV);
}

// One tile: rows [0, rows) of a (rows <= MR) times a panel of NV vectors (cols of them valid).
template <int VB, int MR, int NV, int ACT>
FB_AI void tile(const float* a, int64_t lda, int64_t rows, const float* b, int64_t K,
                const float* bias, float* c, int64_t ldc, const float* res, int64_t ldr,
                int64_t cols) {
  using V = VF<VB>;
  constexpr int L = VB / 4;
  V bb[NV];
#pragma GCC unroll 3
  for (int j = 0; j < NV; ++j) bb[j] = bias != nullptr ? dw::vload<float, VB>(bias + j * L) : V{};
  V acc[MR][NV];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) acc[i][j] = bb[j];
  }
  const float* ar[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) ar[i] = a + std::min<int64_t>(i, rows - 1) * lda;
  for (int64_t k = 0; k < K; ++k) {
    V bv[NV];
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) bv[j] = dw::vload<float, VB>(b + (k * NV + j) * L);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const V ai = splat<VB>(ar[i] + k);
#pragma GCC unroll 3
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
    }
  }
  const bool full = cols == NV * L;
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) {
      if (i >= rows) continue;
      V v = acc[i][j];
      // An empty asm that takes v in a register: without it GCC turned the identity epilogue
      // (ACT 0, no bias: the project conv) into copies of the accumulator array through memory
      // and kept every accumulator on the stack in the K loop (AVX2, in place: 40 GF/s, 95 with
      // it).
      asm("" : "+v"(v));
      v = vact<ACT, VB>(v);
      float* out = c + i * ldc + j * L;
      const float* r = res != nullptr ? res + i * ldr + j * L : nullptr;
      if (full) {
        if (r != nullptr) v += dw::vload<float, VB>(r);
        dw::vstore<float, VB>(out, v);
      } else {  // the panel's last columns: N is not a multiple of the vector width
        const int64_t n = std::min<int64_t>(cols - j * L, L);
        float t[L];
        dw::vstore<float, VB>(t, v);
        for (int64_t l = 0; l < n; ++l) out[l] = r != nullptr ? t[l] + r[l] : t[l];
      }
    }
  }
}

template <int VB, int NV, int ACT>
FB_AI void panel_rows(const GemmCall& g, int64_t m0, int64_t m1, int64_t v0) {
  constexpr int L = VB / 4;
  constexpr int MR = tile_rows<VB, NV>();
  const PackedWeights& w = *g.w;
  const float* b = w.b + v0 * L * w.K;
  const float* bias = w.bias == nullptr ? nullptr : w.bias + v0 * L;
  const int64_t n0 = v0 * L, cols = std::min<int64_t>(w.N - n0, NV * L);
  for (int64_t m = m0; m < m1; m += MR) {
    tile<VB, MR, NV, ACT>(g.a + m * g.lda, g.lda, std::min<int64_t>(MR, m1 - m), b, w.K, bias,
                          g.c + m * g.ldc + n0, g.ldc,
                          g.res != nullptr ? g.res + m * g.ldr + n0 : nullptr, g.ldr, cols);
  }
}

// Blocks of rows whose slice of a (about 16 KB) stays in L1 while every panel of the weights
// passes over it; within a block, panel by panel, tile by tile. Panels::run<NV, ACT> is each
// panel's loop of tiles, a separate (noinline) function per ISA unit (FB_PW_ISA_KERNELS): all
// 18 inlined into one function, GCC kept the accumulators on the stack.
template <typename Panels, int ACT>
FB_AI void gemm_impl(const GemmCall& g) {
  constexpr int64_t step = 24;  // a multiple of every tile_rows
  const int64_t K = g.w->K, nvec = g.w->nvec;
  const int64_t mc = std::max<int64_t>(step, 4096 / std::max<int64_t>(K, 1) / step * step);
  for (int64_t m0 = 0; m0 < g.M; m0 += mc) {
    const int64_t m1 = std::min(g.M, m0 + mc);
    for (int64_t v0 = 0; v0 < nvec;) {
      const int64_t nv = panel_vectors(nvec, v0);
      if (nv == 2) {
        Panels::template run<2, ACT>(g, m0, m1, v0);
      } else if (nv == 3) {
        Panels::template run<3, ACT>(g, m0, m1, v0);
      } else {
        Panels::template run<1, ACT>(g, m0, m1, v0);
      }
      v0 += nv;
    }
  }
}

template <typename Panels>
FB_AI void gemm_dispatch(const GemmCall& g) {
  switch (g.act) {
    case int(Act::kReLU): return gemm_impl<Panels, int(Act::kReLU)>(g);
    case int(Act::kReLU6): return gemm_impl<Panels, int(Act::kReLU6)>(g);
    case int(Act::kHardswish): return gemm_impl<Panels, int(Act::kHardswish)>(g);
    case int(Act::kHardsigmoid): return gemm_impl<Panels, int(Act::kHardsigmoid)>(g);
    case int(Act::kSiLU): return gemm_impl<Panels, int(Act::kSiLU)>(g);
    default: return gemm_impl<Panels, int(Act::kNone)>(g);
  }
}

}  // namespace fastblocks::cpu::pw

// What each ISA unit compiles inside its `#pragma GCC target` region: the panel loops for a
// vector width of VB bytes (functions defined in the region take its ISA) and gemm(), the
// GemmFn that gemm_avx2() etc. return. Expand it in an anonymous namespace.
#define FB_PW_ISA_KERNELS(NS, VB)                                                       \
  namespace NS {                                                                        \
  struct Panels {                                                                       \
    template <int NV, int ACT>                                                          \
    __attribute__((noinline)) static void run(const GemmCall& g, int64_t m0, int64_t m1, \
                                              int64_t v0) {                             \
      panel_rows<VB, NV, ACT>(g, m0, m1, v0);                                           \
    }                                                                                   \
  };                                                                                    \
  void gemm(const GemmCall& g) { gemm_dispatch<Panels>(g); }                            \
  }
