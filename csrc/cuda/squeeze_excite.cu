// CUDA kernels of squeeze-and-excitation: the two passes over x (forward: sum of x per (n, c),
// then y = x * s; backward: sum of grad * x per (n, c), then grad_x = grad * s + q). The MLP
// between them runs in the binding (csrc/cuda/squeeze_excite.cpp) through cuBLAS.
//
// Sums accumulate in double whatever the dtype and are stored in float (double for fp64): an
// fp16 plane whose sum passes 65504 keeps a finite mean, and a thread's serial chain over a
// 112x112 plane (392 adds per lane) does not lose the bias gradients' precision (the CPU
// kernels measured 10x eager's error with float chains). H100/H200 run double adds at half
// the float rate, far above what these memory-bound loops need. Each reduction may split H*W
// into `split` ranges so a batch-1 map still fills the SMs; program (.., split) writes
// out[split * N*C + n*C + c] and the binding adds the partials in a fixed order
// (deterministic, no atomics).
// Status: compile-checked with nvcc for sm_90 and run under the CPU emulation of csrc/emu/
// (tests/test_squeeze_excite_cuda_emu.py); not yet run on a GPU.
#include "cuda_math.cuh"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

constexpr int kThreads = 256;
// A block's warps: planes per block of the NCHW kernel, rows walked at once by the NHWC one.
constexpr int kWarpsPerBlock = kThreads / kWarp;

// NCHW: one warp per plane, kWarpsPerBlock planes per block; blockIdx.y is the split.
template <typename T, bool PRODUCT>
__global__ void reduce_nchw_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                   typename Acc<T>::type* __restrict__ out, int64_t planes,
                                   int64_t hw, int64_t rows_per_split) {
  using acc_t = typename Acc<T>::type;
  using sum_t = double;  // whatever the dtype: see the top of the file
  const int64_t plane = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (plane >= planes) return;  // whole warps leave together: the shuffle below stays full
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < hw ? r0 + rows_per_split : hw;
  const T* pa = a + plane * hw;
  const T* pb = b + plane * hw;
  sum_t acc = sum_t(0);
  for (int64_t r = r0 + lane; r < r1; r += kWarp) {
    sum_t v = sum_t(to_acc(pa[r]));
    if constexpr (PRODUCT) v *= sum_t(to_acc(pb[r]));
    acc += v;
  }
  acc = warp_sum(acc);
  if (lane == 0) out[int64_t(blockIdx.y) * planes + plane] = static_cast<acc_t>(acc);
}

// NHWC: a block covers 32 channels (threadIdx.x: coalesced along C) of one image and walks
// the rows of its split kWarpsPerBlock (8) at a time (threadIdx.y); the row partials meet in
// shared memory.

template <typename T, bool PRODUCT>
__global__ void reduce_nhwc_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                   typename Acc<T>::type* __restrict__ out, int64_t n_img,
                                   int64_t c, int64_t hw, int64_t rows_per_split) {
  using acc_t = typename Acc<T>::type;
  using sum_t = double;
  __shared__ sum_t part[kWarpsPerBlock][kWarp];
  const int64_t ch = int64_t(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t n = blockIdx.y;
  const int64_t r0 = int64_t(blockIdx.z) * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < hw ? r0 + rows_per_split : hw;
  sum_t acc = sum_t(0);
  if (ch < c) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kWarpsPerBlock) {
      const int64_t off = (n * hw + r) * c + ch;
      sum_t v = sum_t(to_acc(a[off]));
      if constexpr (PRODUCT) v *= sum_t(to_acc(b[off]));
      acc += v;
    }
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    sum_t sum = sum_t(0);
#pragma unroll
    for (int k = 0; k < kWarpsPerBlock; ++k) sum += part[k][threadIdx.x];
    out[(int64_t(blockIdx.z) * n_img + n) * c + ch] = static_cast<acc_t>(sum);
  }
}

// out = a * s[n, c] (+ q[n, c]), grid-stride over a contiguous NCHW or NHWC tensor. out may
// alias a (no __restrict__ between them).
template <typename T, bool ADD, bool CHANNELS_LAST>
__global__ void scale_kernel(const T* a, const typename Acc<T>::type* __restrict__ s,
                             const typename Acc<T>::type* __restrict__ q, T* out, int64_t numel,
                             int64_t c, int64_t hw) {
  using acc_t = typename Acc<T>::type;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const int64_t idx = CHANNELS_LAST ? (i / (hw * c)) * c + i % c : i / hw;
    acc_t v = to_acc(a[i]) * s[idx];
    if constexpr (ADD) v += q[idx];
    out[i] = from_acc<T>(v);
  }
}

