// The vocabulary of the depthwise CPU kernels (csrc/cpu/depthwise*.cpp): GCC vector types of
// VB bytes and the lane operations the kernels are written in, integer helpers for padding
// arithmetic, and the activation epilogue over a run of values.
//
// Everything here is an always-inline template: each ISA translation unit (depthwise_isa_*.cpp)
// instantiates the kernels inside its own `#pragma GCC target` region, and GCC inlines these
// helpers into them with that region's instruction set. A helper that is not inlined would be
// compiled once, for baseline x86-64, and shared by all three ISAs. For the same reason the
// ISA-specific instructions below are inline assembly, not intrinsics: GCC refuses to inline an
// intrinsic into code whose target it was not defined under.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "fastblocks/common.h"
#include "fastblocks/cpu_convert.h"
#include "fastblocks/cpu_vec.h"

// The kernels pass GCC vector types between always-inline helpers only; the ABI note about
// 64-byte vectors without AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FB_AI inline __attribute__((always_inline))
#define FB_AI_LAMBDA __attribute__((always_inline))

// dw: the depthwise CPU kernels with scratch memory and their drivers (the scratch-free ones
// are cpu::direct, csrc/cpu/depthwise_direct.cpp).
namespace fastblocks::cpu::dw {

// ---- integer helpers (divisors are positive) ------------------------------------------------

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }
inline int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---- vectors --------------------------------------------------------------------------------

template <typename T, int VB>
struct VecT {
  typedef T type __attribute__((vector_size(VB)));
};
template <typename T, int VB>
using Vec = typename VecT<T, VB>::type;

template <typename T, int VB>
FB_AI Vec<T, VB> vload(const T* p) {
  Vec<T, VB> v;
  std::memcpy(&v, p, VB);
  return v;
}
template <typename T, int VB>
FB_AI void vstore(T* p, const Vec<T, VB>& v) {
  std::memcpy(p, &v, VB);
}
// Non-temporal store to a VB-aligned address. Inline assembly rather than the intrinsics: these
// templates are defined once and compiled into all three ISA regions, and GCC will not inline
// an ISA-specific intrinsic into a function defined outside its #pragma target.
template <typename T, int VB>
FB_AI void vstream(T* p, const Vec<T, VB>& v) {
  auto* m = reinterpret_cast<Vec<T, VB>*>(p);
  if constexpr (VB == 16) {
    asm volatile("movntdq %1, %0" : "=m"(*m) : "x"(v));
  } else {
    asm volatile("vmovntdq %1, %0" : "=m"(*m) : "v"(v));
  }
}
template <typename T, int VB>
FB_AI Vec<T, VB> vsplat(T s) {
  return Vec<T, VB>{} + s;
}

// ---- lane shuffles ----------------------------------------------------------------------------

// Lanes a0 a2 a4 ... b0 b2 b4 ...: the even lanes of the pair (a, b).
template <typename T, int VB, size_t... I>
FB_AI Vec<T, VB> even_lanes(const Vec<T, VB>& a, const Vec<T, VB>& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}

// Lanes a0 b0 a1 b1 ... of the low (zip_lo) or high (zip_hi) halves of a and b.
template <typename T, int VB, size_t... I>
FB_AI Vec<T, VB> zip_lo(const Vec<T, VB>& a, const Vec<T, VB>& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) ? sizeof...(I) + I / 2 : I / 2)...);
}
template <typename T, int VB, size_t... I>
FB_AI Vec<T, VB> zip_hi(const Vec<T, VB>& a, const Vec<T, VB>& b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) ? sizeof...(I) + sizeof...(I) / 2 + I / 2 : sizeof...(I) / 2 + I / 2)...);
}

