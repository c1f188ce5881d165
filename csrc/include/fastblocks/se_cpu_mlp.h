// The tiny MLP of squeeze-and-excitation on CPU, by hand, for the rows (images) of one group:
// s = gate(w2 @ act(w1 @ p + b1) + b2), each FC a set of dot products of a weight row with
// every row of the group. ATen's GEMMs (squeeze_excite_mlp.h) cost more than this here: eight
// ATen calls per group (~40 us at batch 1, where eager's whole pool + mul takes 18 us on
// 1x1152x7x7), and MKL/oneDNN pack the weight matrix on every call, so a GEMM of a few rows
// paid two passes over the weights (5x2048 @ 2048x128: 95 us, 32 rows: 220 us; 2-core AMD EPYC
// VM, torch 2.13, 1 thread). Here each weight row is read once per group, from cache, and
// multiplied into up to kRowBlock rows of the group at a time, in GCC vectors of 64 bytes
// (one AVX-512 register; two AVX2 or four SSE registers on the other clones).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastblocks/common.h"
#include "fastblocks/cpu_vec.h"

// 64-byte GCC vectors pass between always-inline helpers only; the ABI note about them
// without AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastblocks::cpu::se_mlp {

template <typename T>
struct Vec64T {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using Vec64 = typename Vec64T<T>::type;

template <typename T>
inline __attribute__((always_inline)) Vec64<T> load64(const T* p) {
  Vec64<T> v;
  std::memcpy(&v, p, 64);
  return v;
}

// Sum of the lanes by halving in registers (through memory and a scalar loop, the reductions
// cost more than the 8 multiply-adds of a 128-long dot product: fc2 of SE-ResNet's 2048x7x7 SE).
template <typename T>
inline __attribute__((always_inline)) T hsum(Vec64<T> v) {
  if constexpr (sizeof(T) == 4) {
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    v += __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
  } else {
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1);
    v += __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0);
  }
  return v[0];
}

// Rows of the group multiplied into each weight row at once: GB vector accumulators plus the
// weight vector stay in registers (4 of AVX-512's 32 even for double).
constexpr int kRowBlock = 4;

// res[j] = dot(w[0:K], a[j*K : j*K+K]) for the GB rows j of a.
template <typename T, int GB>
inline __attribute__((always_inline)) void dot_block(const T* __restrict__ w, const T* __restrict__ a,
                                                     int64_t K, T* res) {
  constexpr int L = 64 / sizeof(T);
  Vec64<T> acc[GB];
  for (int j = 0; j < GB; ++j) acc[j] = Vec64<T>{};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    const Vec64<T> wv = load64(w + k);
    for (int j = 0; j < GB; ++j) acc[j] += wv * load64(a + j * K + k);
  }
  // the tail (all of a dot product shorter than a vector: fc2 of EfficientNet's SE, C_r 4..48)
  // as GB independent chains
  T tail[GB] = {};
  for (int64_t t = k; t < K; ++t) {
    for (int j = 0; j < GB; ++j) tail[j] += w[t] * a[j * K + t];
  }
  for (int j = 0; j < GB; ++j) res[j] = hsum<T>(acc[j]) + tail[j];
}

// out[g * M + m] = bias[m] + dot(W[m, :], A[g, :]) for m in [m0, m1), g < G; W (M, K) and A (G,
// K) row-major; bias may be null. Weight row m is loaded from memory once and reused from L1 for
// every block of rows.
template <typename T>
FB_CPU_CLONES void dot_rows(const T* __restrict__ W, const T* __restrict__ bias, const T* __restrict__ A,
                            T* __restrict__ out, int64_t G, int64_t M, int64_t K, int64_t m0, int64_t m1) {
  T res[kRowBlock];
  for (int64_t m = m0; m < m1; ++m) {
    const T* w = W + m * K;
    const T b = bias ? bias[m] : T(0);
    int64_t g = 0;
    for (; g + kRowBlock <= G; g += kRowBlock) {
      dot_block<T, kRowBlock>(w, A + g * K, K, res);
      for (int j = 0; j < kRowBlock; ++j) out[(g + j) * M + m] = b + res[j];
    }
    switch (G - g) {
      case 3: dot_block<T, 3>(w, A + g * K, K, res); break;
      case 2: dot_block<T, 2>(w, A + g * K, K, res); break;
      case 1: dot_block<T, 1>(w, A + g * K, K, res); break;
      default: break;
    }
    for (int64_t j = 0; g + j < G; ++j) out[(g + j) * M + m] = b + res[j];
  }
}

// dot_rows over all M rows of W, split over threads.
template <typename T>
void fc_rows(const T* W, const T* bias, const T* A, T* out, int64_t G, int64_t M, int64_t K) {
  constexpr int64_t kGrainMacs = 32768;
  at::parallel_for(0, M, std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(K * G, 1)),
                   [&](int64_t m0, int64_t m1) { dot_rows<T>(W, bias, A, out, G, M, K, m0, m1); });
}

