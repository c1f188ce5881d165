// Helpers shared by the .cu files: the accumulation type of each element type and the
// conversions into and out of it, a vector of elements loaded as one aligned access, and the
// host-side alignment test and grid size that go with them. CUDA headers only (see
// launchers.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

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

// Whether p (null counts as aligned) may be read or written as packs of `bytes`.
inline bool aligned(const void* p, size_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

// Blocks of `threads` threads for a grid-stride kernel over `work` items: enough to cover the
// work, but at most 132 * 8: with 256 threads, 8 blocks fill an H100 SM (2048 threads) on each
// of its 132 SMs, and the stride loop does the rest.
inline unsigned grid_stride_blocks(int64_t work, int threads) {
  constexpr int64_t kMaxBlocks = 132 * 8;
  const int64_t blocks = (work + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

constexpr int kWarp = 32;

// The sum of v over the warp's 32 lanes, in lane 0 (a fixed tree: deterministic).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace
}  // namespace fastblocks::cuda