// In-place transpose of L vectors of L lanes: log2(L) rounds of zipping row i with row i + L/2.
template <typename T, int VB>
FB_AI void transpose_impl(Vec<T, VB>* r) {
  using V = Vec<T, VB>;
  constexpr int L = VB / sizeof(T);
#pragma GCC unroll 4
  for (int s = 1; s < L; s *= 2) {
    V t[L];
#pragma GCC unroll 16
    for (int i = 0; i < L / 2; ++i) {
      t[2 * i] = zip_lo<T, VB>(r[i], r[i + L / 2], std::make_index_sequence<L>{});
      t[2 * i + 1] = zip_hi<T, VB>(r[i], r[i + L / 2], std::make_index_sequence<L>{});
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = t[i];
  }
}

// Integer lanes of T's width (masks of T vectors).
template <typename T, int VB>
using IVec = Vec<std::conditional_t<sizeof(T) == 4, int32_t, int64_t>, VB>;

// v with its lanes below `skip` set to zero: a row of channels whose last vector overlaps the one
// before it (L does not divide C) adds only the lanes the previous vector did not.
template <typename T, int VB>
FB_AI Vec<T, VB> zero_lanes_below(Vec<T, VB> v, int64_t skip) {
  using IV = IVec<T, VB>;
  using I = std::remove_reference_t<decltype(IV{}[0])>;
  constexpr int64_t L = VB / sizeof(T);
  IV lane;
  for (int64_t l = 0; l < L; ++l) lane[l] = I(l);
  return (Vec<T, VB>)((IV)v & (IV)(lane >= I(skip)));
}

// ---- activation epilogue ----------------------------------------------------------------------

// exp for float vectors (fastblocks/cpu_vec.h); scalar expf would make a fused SiLU cost more
// than the convolution.
template <int VB>
FB_AI Vec<float, VB> vexp(Vec<float, VB> x) {
  return exp_cephes<Vec<float, VB>, Vec<int32_t, VB>>(x);
}

// Whether act_in_registers applies `act` (the piecewise-linear ones; SiLU's exp would multiply
// the code of every register block that inlines it, so it stays a pass over the block).
constexpr bool act_in_registers(int act) { return act >= int(Act::kReLU) && act <= int(Act::kHardsigmoid); }

// act_forward (common.h) of a vector, the same operations in the same order, so bit for bit
// equal to it, NaN included (a comparison with NaN is false). For act_in_registers(act).
template <typename T, int VB>
FB_AI Vec<T, VB> act_vec(Vec<T, VB> x, int act) {
  using V = Vec<T, VB>;
  const V zero{}, three = vsplat<T, VB>(T(3)), six = vsplat<T, VB>(T(6));
  const auto clamp06 = [&](V v) FB_AI_LAMBDA { return v < zero ? zero : (v > six ? six : v); };
  switch (act) {
    case int(Act::kReLU):
      return x < zero ? zero : x;
    case int(Act::kReLU6):
      return clamp06(x);
    case int(Act::kHardswish):
      return x * clamp06(x + three) / six;
    case int(Act::kHardsigmoid):
      return clamp06(x + three) / six;
    default:
      return x;
  }
}

// In-place activation; the switch sits outside the loop so each case vectorizes.
template <typename T, int VB>
FB_AI void apply_act_impl(T* p, int64_t n, int act) {
  if constexpr (std::is_same_v<T, float>) {
    if (act == int(Act::kSiLU)) {
      using V = Vec<float, VB>;
      constexpr int64_t L = VB / sizeof(float);
      int64_t i = 0;
      for (; i + L <= n; i += L) {
        const V x = vload<float, VB>(p + i);
        vstore<float, VB>(p + i, x / (1.0f + vexp<VB>(-x)));
      }
      for (; i < n; ++i) p[i] = act_forward<float>(p[i], act);
      return;
    }
  }
  switch (act) {
#define FB_DW_ACT_CASE(A) \
  case A:                 \
    for (int64_t i = 0; i < n; ++i) p[i] = act_forward<T>(p[i], A); \
    break;
    FB_DW_ACT_CASE(1)
    FB_DW_ACT_CASE(2)
    FB_DW_ACT_CASE(3)
    FB_DW_ACT_CASE(4)
    FB_DW_ACT_CASE(5)
#undef FB_DW_ACT_CASE
    default:
      break;
  }
}

}  // namespace fastblocks::cpu::dw
