// What every depthwise CUDA source shares: the convolution as the kernels see it (Conv), division
// by runtime divisors without the integer divider, the fixed-size template dispatch, the index
// helpers of the int64 kernels, the launch helper, and the shape check each launcher makes
// first. One header so the three launchers, each in its own .cu, agree on geometry and limits.
//
// The depthwise family, y = act(conv2d(x, w, groups=C) + bias), its input gradient and its weight
// gradient, for contiguous NCHW and NHWC tensors:
//   depthwise_conv.cuh            the forward-conv kernels (tiled NCHW, NHWC) and their planning,
//                                 used by the next two files
//   depthwise_forward.cu          depthwise_forward (+ the int64 direct kernel)
//   depthwise_backward_input.cu   depthwise_backward_input (stride 1: the forward kernels on
//                                 the mirrored kernel; otherwise a gather)
//   depthwise_backward_weight.cu  depthwise_backward_weight (deterministic two-pass reduction)
//
// STATUS: compile-checked with nvcc (sm_90, no warnings) and run on the CPU under the CUDA
// emulation of csrc/emu/ (tests/test_cuda_emu.py) against the eager reference; NOT yet run on a
// GPU. Speed, occupancy and races the emulation cannot show are unverified: run the cuda tests
// and compute-sanitizer on a device (bench/gpu_session.sh) before trusting it.
//
// The op is memory-bound (a 3x3 output is 9 FMAs against 4-8 bytes moved), so the aim is to
// read each input element from DRAM once, keep the per-output instruction count low enough for
// fp16 to reach copy bandwidth, and never index with int32 what can pass 2^31.
//
// Fixed-size templates: KH = KW in {3, 5, 7}, stride 1 or 2 in both dims, dilation 1. Everything
// else (1xk, kx1, dilation, other strides) takes the runtime-size path of the same kernels.
// Shapes whose in-plane coordinates could overflow int32 take int64 fallback kernels.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cuda_math.cuh"
#include "launchers.h"

