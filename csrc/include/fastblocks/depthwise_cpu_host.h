// What the depthwise CPU drivers (csrc/cpu/depthwise_{forward,backward_input,backward_weight}.cpp)
// share on the host side: the work split over threads, aligned scratch, the weights and bias
// copied into the accumulation type, and the plane and row conversions between the tensors'
// storage type and it.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/depthwise_cpu_passes.h"
#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {

// Work (multiply-adds) below which a task is not worth its own thread.
constexpr int64_t kTaskWork = 1 << 15;
inline int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, work_per_task));
}

// Runs body(next) once on each of up to at::get_num_threads() threads; next(begin, end) hands
// out the tasks [0, n) in chunks of `grain` as the threads ask for them (an atomic cursor) and
// returns false when none are left. A thread that runs late, on a core shared with another
// process, then takes fewer chunks instead of holding up the op, as at::parallel_for's static
// split does (1x672x14x14 3x3 channels_last forward on the 2-core dev box with its second core
// busy: 157 us with 2 threads against 58 us with 1). body sets up its scratch once, then loops
// `for (int64_t b, e; next(b, e);)`. Each output element is still written by one task in a
// fixed order, so results do not depend on which thread ran it.
template <typename F>
void parallel_dynamic(int64_t n, int64_t grain, const F& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = ceil_div(n, grain);
  std::atomic<int64_t> cursor{0};
  const auto next = [&](int64_t& begin, int64_t& end) {
    const int64_t c = cursor.fetch_add(1, std::memory_order_relaxed);
    if (c >= chunks) return false;
    begin = c * grain;
    end = std::min(n, begin + grain);
    return true;
  };
  const int64_t workers = std::min<int64_t>(chunks, at::get_num_threads());
  if (workers == 1 || at::in_parallel_region()) {
    body(next);
  } else {
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) { body(next); });
  }
}

// A 64-byte aligned buffer (vector loads from std::vector storage would straddle cache lines).
template <typename T>
struct AlignedBuf {
  std::vector<T> store;
  T* ptr = nullptr;
  explicit AlignedBuf(int64_t n) : store(n + 64 / sizeof(T)) {
    const auto addr = reinterpret_cast<uintptr_t>(store.data());
    ptr = store.data() + ((64 - addr % 64) % 64) / sizeof(T);
  }
};

// wT[t][c] = weight[c][t] in T (by hand: a few ATen calls would cost more than a 7x7 layer).
template <typename T>
AlignedBuf<T> tap_major(const at::Tensor& weight, const Geom& g) {
  AlignedBuf<T> wT(g.taps() * g.OC());
  FB_DISPATCH_FLOATING(weight.scalar_type(), "depthwise", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < g.OC(); ++c) {
      for (int64_t t = 0; t < g.taps(); ++t) wT.ptr[t * g.OC() + c] = static_cast<T>(w[c * g.taps() + t]);
    }
  });
  return wT;
}

// v (a bias) as T, aligned.
template <typename T>
AlignedBuf<T> to_aligned(const at::Tensor& v) {
  AlignedBuf<T> out(v.numel());
  FB_DISPATCH_FLOATING(v.scalar_type(), "depthwise", [&] {
    const scalar_t* p = v.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < v.numel(); ++i) out.ptr[i] = static_cast<T>(p[i]);
  });
  return out;
}

// A plane of scalar_t as T: itself when the types agree, else converted into tmp.
template <typename T, typename scalar_t>
const T* plane_as(const scalar_t* x, int64_t n, std::vector<T>& tmp) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return x;
  } else {
    tmp.resize(n);
    widen_n(x, tmp.data(), n);
    return tmp.data();
  }
}

// Copies rows of n elements; short rows (7x7 layers) by a plain loop rather than a call.
template <typename T, typename scalar_t>
void copy_rows(const T* src, int64_t sstride, scalar_t* dst, int64_t dstride, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * sstride;
    scalar_t* d = dst + r * dstride;
    if constexpr (!std::is_same_v<T, scalar_t>) {
      narrow_n(s, d, n);
    } else if (n > 32) {
      std::memcpy(d, s, n * sizeof(T));
    } else {
      for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    }
  }
}

}  // namespace fastblocks::cpu::dw
