// Kernels that exercise the emulation's own primitives (warp shuffles, votes, atomics, dynamic
// shared memory, barrier checks), built into the emulation library only; tests/test_cuda_emu.py
// checks their results against what CUDA defines. Plain CUDA: nvcc compiles it too.
#include <cstdint>

#include <cuda_runtime_api.h>

#include "fastblocks/cuda_launch.h"

namespace fb_emu_selftest {
namespace {

// Per warp of x (blockDim.x a multiple of 32): sum by shfl_xor and by shfl_down, inclusive
// prefix sums by shfl_up, lane 3's value by shfl, the ballot of x > 0; all-block sum by atomics.
__global__ void warp_ops_kernel(const float* x, float* xor_sum, float* down_sum, float* scan,
                                float* bcast, unsigned* ballot, float* total) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32, warp = i / 32;
  const float v = x[i];
  float s = v;
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  xor_sum[i] = s;
  float d = v;
  for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
  if (lane == 0) down_sum[warp] = d;
  float c = v;
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, c, o);
    if (lane >= o) c += u;
  }
  scan[i] = c;
  bcast[i] = __shfl_sync(0xffffffffu, v, 3);
  const unsigned b = __ballot_sync(0xffffffffu, v > 0.f);
  if (lane == 0) ballot[warp] = b;
  if (lane == 0) atomicAdd(total, s);
}

// Threads wait at two different __syncthreads(): undefined on a GPU, an error in the emulation.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Half the warp returns, the other half shuffles with a full mask: a hang or garbage on a GPU,
// an error in the emulation.
__global__ void exited_lane_shuffle_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

// Copies dynamic shared memory nobody wrote: the emulation fills it with 0xFF bytes (NaN).
__global__ void unwritten_smem_kernel(float* out) {
  extern __shared__ __align__(16) float buf[];
  out[threadIdx.x] = buf[threadIdx.x];
}

}  // namespace

cudaError_t warp_ops(const float* x, float* xor_sum, float* down_sum, float* scan, float* bcast,
                     unsigned* ballot, float* total, int blocks) {
  FB_LAUNCH(blocks, 64, 0, nullptr, warp_ops_kernel)(x, xor_sum, down_sum, scan, bcast, ballot,
                                                     total);
  return cudaGetLastError();
}

cudaError_t divergent_barrier(int* out) {
  FB_LAUNCH(1, 32, 0, nullptr, divergent_barrier_kernel)(out);
  return cudaGetLastError();
}

cudaError_t exited_lane_shuffle(float* out) {
  FB_LAUNCH(1, 32, 0, nullptr, exited_lane_shuffle_kernel)(out);
  return cudaGetLastError();
}

cudaError_t unwritten_smem(float* out, int n) {
  FB_LAUNCH(1, n, n * sizeof(float), nullptr, unwritten_smem_kernel)(out);
  return cudaGetLastError();
}

}  // namespace fb_emu_selftest
