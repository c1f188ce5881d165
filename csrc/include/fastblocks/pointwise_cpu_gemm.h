// The 1x1 (pointwise) convolutions of the fused inverted residual (csrc/cpu/inverted_residual.cpp)
// as one register-blocked GEMM with the epilogue in registers:
//   c[m][n] = act(sum_k a[m][k] * w[n][k] + bias[n]) + res[m][n]
// a: M rows of K channels (channels_last pixels, row stride lda), w: the conv weight (N, K),
// bias and res optional. The expand conv takes bias + activation, the project conv bias + the
// residual, so neither needs a second pass over its output (MKL's at::mm_out + a separate
// bias/activation pass read and wrote the expanded band twice).
//
// The weights are packed (pack_weights; once per folded weight by the Python layer, else once
// per call) into panels of 1-3 vectors of columns,
// K rows each, zero-padded to whole vectors, so the micro-kernel loads B with aligned-width
// vector loads and N needs no tail code in the K loop. The micro-kernels are compiled once per
// instruction set (csrc/cpu/pointwise_gemm_isa_{avx512,avx2,sse2}.cpp, the depthwise family's
// pattern): gemm_kernel(lanes) hands out the one for the vector width the depthwise family's
// ISA detection chose (dw::kernels<float>().lanes, so FASTBLOCKS_CPU_ISA forces it too).
//
// Measured on the dev VM (AMD EPYC, Zen 4, 1 thread, thread CPU time), standalone, hot cache,
// ReLU6 + residual fused, GF/s by (M, K, N), against MKL's at::mm_out alone (no epilogue), its
// practical peak about 100: (3000, 96, 24) 106 / 70, (3000, 144, 24) 105 / 68, (1500, 144, 32)
// 111 / 87, (784, 384, 64) 113 / 96, (392, 960, 160) 114 / 100, (392, 960, 320) 113 / 101,
// (6048, 32, 16) 90 / 74; below MKL only at small K and wide N: (3000, 16, 96) 75 / 80,
// (3000, 24, 144) 85 / 87, (1500, 32, 192) 91 / 92, where the fused epilogue (no second pass
// over the M x N output) still wins in place (inverted_residual.cpp, kMaxGemmK).
#pragma once
#include <algorithm>
#include <cstdint>

namespace fastblocks::cpu::pw {

// Vectors of columns in the panel that starts at vector v0 of nvec: panels of 2 vectors, the
// last one 3 when nvec is odd (N = 24 on AVX2 is one 3-vector panel, not 2 + 1) and 1 only when
// nvec is 1. The micro-kernel's rows per tile follow from it (kRows).
inline int64_t panel_vectors(int64_t nvec, int64_t v0) {
  const int64_t left = nvec - v0;
  return left == 1 ? 1 : left == 3 ? 3 : 2;
}

// Weights packed for one vector width, in caller-owned memory (packed_floats(N, K) floats):
// panels of panel_vectors() vectors, each K rows of nv * lanes floats (B[k][n] = w[n][k], zeros
// past N), one after the other; then the bias zero-padded to nvec * lanes. The size does not
// depend on `lanes` (it is padded for 16), so a caller can hold a packed copy whose size it
// knows without asking which ISA the CPU has (ops/inverted_residual.py caches one per folded
// weight, and inductor's freezing folds it into a constant).
struct PackedWeights {
  const float* b = nullptr;     // the panels
  const float* bias = nullptr;  // nvec * lanes values, or null: no bias
  int64_t K = 0, N = 0, nvec = 0, lanes = 0;
};

inline int64_t packed_floats(int64_t N, int64_t K) {
  const int64_t n16 = (N + 15) / 16 * 16;
  return n16 * K + n16;
}

// The kernels' view of memory packed by pack_weights for `lanes` (with_bias: whether it was
// packed with a bias).
inline PackedWeights view_packed(const float* packed, bool with_bias, int64_t N, int64_t K,
                                 int64_t lanes) {
  PackedWeights p;
  p.b = packed;
  p.bias = with_bias ? packed + (N + 15) / 16 * 16 * K : nullptr;
  p.K = K;
  p.N = N;
  p.lanes = lanes;
  p.nvec = (N + lanes - 1) / lanes;
  return p;
}

// Packs w: (N, K) row-major and bias (N values or null) into dst (packed_floats(N, K) floats);
// returns the view of dst the kernels read (bias null when `bias` is).
inline PackedWeights pack_weights(const float* w, const float* bias, int64_t N, int64_t K,
                                  int64_t lanes, float* dst) {
  const int64_t nvec = (N + lanes - 1) / lanes, n16 = (N + 15) / 16 * 16;
  std::fill(dst, dst + packed_floats(N, K), 0.0f);
  for (int64_t v0 = 0; v0 < nvec;) {
    const int64_t nv = panel_vectors(nvec, v0), width = nv * lanes;
    float* panel = dst + v0 * lanes * K;
    for (int64_t j = 0; j < width && v0 * lanes + j < N; ++j) {
      const float* wr = w + (v0 * lanes + j) * K;
      for (int64_t k = 0; k < K; ++k) panel[k * width + j] = wr[k];
    }
    v0 += nv;
  }
  if (bias != nullptr) std::copy(bias, bias + N, dst + n16 * K);
  return view_packed(dst, bias != nullptr, N, K, lanes);
}

// One GEMM call: rows [0, M) of a into rows of c.
struct GemmCall {
  const float* a;
  int64_t lda;
  const PackedWeights* w;
  float* c;
  int64_t ldc;
  const float* res;  // M x N, row stride ldr, added after the activation; null: none
  int64_t ldr;
  int64_t M;
  int act;  // activation code (fastblocks::Act) applied to acc + bias
};

using GemmFn = void (*)(const GemmCall&);

GemmFn gemm_avx512();
GemmFn gemm_avx2();
GemmFn gemm_sse2();

// Vectors to use for a GEMM of N columns where the CPU's widest are `isa_lanes` floats: on an
// AVX-512 CPU, its AVX2 kernel unless N is a multiple of 16 of at least 32. A 16-lane panel
// wastes a third of its lanes at N = 24 and is one vector wide at N = 16 (12 broadcasts a 12
// FMAs); on the dev VM's AMD EPYC (Zen 4: AVX-512 runs as two 256-bit halves), standalone, 1
// thread, with ReLU6 + residual fused, GF/s AVX-512 / AVX2 by (M, K, N): (6048, 32, 16) 76 / 90,
// (3000, 96, 24) 78 / 106, (3000, 144, 24) 80 / 105, (3000, 16, 96) 75 / 63, (3000, 24, 144)
// 85 / 76, (1500, 32, 192) 91 / 84, (392, 960, 160) 114 / 112.
inline int64_t gemm_lanes(int64_t isa_lanes, int64_t N) {
  return isa_lanes == 16 && !(N % 16 == 0 && N >= 32) ? 8 : isa_lanes;
}

// The kernel for vectors of `lanes` floats (16: AVX-512, 8: AVX2 + FMA, 4: SSE2).
inline GemmFn gemm_kernel(int64_t lanes) {
  return lanes == 16 ? gemm_avx512() : lanes == 8 ? gemm_avx2() : gemm_sse2();
}

}  // namespace fastblocks::cpu::pw