template <typename T, bool PRODUCT>
cudaError_t launch_reduce(const void* a, const void* b, void* out, const SeShape& s,
                          cudaStream_t stream) {
  using acc_t = typename Acc<T>::type;
  const int64_t rows = (s.hw + s.split - 1) / s.split;
  if (s.channels_last) {
    const dim3 grid(static_cast<unsigned>((s.c + kWarp - 1) / kWarp), static_cast<unsigned>(s.n),
                    static_cast<unsigned>(s.split));
    FB_LAUNCH(grid, dim3(kWarp, kWarpsPerBlock), 0, stream, reduce_nhwc_kernel<T, PRODUCT>)(
        static_cast<const T*>(a), static_cast<const T*>(b), static_cast<acc_t*>(out), s.n, s.c,
        s.hw, rows);
  } else {
    const int64_t planes = s.n * s.c;
    const dim3 grid(static_cast<unsigned>((planes + kWarpsPerBlock - 1) / kWarpsPerBlock),
                    static_cast<unsigned>(s.split));
    FB_LAUNCH(grid, kThreads, 0, stream, reduce_nchw_kernel<T, PRODUCT>)(
        static_cast<const T*>(a), static_cast<const T*>(b), static_cast<acc_t*>(out), planes,
        s.hw, rows);
  }
  return cudaGetLastError();
}

template <typename T, bool ADD>
cudaError_t launch_scale(const void* a, const void* sc, const void* q, void* out, const SeShape& s,
                         cudaStream_t stream) {
  using acc_t = typename Acc<T>::type;
  const int64_t numel = s.n * s.c * s.hw;
  const auto* ap = static_cast<const T*>(a);
  const auto* sp = static_cast<const acc_t*>(sc);
  const auto* qp = static_cast<const acc_t*>(q);
  auto* op = static_cast<T*>(out);
  if (s.channels_last) {
    FB_LAUNCH(grid_stride_blocks(numel, kThreads), kThreads, 0, stream,
              scale_kernel<T, ADD, true>)(ap, sp, qp, op, numel, s.c, s.hw);
  } else {
    FB_LAUNCH(grid_stride_blocks(numel, kThreads), kThreads, 0, stream,
              scale_kernel<T, ADD, false>)(ap, sp, qp, op, numel, s.c, s.hw);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t reduce_typed(const void* a, const void* b, void* out, const SeShape& s, bool product,
                         cudaStream_t stream) {
  return product ? launch_reduce<T, true>(a, b, out, s, stream)
                 : launch_reduce<T, false>(a, b, out, s, stream);
}

template <typename T>
cudaError_t scale_typed(const void* a, const void* sc, const void* q, void* out, const SeShape& s,
                        cudaStream_t stream) {
  return q ? launch_scale<T, true>(a, sc, q, out, s, stream)
           : launch_scale<T, false>(a, sc, q, out, s, stream);
}

}  // namespace

int64_t squeeze_excite_split(int64_t n, int64_t c, int64_t hw, bool channels_last) {
  // aim at two waves of 132 SMs; a split keeps at least 256 rows
  const int64_t base = channels_last ? n * ((c + kWarp - 1) / kWarp)
                                     : (n * c + kWarpsPerBlock - 1) / kWarpsPerBlock;
  int64_t split = base >= 264 ? 1 : (264 + base - 1) / (base > 0 ? base : 1);
  const int64_t most = hw / 256 > 1 ? hw / 256 : 1;
  if (split > most) split = most;
  if (split > 65535) split = 65535;  // gridDim.y / gridDim.z limit
  return split < 1 ? 1 : split;
}

cudaError_t squeeze_excite_reduce(const void* a, const void* b, void* out, const SeShape& s,
                                  bool product, DType dtype, cudaStream_t stream) {
  if (s.n == 0 || s.c == 0 || s.hw == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return reduce_typed<float>(a, b, out, s, product, stream);
    case DType::kFloat16: return reduce_typed<__half>(a, b, out, s, product, stream);
    case DType::kBFloat16: return reduce_typed<__nv_bfloat16>(a, b, out, s, product, stream);
    case DType::kFloat64: return reduce_typed<double>(a, b, out, s, product, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t squeeze_excite_scale(const void* a, const void* scale, const void* add, void* out,
                                 const SeShape& s, DType dtype, cudaStream_t stream) {
  if (s.n == 0 || s.c == 0 || s.hw == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return scale_typed<float>(a, scale, add, out, s, stream);
    case DType::kFloat16: return scale_typed<__half>(a, scale, add, out, s, stream);
    case DType::kBFloat16: return scale_typed<__nv_bfloat16>(a, scale, add, out, s, stream);
    case DType::kFloat64: return scale_typed<double>(a, scale, add, out, s, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
