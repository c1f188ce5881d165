// Helpers for csrc/cuda/<family>.cpp: the torch side of the CUDA launchers. Built only where
// PyTorch has CUDA.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fastblocks/common.h"

namespace fastblocks::cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK(false, "fastblocks (cuda): unsupported dtype ", t.scalar_type());
  }
}

// Launch on PyTorch's current stream of the tensor's device, never the default stream.
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

#define FB_CUDA_CHECK(EXPR)                                                              \
  do {                                                                                   \
    cudaError_t fb_err_ = (EXPR);                                                        \
    TORCH_CHECK(fb_err_ == cudaSuccess, "fastblocks (cuda): ", cudaGetErrorString(fb_err_)); \
  } while (0)

}  // namespace fastblocks::cuda