// The forward MLP on the G rows of means p (G, C): h (G, R) = act(w1 @ p + b1) and s (G, C) =
// gate(w2 @ h + b2). w1 (R, C), w2 (C, R), b1 (R) and b2 (C) contiguous in T (the accumulation
// type); b1, b2 may be null. gate: 0 sigmoid, else hard-sigmoid (squeeze_excite::Gate).
template <typename T>
void forward(const T* p, const T* w1, const T* b1, const T* w2, const T* b2, T* h, T* s, int64_t G,
             int64_t C, int64_t R, int act, int gate) {
  fc_rows<T>(w1, b1, p, h, G, R, C);
  for (int64_t i = 0; i < G * R; ++i) h[i] = act_forward<T>(h[i], act);
  fc_rows<T>(w2, b2, h, s, G, C, R);
  if (gate == 0) {
    for (int64_t i = 0; i < G * C; ++i) s[i] = T(1) / (T(1) + exp_(-s[i]));
  } else {
    for (int64_t i = 0; i < G * C; ++i) s[i] = act_forward<T>(s[i], int(Act::kHardsigmoid));
  }
}

// The MLP backward for a few rows (batch 1 to kHandBackwardRows; more rows go to ATen's GEMMs,
// squeeze_excite_mlp.h, whose weight reuse wins there, and whose ~15 calls cost about as much as
// all of eager's backward at batch 1). From the means p (G, C) and gs (G, C) = sum over H, W of
// grad * x: gp (G, C), the gradient of the means, and gw1 (R, C), gb1 (R), gw2 (C, R), gb2 (C).
// The MLP forward is recomputed (z1, z2 are not kept). Sums over C (gh) run in blocks of
// kSumBlock terms in T and across blocks in double, like the passes' sums. Derivatives as
// ATen's: sigmoid_backward g * (1 - s) * s, the activations by act_backward_aten.
constexpr int64_t kHandBackwardRows = 4;

// act_backward, but hard-sigmoid's slope is ATen's float constant 1.0f / 6.0f in every dtype
// (torch 2.13's hardsigmoid_backward of a float64 1 at 0 is 0.1666666716337204): with the exact
// 1/6, MobileNetV3-Large's float64 training gradients differed from eager's by 1e-5 relative.
template <typename T>
inline T act_backward_aten(T g, T z, int act) {
  if (act == int(Act::kHardsigmoid)) return (z > T(-3) && z < T(3)) ? g * T(1.0f / 6.0f) : T(0);
  return act_backward<T>(g, z, act);
}

// An FC layer's parameter gradients from its input a (G, K) and output gradient d (G, M):
// gw (M, K) = d^T @ a and gb (M) = the sum of d over the G rows.
template <typename T>
void fc_param_grads(const T* d, const T* a, int64_t G, int64_t M, int64_t K, T* gw, T* gb) {
  for (int64_t m = 0; m < M; ++m) {
    T* w = gw + m * K;
    T sum = 0;
    std::fill(w, w + K, T(0));
    for (int64_t g = 0; g < G; ++g) {
      const T dv = d[g * M + m];
      sum += dv;
      for (int64_t k = 0; k < K; ++k) w[k] += dv * a[g * K + k];
    }
    gb[m] = sum;
  }
}

// s, if not null, receives the gate's output (G, C), as forward() computes it: the grad_x pass
// needs it, and the forward's is not kept.
template <typename T>
void backward(const T* p, const T* gs, const T* w1, const T* b1, const T* w2, const T* b2, int64_t G,
              int64_t C, int64_t R, int act, int gate, T* gp, T* gw1, T* gb1, T* gw2, T* gb2,
              T* s = nullptr) {
  constexpr int64_t kSumBlock = 64;
  std::vector<T> z1(G * R), h(G * R), z2(G * C), gz2(G * C), gz1(G * R), part(R);
  std::vector<double> total(R);
  fc_rows<T>(w1, b1, p, z1.data(), G, R, C);
  for (int64_t i = 0; i < G * R; ++i) h[i] = act_forward<T>(z1[i], act);
  fc_rows<T>(w2, b2, h.data(), z2.data(), G, C, R);
  for (int64_t i = 0; i < G * C; ++i) {
    if (gate == 0) {
      const T sg = T(1) / (T(1) + exp_(-z2[i]));
      gz2[i] = gs[i] * (T(1) - sg) * sg;
      if (s) s[i] = sg;
    } else {
      gz2[i] = act_backward_aten<T>(gs[i], z2[i], int(Act::kHardsigmoid));
      if (s) s[i] = act_forward<T>(z2[i], int(Act::kHardsigmoid));
    }
  }
  fc_param_grads<T>(gz2.data(), h.data(), G, C, R, gw2, gb2);
  for (int64_t g = 0; g < G; ++g) {  // gh = gz2 @ w2, then gz1 = act'(z1) * gh
    std::fill(total.begin(), total.end(), 0.0);
    for (int64_t c0 = 0; c0 < C; c0 += kSumBlock) {
      std::fill(part.begin(), part.end(), T(0));
      for (int64_t c = c0; c < std::min(C, c0 + kSumBlock); ++c) {
        const T d = gz2[g * C + c];
        for (int64_t r = 0; r < R; ++r) part[r] += d * w2[c * R + r];
      }
      for (int64_t r = 0; r < R; ++r) total[r] += part[r];
    }
    for (int64_t r = 0; r < R; ++r) gz1[g * R + r] = act_backward_aten<T>(T(total[r]), z1[g * R + r], act);
  }
  fc_param_grads<T>(gz1.data(), p, G, R, C, gw1, gb1);
  for (int64_t g = 0; g < G; ++g) {  // gp = gz1 @ w1
    for (int64_t c = 0; c < C; ++c) gp[g * C + c] = 0;
    for (int64_t r = 0; r < R; ++r) {
      const T d = gz1[g * R + r];
      for (int64_t c = 0; c < C; ++c) gp[g * C + c] += d * w1[r * C + c];
    }
  }
}

}  // namespace fastblocks::cpu::se_mlp
