// Storage <-> accumulation type conversions for the CPU kernels (c10's Half and BFloat16
// types only, no ATen header: kernel-only translation units include this, not cpu_utils.h).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "fastblocks/common.h"
#include "fastblocks/cpu_vec.h"

namespace fastblocks::cpu {

// Storage type S <-> accumulation type T, element by element, in branch-free code that
// vectorizes (c10's conversions stay scalar here: the fp16 ones cost ~40x a vectorized loop).
// bf16 is the top half of a float: widening is a shift, narrowing rounds to nearest even with
// NaN -> 0x7FC0, bit for bit c10's. fp16 uses the IEEE algorithms of the FP16 library that
// c10's portable path is built on (denormals by a float add, rounding by scaling through the
// exponent range), so the result is the correctly rounded one.
inline __attribute__((always_inline)) float half_bits_to_float(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16, sign = w & 0x80000000u, two_w = w + w;
  const float normal = bits_as<float>((two_w >> 4) + (0xE0u << 23)) * bits_as<float>(0x7800000u);
  const float denormal = bits_as<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  return bits_as<float>(sign | (two_w < (1u << 27) ? bits_as<uint32_t>(denormal) : bits_as<uint32_t>(normal)));
}

inline __attribute__((always_inline)) uint16_t float_to_half_bits(float f) {
  const uint32_t w = bits_as<uint32_t>(f), shl1_w = w + w, sign = w & 0x80000000u;
  float base = (bits_as<float>(w & 0x7FFFFFFFu) * bits_as<float>(0x77800000u)) * bits_as<float>(0x08800000u);
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_as<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = bits_as<uint32_t>(base);
  const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  // NaN -> 0x7E00 by a mask: GCC 12 does not vectorize the loop with a select here
  const uint32_t nan = 0u - uint32_t(shl1_w > 0xFF000000u);
  return static_cast<uint16_t>((sign >> 16) | (nonsign & ~nan) | (0x7E00u & nan));
}

template <typename T, typename S>
inline __attribute__((always_inline)) T widen(S v) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    return static_cast<T>(bits_as<float>(uint32_t(v.x) << 16));
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    return static_cast<T>(half_bits_to_float(v.x));
  } else {
    return static_cast<T>(v);
  }
}

template <typename S, typename T>
inline __attribute__((always_inline)) S narrow(T v) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    const uint32_t u = bits_as<uint32_t>(static_cast<float>(v));
    const uint16_t r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return c10::BFloat16(v != v ? uint16_t(0x7FC0) : r, c10::BFloat16::from_bits());
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    return c10::Half(float_to_half_bits(static_cast<float>(v)), c10::Half::from_bits());
  } else {
    return static_cast<S>(v);
  }
}

template <typename T, typename S>
FB_CPU_CLONES void widen_loop(const S* __restrict__ src, T* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = widen<T>(src[i]);
}

template <typename S, typename T>
FB_CPU_CLONES void narrow_loop(const T* __restrict__ src, S* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow<S>(src[i]);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// fp16 <-> float with F16C's vcvtph2ps / vcvtps2ph (round to nearest even), where the CPU has
// it: the portable bit arithmetic above is still ~3x slower than ATen's conversions. Results
// equal the portable ones bit for bit but for NaN payloads (F16C keeps the top payload bits).
__attribute__((target("avx,f16c"))) inline void widen_half_f16c(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i].x);
}

__attribute__((target("avx,f16c"))) inline void narrow_half_f16c(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = narrow<c10::Half>(src[i]);
}

inline bool has_f16c() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return yes;
}
#endif

// dst[i] = widen<T>(src[i]) for i < n.
template <typename T, typename S>
inline void widen_n(const S* src, T* dst, int64_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (std::is_same_v<S, c10::Half> && std::is_same_v<T, float>) {
    if (has_f16c()) return widen_half_f16c(src, dst, n);
  }
#endif
  widen_loop(src, dst, n);
}

// dst[i] = narrow<S>(src[i]) for i < n.
template <typename S, typename T>
inline void narrow_n(const T* src, S* dst, int64_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (std::is_same_v<S, c10::Half> && std::is_same_v<T, float>) {
    if (has_f16c()) return narrow_half_f16c(src, dst, n);
  }
#endif
  narrow_loop(src, dst, n);
}

}  // namespace fastblocks::cpu
