// Torch bindings of the activation CUDA launchers (csrc/cuda/activation.cu).
#include <torch/library.h>

#include "fastblocks/cuda_binding.h"
#include "fastblocks/layout.h"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

// Layouts as the CPU kernels (csrc/cpu/activation.cpp): any strides, normalised once.
at::Tensor activation_forward_cuda(const at::Tensor& x_in, int64_t act) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  at::Tensor y = at::empty_like(x);
  FB_CUDA_CHECK(activation_forward(x.const_data_ptr(), y.mutable_data_ptr(), x.numel(),
                                   static_cast<int>(act), dtype_of(x), current_stream()));
  return y;
}

at::Tensor activation_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, int64_t act) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "activation_backward: grad has shape ",
              grad_in.sizes(), " but x has ", x_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type(), "activation_backward: grad dtype ",
              grad_in.scalar_type(), " differs from the x dtype ", x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  const at::Tensor grad = layout_of(grad_in, x);
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
