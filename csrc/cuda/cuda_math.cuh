// Device helpers shared by the .cu files: the accumulation type of each element type and the
// conversions into and out of it, plus a vector of elements loaded as one aligned access.
// CUDA headers only (see launchers.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fastblocks/cuda_launch.h"

namespace fastblocks::cuda {
namespace {

// fp16/bf16/fp32 accumulate in float, fp64 in double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v) {
  return static_cast<T>(v);
}
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// kVec elements moved by one load/store; the pointer must be aligned to sizeof(Pack).
template <typename T, int kVec> struct alignas(sizeof(T) * kVec) Pack { T v[kVec]; };

}  // namespace
}  // namespace fastblocks::cuda
