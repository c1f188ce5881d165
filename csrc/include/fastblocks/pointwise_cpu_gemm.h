// The 1x1 (pointwise) convolutions of the fused inverted residual (csrc/cpu/inverted_residual.cpp)
// as one register-blocked GEMM with the epilogue in registers:
//   c[m][n] = act(sum_k a[m][k] * w[n][k] + bias[n]) + res[m][n]
// a: M rows of K channels (channels_last pixels, row stride lda), w: the conv weight (N, K),
// bias and res optional. The expand conv takes bias + activation, the project conv bias + the
// residual, so neither needs a second pass over its output (MKL's at::mm_out + a separate
// bias/activation pass read and wrote the expanded band twice).
//
// The weights are packed once per call (pack_weights) into panels of 1-3 vectors of columns,
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
#include <cstdint>
#include <vector>

namespace fastblocks::cpu::pw {

// Vectors of columns in the panel that starts at vector v0 of nvec: panels of 2 vectors, the
// last one 3 when nvec is odd (N = 24 on AVX2 is one 3-vector panel, not 2 + 1) and 1 only when
// nvec is 1. The micro-kernel's rows per tile follow from it (kRows).
inline int64_t panel_vectors(int64_t nvec, int64_t v0) {
  const int64_t left = nvec - v0;
  return left == 1 ? 1 : left == 3 ? 3 : 2;
}

// Weights packed for one vector width: panels of panel_vectors() vectors, each K rows of
// nv * lanes floats (B[k][n] = w[n][k], zeros past N), one after the other; bias zero-padded to
// nvec * lanes (or empty).
struct PackedWeights {
  std::vector<float> b, bias;
  int64_t K = 0, N = 0, nvec = 0, lanes = 0;
};

// w: (N, K) row-major; bias: N values or null.
inline PackedWeights pack_weights(const float* w, const float* bias, int64_t N, int64_t K,
                                  int64_t lanes) {
  PackedWeights p;
  p.K = K;
  p.N = N;
  p.lanes = lanes;
  p.nvec = (N + lanes - 1) / lanes;
  p.b.assign(p.nvec * lanes * K, 0.0f);
  for (int64_t v0 = 0; v0 < p.nvec;) {
    const int64_t nv = panel_vectors(p.nvec, v0), width = nv * lanes;
    float* panel = p.b.data() + v0 * lanes * K;
    for (int64_t j = 0; j < width && v0 * lanes + j < N; ++j) {
      const float* wr = w + (v0 * lanes + j) * K;
      for (int64_t k = 0; k < K; ++k) panel[k * width + j] = wr[k];
    }
    v0 += nv;
  }
  if (bias != nullptr) {
    p.bias.assign(p.nvec * lanes, 0.0f);
    for (int64_t n = 0; n < N; ++n) p.bias[n] = bias[n];
  }
  return p;
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
