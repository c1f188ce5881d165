// Torch bindings of the activation CUDA launchers (csrc/cuda/activation.cu).
#include <torch/library.h>

#include "fastblocks/cuda_binding.h"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

at::Tensor activation_forward_cuda(const at::Tensor& x, int64_t act) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "activation_forward: x must be dense");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  FB_CUDA_CHECK(activation_forward(x.const_data_ptr(), y.mutable_data_ptr(), x.numel(),
                                   static_cast<int>(act), dtype_of(x), current_stream()));
  return y;
}

at::Tensor activation_backward_cuda(const at::Tensor& grad, const at::Tensor& x, int64_t act) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
  TORCH_CHECK(x.is_non_overlapping_and_dense() && grad.strides() == x.strides() &&
                  grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "activation_backward: grad and x must be dense with equal sizes, strides, dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gx = at::empty_like(x);
  FB_CUDA_CHECK(activation_backward(grad.const_data_ptr(), x.const_data_ptr(),
                                    gx.mutable_data_ptr(), x.numel(), static_cast<int>(act),
                                    dtype_of(x), current_stream()));
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CUDA, m) {
  m.impl("activation_forward", &activation_forward_cuda);
  m.impl("activation_backward", &activation_backward_cuda);
}

}  // namespace fastblocks::cuda
