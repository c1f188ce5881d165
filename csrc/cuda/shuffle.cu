// CUDA kernels of the shuffle family (see csrc/cpu/shuffle.cpp for the math): channel shuffle
// of one tensor or of two concatenated, with a bias + activation epilogue, and its backward.
//
// Memory-bound. Each thread owns consecutive *output* elements, so stores coalesce; loads
// gather: in NHWC from the same pixel's channel row, in NCHW from one source plane per output
// plane. NCHW moves kVec elements (16 bytes) per access where every plane and pointer is
// aligned to it (HW % kVec == 0, as on all ShuffleNet/ResNeXt maps up to 7x7 in fp32), else
// one element. Math in float (double for fp64). Indices are int64.
// Status: compiled with nvcc for sm_90 and run under the CPU emulation of csrc/emu/
// (tests/test_shuffle_cuda_emu.py); not yet run on a GPU.
#include "cuda_math.cuh"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t source_channel(int64_t o, int64_t groups, int64_t k) {
  return (o % groups) * k + o / groups;
}

// One output element (or pack of kVec along a plane) per thread, grid-stride. `units` counts
// packs: NCHW packs of kVec along a plane, NHWC single elements (kVec == 1).
template <typename T, int kVec>
__global__ void shuffle_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                       const T* __restrict__ bias, T* __restrict__ y,
                                       ShuffleShape s, int act, int64_t units) {
  using acc_t = typename Acc<T>::type;
  const int64_t k = s.c / s.groups;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += step) {
    const int64_t e = u * kVec;  // first output element, flat in the output's layout
    int64_t n, o, p;
    if (s.channels_last) {
      const int64_t q = e / s.c;
      o = e % s.c, n = q / s.hw, p = q % s.hw;
    } else {
      n = e / (s.c * s.hw);
      const int64_t r = e % (s.c * s.hw);
      o = r / s.hw, p = r % s.hw;
    }
    const int64_t src = source_channel(o, s.groups, k);
    const T* in = src < s.split ? a + n * s.sn0 + src * s.sc0 + p * s.sp0
                                : b + n * s.sn1 + (src - s.split) * s.sc1 + p * s.sp1;
    const acc_t bv = bias != nullptr ? to_acc(bias[src]) : acc_t(0);
    Pack<T, kVec> v = *reinterpret_cast<const Pack<T, kVec>*>(in), out;
    if (bias == nullptr && act == 0) {
      out = v;
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) out.v[i] = from_acc<T>(act_forward<acc_t>(to_acc(v.v[i]) + bv, act));
    }
    *reinterpret_cast<Pack<T, kVec>*>(y + e) = out;
  }
}

// Walks the concatenated gradient (N, C, H, W) in the output layout: element (n, c, p) reads
// grad (and y) at channel dst(c) and is written into ga or gb.
template <typename T, int kVec>
__global__ void shuffle_backward_kernel(const T* __restrict__ grad, const T* __restrict__ y,
                                        T* __restrict__ ga, T* __restrict__ gb, ShuffleShape s,
                                        int act, int64_t units) {
  using acc_t = typename Acc<T>::type;
  const int64_t k = s.c / s.groups;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += step) {
    const int64_t e = u * kVec;
    int64_t n, c, p, from;
    if (s.channels_last) {
      const int64_t q = e / s.c;
      c = e % s.c, n = q / s.hw, p = q % s.hw;
      from = q * s.c + (c % k) * s.groups + c / k;
    } else {
      n = e / (s.c * s.hw);
      const int64_t r = e % (s.c * s.hw);
      c = r / s.hw, p = r % s.hw;
      from = (n * s.c + (c % k) * s.groups + c / k) * s.hw + p;
    }
    T* to = c < s.split ? ga + n * s.sn0 + c * s.sc0 + p * s.sp0
                        : gb + n * s.sn1 + (c - s.split) * s.sc1 + p * s.sp1;
    Pack<T, kVec> g = *reinterpret_cast<const Pack<T, kVec>*>(grad + from), out;
    if (act == 0) {
      out = g;
    } else {
      const Pack<T, kVec> yv = *reinterpret_cast<const Pack<T, kVec>*>(y + from);
#pragma unroll
      for (int i = 0; i < kVec; ++i)
        out.v[i] = from_acc<T>(act_backward<acc_t>(to_acc(g.v[i]), to_acc(yv.v[i]), act));
    }
    *reinterpret_cast<Pack<T, kVec>*>(to) = out;
  }
}

