// Torch bindings of the conv_bn_act CUDA launchers (csrc/cuda/conv_bn_act.cu): the training
// ops bn_act_train_forward/backward (same schema, checks and outputs as the CPU kernels of
// csrc/cpu/conv_bn_act.cpp) and the inference epilogue bias_act_ (csrc/ops.cpp).
// Status: syntax-checked against PyTorch's headers; not yet built or run on a CUDA machine.
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "fastblocks/bn_act_args.h"
#include "fastblocks/cuda_binding.h"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

void check_cuda(const at::Tensor& z, int64_t act, const char* op) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
  TORCH_CHECK(z.is_cuda(), op, ": z must be a CUDA tensor, got one on ", z.device());
  (void)dtype_of(z);  // throws on dtypes the kernels are not compiled for
}

BnShape shape_of(const at::Tensor& z, bool channels_last) {
  BnShape s{};
  s.n = z.size(0);
  s.c = z.size(1);
  s.hw = z.size(2) * z.size(3);
  s.channels_last = channels_last;
  s.split = bn_act_split(s.n, s.c, s.hw, channels_last);
  return s;
}

at::Tensor workspace_for(const BnShape& s, const at::Tensor& z) {
  return at::empty({bn_act_workspace_bytes(s, dtype_of(z))}, z.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_forward_cuda(
    const at::Tensor& z, const at::Tensor& weight, const at::Tensor& bias, double eps,
    int64_t act, bool channels_last) {
  constexpr const char* op = "bn_act_train_forward";
  check_cuda(z, act, op);
  bn_act::check_args(z, weight, bias, channels_last);
  TORCH_CHECK(z.size(0) * z.size(2) * z.size(3) > 1, op, ": more than 1 value per channel needed");
  const c10::cuda::CUDAGuard guard(z.device());
  const BnShape s = shape_of(z, channels_last);
  at::Tensor y = at::empty_like(z);
  at::Tensor mean = at::empty({s.c}, weight.options());
  at::Tensor invstd = at::empty({s.c}, weight.options());
  at::Tensor ws = workspace_for(s, z);
  FB_CUDA_CHECK(bn_act_train_forward(z.const_data_ptr(), weight.const_data_ptr(),
                                     bias.const_data_ptr(), y.mutable_data_ptr(),
                                     mean.mutable_data_ptr(), invstd.mutable_data_ptr(),
                                     ws.mutable_data_ptr(), s, eps, static_cast<int>(act),
                                     dtype_of(z), current_stream()));
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& z, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd, int64_t act,
    bool channels_last, std::array<bool, 3> mask) {
  constexpr const char* op = "bn_act_train_backward";
  check_cuda(z, act, op);
  bn_act::check_args(z, weight, bias, channels_last);
  bn_act::check_vector(mean, z, "mean");
  bn_act::check_vector(invstd, z, "invstd");
  TORCH_CHECK(grad_in.sizes() == z.sizes() && grad_in.scalar_type() == z.scalar_type() &&
                  grad_in.device() == z.device(),
              op, ": grad must have z's shape, dtype and device");
  TORCH_CHECK(z.size(0) * z.size(2) * z.size(3) > 0, op, ": z holds no value per channel");
  const c10::cuda::CUDAGuard guard(z.device());
  // an expanded or otherwise strided gradient is laid out once in z's format
  const at::Tensor grad = grad_in.contiguous(bn_act::mem_format(channels_last));
  const BnShape s = shape_of(z, channels_last);
  at::Tensor gz = mask[0] ? at::empty_like(z) : at::empty({0}, z.options());
  at::Tensor gw = at::empty({s.c}, weight.options());
  at::Tensor gb = at::empty({s.c}, weight.options());
  at::Tensor ws = workspace_for(s, z);
  FB_CUDA_CHECK(bn_act_train_backward(
      grad.const_data_ptr(), z.const_data_ptr(), weight.const_data_ptr(), bias.const_data_ptr(),
      mean.const_data_ptr(), invstd.const_data_ptr(), mask[0] ? gz.mutable_data_ptr() : nullptr,
      gw.mutable_data_ptr(), gb.mutable_data_ptr(), ws.mutable_data_ptr(), s,
      static_cast<int>(act), dtype_of(z), current_stream()));
  return {gz, gw, gb};
}

// y = act(y + bias) in place. y contiguous NCHW or NHWC runs in place; any other strides on
// one contiguous copy, written back.
at::Tensor& bias_act_cuda(at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act) {
  constexpr const char* op = "bias_act_";
  check_cuda(y, act, op);
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-d (N, C, H, W), got ", y.dim(), " dims");
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == y.size(1) &&
                    bias->scalar_type() == y.scalar_type() && bias->device() == y.device(),
                op, ": bias must be a (C,) vector of y's dtype on y's device");
  }
  const c10::cuda::CUDAGuard guard(y.device());
  if (y.numel() == 0) return y;
  const bool nchw = y.is_contiguous();
  const bool cl = !nchw && y.is_contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor work = nchw || cl ? y : y.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  FB_CUDA_CHECK(bias_act_forward(work.mutable_data_ptr(), b.defined() ? b.const_data_ptr() : nullptr,
                                 y.size(0), y.size(1), y.size(2) * y.size(3), cl,
                                 static_cast<int>(act), dtype_of(y), current_stream()));
  if (!nchw && !cl) y.copy_(work);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CUDA, m) {
  m.impl("bn_act_train_forward", &bn_act_train_forward_cuda);
  m.impl("bn_act_train_backward", &bn_act_train_backward_cuda);
  m.impl("bias_act_", &bias_act_cuda);
}

}  // namespace fastblocks::cuda
