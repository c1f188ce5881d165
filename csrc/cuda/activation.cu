// CUDA kernels of the activation family. Memory-bound: each thread handles kVec elements
// loaded as one 16-byte vector where the pointer alignment allows, so fp16/bf16 move 8
// elements per load; math in float (double for fp64).
#include "cuda_math.cuh"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

constexpr int kThreads = 256;

// Grid-stride over packs of kVec elements; the tail (n % kVec) is done element-wise by the
// first threads. i is int64 so tensors past 2^31 elements index correctly.
template <typename T, int kVec>
__global__ void activation_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                          int act) {
  using acc_t = typename Acc<T>::type;
  const int64_t packs = n / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    Pack<T, kVec> in = reinterpret_cast<const Pack<T, kVec>*>(x)[p], out;
#pragma unroll
    for (int k = 0; k < kVec; ++k) out.v[k] = from_acc<T>(act_forward<acc_t>(to_acc(in.v[k]), act));
    reinterpret_cast<Pack<T, kVec>*>(y)[p] = out;
  }
  const int64_t tail = packs * kVec + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) y[tail] = from_acc<T>(act_forward<acc_t>(to_acc(x[tail]), act));
}

template <typename T, int kVec>
__global__ void activation_backward_kernel(const T* g, const T* __restrict__ x, T* gx, int64_t n,
                                           int act) {
  // launchers.h lets gx alias g (an in-place backward): neither is __restrict__.
  using acc_t = typename Acc<T>::type;
  const int64_t packs = n / kVec;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    Pack<T, kVec> gi = reinterpret_cast<const Pack<T, kVec>*>(g)[p];
    Pack<T, kVec> xi = reinterpret_cast<const Pack<T, kVec>*>(x)[p], out;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      out.v[k] = from_acc<T>(act_backward<acc_t>(to_acc(gi.v[k]), to_acc(xi.v[k]), act));
    reinterpret_cast<Pack<T, kVec>*>(gx)[p] = out;
  }
  const int64_t tail = packs * kVec + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) gx[tail] = from_acc<T>(act_backward<acc_t>(to_acc(g[tail]), to_acc(x[tail]), act));
}

template <typename T>
cudaError_t launch_forward(const void* x, void* y, int64_t n, int act, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (aligned(x, 16) && aligned(y, 16)) {
    FB_LAUNCH(grid_stride_blocks(n / kVec + 1, kThreads), kThreads, 0, stream,
              activation_forward_kernel<T, kVec>)(
        static_cast<const T*>(x), static_cast<T*>(y), n, act);
  } else {
    FB_LAUNCH(grid_stride_blocks(n, kThreads), kThreads, 0, stream,
              activation_forward_kernel<T, 1>)(
        static_cast<const T*>(x), static_cast<T*>(y), n, act);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const void* g, const void* x, void* gx, int64_t n, int act,
                            cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (aligned(g, 16) && aligned(x, 16) && aligned(gx, 16)) {
    FB_LAUNCH(grid_stride_blocks(n / kVec + 1, kThreads), kThreads, 0, stream,
              activation_backward_kernel<T, kVec>)(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<T*>(gx), n, act);
  } else {
    FB_LAUNCH(grid_stride_blocks(n, kThreads), kThreads, 0, stream,
              activation_backward_kernel<T, 1>)(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<T*>(gx), n, act);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t activation_forward(const void* x, void* y, int64_t n, int act, DType dtype,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_forward<float>(x, y, n, act, stream);
    case DType::kFloat16: return launch_forward<__half>(x, y, n, act, stream);
    case DType::kBFloat16: return launch_forward<__nv_bfloat16>(x, y, n, act, stream);
    case DType::kFloat64: return launch_forward<double>(x, y, n, act, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t activation_backward(const void* g, const void* x, void* gx, int64_t n, int act,
                                DType dtype, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_backward<float>(g, x, gx, n, act, stream);
    case DType::kFloat16: return launch_backward<__half>(g, x, gx, n, act, stream);
    case DType::kBFloat16: return launch_backward<__nv_bfloat16>(g, x, gx, n, act, stream);
    case DType::kFloat64: return launch_backward<double>(g, x, gx, n, act, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