// Whether NCHW planes can move as packs of kVec: whole planes of packs, every plane start
// (batch strides included) aligned.
template <typename T, int kVec>
bool packs_fit(const ShuffleShape& s, const void* p0, const void* p1, const void* out) {
  constexpr size_t bytes = sizeof(T) * kVec;
  return !s.channels_last && s.hw % kVec == 0 && s.sn0 % kVec == 0 && s.sn1 % kVec == 0 &&
         aligned(p0, bytes) && aligned(p1, bytes) && aligned(out, bytes);
}

template <typename T>
cudaError_t launch_forward(const void* a, const void* b, const void* bias, void* y,
                           const ShuffleShape& s, int act, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t total = s.n * s.c * s.hw;
  const auto* ap = static_cast<const T*>(a);
  const auto* bp = static_cast<const T*>(b);
  const auto* biasp = static_cast<const T*>(bias);
  auto* yp = static_cast<T*>(y);
  if (packs_fit<T, kVec>(s, a, b, y)) {
    FB_LAUNCH(grid_stride_blocks(total / kVec, kThreads), kThreads, 0, stream,
              shuffle_forward_kernel<T, kVec>)(ap, bp, biasp, yp, s, act, total / kVec);
  } else {
    FB_LAUNCH(grid_stride_blocks(total, kThreads), kThreads, 0, stream,
              shuffle_forward_kernel<T, 1>)(ap, bp, biasp, yp, s, act, total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const void* grad, const void* y, void* ga, void* gb,
                            const ShuffleShape& s, int act, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t total = s.n * s.c * s.hw;
  const auto* gp = static_cast<const T*>(grad);
  const auto* yp = static_cast<const T*>(y);
  auto* gap = static_cast<T*>(ga);
  auto* gbp = static_cast<T*>(gb);
  if (packs_fit<T, kVec>(s, ga, gb, grad) && aligned(y, sizeof(T) * kVec)) {
    FB_LAUNCH(grid_stride_blocks(total / kVec, kThreads), kThreads, 0, stream,
              shuffle_backward_kernel<T, kVec>)(gp, yp, gap, gbp, s, act, total / kVec);
  } else {
    FB_LAUNCH(grid_stride_blocks(total, kThreads), kThreads, 0, stream,
              shuffle_backward_kernel<T, 1>)(gp, yp, gap, gbp, s, act, total);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t channel_shuffle_forward(const void* a, const void* b, const void* bias, void* y,
                                    const ShuffleShape& s, int act, DType dtype,
                                    cudaStream_t stream) {
  if (s.n * s.c * s.hw == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_forward<float>(a, b, bias, y, s, act, stream);
    case DType::kFloat16: return launch_forward<__half>(a, b, bias, y, s, act, stream);
    case DType::kBFloat16: return launch_forward<__nv_bfloat16>(a, b, bias, y, s, act, stream);
    case DType::kFloat64: return launch_forward<double>(a, b, bias, y, s, act, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t channel_shuffle_backward(const void* grad, const void* y, void* ga, void* gb,
                                     const ShuffleShape& s, int act, DType dtype,
                                     cudaStream_t stream) {
  if (s.n * s.c * s.hw == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_backward<float>(grad, y, ga, gb, s, act, stream);
    case DType::kFloat16: return launch_backward<__half>(grad, y, ga, gb, s, act, stream);
    case DType::kBFloat16: return launch_backward<__nv_bfloat16>(grad, y, ga, gb, s, act, stream);
    case DType::kFloat64: return launch_backward<double>(grad, y, ga, gb, s, act, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
