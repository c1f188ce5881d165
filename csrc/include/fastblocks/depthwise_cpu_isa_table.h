// What each ISA translation unit (csrc/cpu/depthwise_isa_{avx512,avx2,sse2}.cpp) compiles: every
// vector kernel of the depthwise CPU family instantiated for a vector width of VB bytes, and
// the Kernels<T> table of pointers to them. FB_DW_ISA_KERNELS(NS, VB) goes inside the unit's
// `#pragma GCC target` region: the wrappers it defines are the only functions compiled with
// that ISA, and every kernel template below them is inlined into them (always_inline). One
// unit per ISA so the three compile in parallel; each unit's table<T>() is reached through
// kernels_avx512<T>() etc. (depthwise_cpu_kernels.h), defined outside the region. Expand it in
// an anonymous namespace: nothing but kernels_*<T>() leaves the unit.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_nchw_kernels.h"
#include "fastblocks/depthwise_cpu_row_kernels.h"
#include "fastblocks/depthwise_cpu_simd.h"
#include "fastblocks/depthwise_cpu_wgrad_kernels.h"

#define FB_DW_ISA_KERNELS(NS, VB)                                                             \
  namespace NS {                                                                              \
  template <typename T>                                                                       \
  void flat_conv(const T* P, const int64_t* base, const T* w, int nt, T init, T* out,         \
                 int64_t nflat) {                                                             \
    flat_conv_impl<T, VB>(P, base, w, nt, init, out, nflat);                                  \
  }                                                                                           \
  template <typename T>                                                                       \
  void flat_dot(const T* G, const T* P, const int64_t* base, int nt, int64_t nflat,           \
                double* acc) {                                                                \
    flat_dot_impl<T, VB>(G, P, base, nt, nflat, acc);                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  void fill_phases(const T* x, const RowCopy* ops, int64_t nops, int64_t sw, T* P) {          \
    fill_phases_impl<T, VB>(x, ops, nops, sw, P);                                             \
  }                                                                                           \
  template <typename T>                                                                       \
  void interleave2(const T* e, const T* o, T* row, int64_t n) {                               \
    interleave2_impl<T, VB>(e, o, row, n);                                                    \
  }                                                                                           \
  template <typename T>                                                                       \
  void nhwc_row(const NhwcRow<T>& a) {                                                        \
    nhwc_row_impl<T, VB>(a);                                                                  \
  }                                                                                           \
  template <typename T>                                                                       \
  void copy_pixels(const T* s, int64_t ss, T* d, int64_t ds, int64_t n, int64_t w) {          \
    copy_pixels_impl<T, VB, false>(s, ss, d, ds, n, w);                                       \
  }                                                                                           \
  template <typename T>                                                                       \
  void stream_pixels(const T* s, int64_t ss, T* d, int64_t ds, int64_t n, int64_t w) {        \
    copy_pixels_impl<T, VB, true>(s, ss, d, ds, n, w);                                        \
  }                                                                                           \
  template <typename S, typename T>                                                           \
  void widen_pixels(const S* s, int64_t ss, T* d, int64_t ds, int64_t n, int64_t w) {        \
    widen_pixels_impl<S, T, VB>(s, ss, d, ds, n, w);                                          \
  }                                                                                           \
  template <typename S, typename T>                                                           \
  void narrow_pixels(const T* s, int64_t ss, S* d, int64_t ds, int64_t n, int64_t w) {       \
    narrow_pixels_impl<S, T, VB>(s, ss, d, ds, n, w);                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  void nhwc_wgrad(const NhwcWgrad<T>& a, int64_t r0, int64_t r1, T* F, double* D) {          \
    nhwc_wgrad_impl<T, VB>(a, r0, r1, F, D);                                                  \
  }                                                                                           \
  template <typename T>                                                                       \
  void apply_act(T* p, int64_t n, int act) {                                                  \
    apply_act_impl<T, VB>(p, n, act);                                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  void gather_block(const T* s, int64_t pl, int64_t n, const int64_t* idx, T* d) {           \
    gather_block_impl<T, VB>(s, pl, n, idx, d);                                               \
  }                                                                                           \
  template <typename T>                                                                       \
  void scatter_block(const T* s, int64_t n, T* d, int64_t pl) {                              \
    scatter_block_impl<T, VB>(s, n, d, pl);                                                   \
  }                                                                                           \
  template <typename T>                                                                       \
  Kernels<T> table() {                                                                        \
    return {&flat_conv<T>,  &flat_dot<T>,   &fill_phases<T>, &interleave2<T>,                  \
            &nhwc_row<T>,   &copy_pixels<T>, &stream_pixels<T>,                                \
            {&widen_pixels<c10::BFloat16, T>, &narrow_pixels<c10::BFloat16, T>},                \
            {&widen_pixels<c10::Half, T>, &narrow_pixels<c10::Half, T>},                        \
            &nhwc_wgrad<T>, &apply_act<T>,                                                     \
            &gather_block<T>, &scatter_block<T>, int64_t(VB / sizeof(T))};                    \
  }                                                                                           \
  }

