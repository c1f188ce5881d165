// Portable SIMD for the CPU kernels without -march=native: hot loops are compiled three times
// (AVX-512, AVX2, baseline x86-64) and the loader picks one for the machine (GCC/Clang
// function multi-versioning). Loops stay plain C++ the compiler vectorizes, so the code needs
// no intrinsics, and everything here is header-only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastblocks/common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define FB_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FB_CPU_CLONES
#endif

namespace fastblocks::cpu {

// Bits of `from` read as a To of the same size (float <-> int32, or GCC vector types of equal
// width); compiles to nothing.
template <typename To, typename From>
inline __attribute__((always_inline)) To bits_as(From from) {
  static_assert(sizeof(To) == sizeof(From), "bits_as needs types of one size");
  return __builtin_bit_cast(To, from);
}

// exp(x) with no libm call, so loops calling it vectorize: Cody-Waite reduction by ln 2 and
// Cephes' degree-6 polynomial (about 1 ulp, like the Sleef exp behind ATen's vectorized SiLU).
// The polynomial sees inputs clamped to the range whose result is a normal float; above
// ln(FLT_MAX) the result is inf, as expf's, so silu(-inf) is NaN and silu(-100) is -0.0 as in
// eager; below the range it stays at the smallest normal (expf would go subnormal, then 0:
// 1 + exp(-x) and x / (1 + exp(-x)) come out the same). NaN propagates (the clamps are
// selects a NaN fails). F is float (I int32_t) or a GCC vector of floats (I: of int32_t), so
// the scalar activations and the vectorized depthwise epilogue share one implementation.
template <typename F, typename I>
inline __attribute__((always_inline)) F exp_cephes(F x) {
  const F zero{};
  const auto overflow = x > zero + 88.72283935546875f;  // ln(FLT_MAX), rounded to float
  x = x > zero + 88.37626f ? zero + 88.37626f : x;
  x = x < zero - 87.33654f ? zero - 87.33654f : x;
  // round to nearest by adding and removing 1.5 * 2^23 (std::floor is a libm call unless
  // -fno-trapping-math, which would stop the loop vectorizing)
  const F magic = zero + 12582912.0f;
  const F t = x * 1.44269504088896341f + magic;
  const F n = t - magic;
  const F r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  F p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n: n sits in t's low mantissa bits, so bits(t) - bits(magic) is n as an integer
  const I e = (bits_as<I>(t) - bits_as<I>(magic) + 127) << 23;
  const F y = p * bits_as<F>(e);
  return overflow ? zero + __builtin_inff() : y;
}

inline float vec_expf(float x) { return exp_cephes<float, int32_t>(x); }
inline double vec_expf(double x) { return std::exp(x); }

// act_forward / act_backward with the activation fixed at compile time (the switch folds
// away) and SiLU's exp replaced by vec_expf.
template <int ACT, typename acc_t>
inline acc_t act_forward_ct(acc_t x) {
  if constexpr (ACT == int(Act::kSiLU)) {
    return x / (acc_t(1) + vec_expf(-x));
  } else {
    return act_forward<acc_t>(x, ACT);
  }
}

template <int ACT, typename acc_t>
inline acc_t act_backward_ct(acc_t g, acc_t x) {
  if constexpr (ACT == int(Act::kSiLU)) {
    const acc_t s = acc_t(1) / (acc_t(1) + vec_expf(-x));
    return g * s * (acc_t(1) + x * (acc_t(1) - s));
  } else {
    return act_backward<acc_t>(g, x, ACT);
  }
}

// Calls fn(std::integral_constant<int, ACT>{}) for a runtime activation code.
template <typename Fn>
inline void dispatch_act(int act, Fn&& fn) {
  switch (act) {
    case 0: return fn(std::integral_constant<int, 0>{});
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    default: return fn(std::integral_constant<int, 5>{});
  }
}

}  // namespace fastblocks::cpu