namespace fastblocks::cuda {
// Host functions below are `inline`: an includer that calls none of them must not warn (-Wall
// -Werror warns about unused functions of an anonymous namespace, not inline ones).
namespace {

constexpr int kThreads = 256;
// Rows per thread of the NCHW kernels; pixels per thread along W of the NHWC kernels.
constexpr int kRowsPerThread = 4;
constexpr int kPixPerThread = 4;
constexpr int64_t kInt32Max = 2147483647;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Division by a runtime divisor d in [1, 2^31) for dividends in [0, 2^31): a multiply-high and
// a shift instead of the ~20-instruction integer division (Granlund-Montgomery, as ATen's
// IntDivider).
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    for (s = 0; s < 32; ++s)
      if ((uint64_t(1) << s) >= d) break;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

// int64 division that takes the FastDiv path whenever both operands fit it (a uniform branch in
// practice: every thread of a kernel sees the same divisor and similar dividends).
struct Div64 {
  int64_t d = 1;
  FastDiv f;
  Div64() = default;
  explicit Div64(int64_t divisor)
      : d(divisor), f(divisor >= 1 && divisor <= kInt32Max ? uint32_t(divisor) : 1u) {}
  __device__ __forceinline__ int64_t div(int64_t n) const {
    if (d <= kInt32Max && n >= 0 && n <= kInt32Max) return f.div(uint32_t(n));
    return n / d;
  }
};

// A depthwise conv as the kernels see it: `in` is read, `out` is written, and
// in_row = out_row * sh - ph + i * dh (same for columns). Output channel c reads input channel
// c / mult with the weights of channel c. The flipped mode of the kernels (stride-1 input
// gradient, mult == 1: in = grad, out = grad_x) only mirrors the taps.
struct Conv {
  int64_t n, in_c, in_h, in_w, out_c, out_h, out_w;
  int kh, kw, sh, sw, ph, pw, dh, dw, mult;
};

inline Conv forward_conv(const DepthwiseShape& s) {
  return Conv{s.n,         s.c,         s.h,         s.w,         s.c * s.mult,
              s.oh,        s.ow,        int(s.kh),   int(s.kw),   int(s.stride_h),
              int(s.stride_w), int(s.pad_h), int(s.pad_w), int(s.dil_h), int(s.dil_w),
              int(s.mult)};
}

// Whether every in-plane coordinate the fast kernels form (out*stride - pad + tap*dil, tile
// origins, their flipped-mode counterparts) stays well inside int32; each term below is at most
// 2^27 and no expression adds more than eight of them. Anything else takes the int64 kernels.
inline bool small_coords(const DepthwiseShape& s) {
  constexpr int64_t lim = int64_t(1) << 27;
  auto ok = [&](int64_t v) { return v >= -lim && v <= lim; };
  return ok(s.h) && ok(s.w) && ok(s.oh) && ok(s.ow) && ok(s.pad_h) && ok(s.pad_w) &&
         ok(s.kh * s.dil_h) && ok(s.kw * s.dil_w) && ok((s.oh + 64) * s.stride_h) &&
         ok((s.ow + 64) * s.stride_w) && ok(s.mult) && s.c * s.mult <= kInt32Max;
}

// Kernel size of the fixed-size templates (3, 5, 7) or 0 for the runtime-size path.
inline int fixed_k(const DepthwiseShape& s) {
  if (s.kh != s.kw || s.dil_h != 1 || s.dil_w != 1) return 0;
  return (s.kh == 3 || s.kh == 5 || s.kh == 7) ? int(s.kh) : 0;
}
inline int fixed_stride(const DepthwiseShape& s) {
  return (s.stride_h == s.stride_w && (s.stride_h == 1 || s.stride_h == 2)) ? int(s.stride_h) : 0;
}

template <int V> struct IntC { static constexpr int value = V; };

// Calls f(IntC<K>, IntC<S>) for the instantiated fixed sizes; false when (k, st) has none.
template <bool kStride2, typename F> bool dispatch_fixed(int k, int st, F&& f) {
  if (st == 1) {
    if (k == 3) return f(IntC<3>{}, IntC<1>{}), true;
    if (k == 5) return f(IntC<5>{}, IntC<1>{}), true;
    if (k == 7) return f(IntC<7>{}, IntC<1>{}), true;
    return false;
  }
  if constexpr (kStride2) {
    if (st == 2) {
      if (k == 3) return f(IntC<3>{}, IntC<2>{}), true;
      if (k == 5) return f(IntC<5>{}, IntC<2>{}), true;
      if (k == 7) return f(IntC<7>{}, IntC<2>{}), true;
    }
  }
  return false;
}

template <bool kStride2> bool has_fixed(int k, int st) {
  return (k == 3 || k == 5 || k == 7) && (st == 1 || (kStride2 && st == 2));
}

// The one launch site: every kernel goes through here, on the caller's stream.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            Args... args) {
  FB_LAUNCH(grid, block, smem, stream, kernel)(args...);
}

// Index helpers of the int64 kernels (one thread per element, any size, either layout).

// Output element idx of a contiguous (N, C, H, W) or (N, H, W, C) tensor.
struct Index4 {
  int64_t n, c, y, x;
};
struct Decompose {
  Div64 dc, dh, dw;
  int64_t c, h, w;
  bool cl;
  __device__ __forceinline__ Index4 operator()(int64_t idx) const {
    Index4 r;
    if (cl) {
      const int64_t a = dc.div(idx), b = dw.div(a);
      r.c = idx - a * c;
      r.x = a - b * w;
      r.n = dh.div(b);
      r.y = b - r.n * h;
    } else {
      const int64_t a = dw.div(idx), b = dh.div(a);
      r.x = idx - a * w;
      r.y = a - b * h;
      r.n = dc.div(b);
      r.c = b - r.n * c;
    }
    return r;
  }
};
inline Decompose make_decompose(int64_t c, int64_t h, int64_t w, bool cl) {
  return Decompose{Div64(c), Div64(h), Div64(w), c, h, w, cl};
}
__device__ __forceinline__ int64_t offset4(int64_t n, int64_t c, int64_t y, int64_t x, int64_t C,
                                           int64_t H, int64_t W, bool cl) {
  return cl ? ((n * H + y) * W + x) * C + c : ((n * C + c) * H + y) * W + x;
}

// Pack width for NHWC: 2 channels per load when mult == 1, channels even and pointers aligned.
// fp64 stays scalar (a 16-byte pack would only add registers).
template <typename T> constexpr bool kVec2 = sizeof(T) < 8;
template <typename T>
int nhwc_vec(const Conv& p, const void* a, const void* b) {
  if (!kVec2<T> || p.mult != 1 || p.in_c % 2 != 0 || p.out_c % 2 != 0) return 1;
  return aligned(a, 2 * sizeof(T)) && aligned(b, 2 * sizeof(T)) ? 2 : 1;
}

// The launchers' first check: sizes in range, and the int32 limits of launchers.h
// (depthwise_fits_int32); past it they return cudaErrorInvalidValue without launching.
inline bool valid_shape(const DepthwiseShape& s) {
  return s.n >= 0 && s.c >= 1 && s.h >= 0 && s.w >= 0 && s.mult >= 1 && s.oh >= 0 && s.ow >= 0 &&
         s.kh >= 1 && s.kw >= 1 && s.stride_h >= 1 && s.stride_w >= 1 && s.dil_h >= 1 &&
         s.dil_w >= 1 && depthwise_fits_int32(s);
}

}  // namespace
}  // namespace fastblocks::cuda
