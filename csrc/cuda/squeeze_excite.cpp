// Torch bindings of the squeeze-and-excitation CUDA launchers (csrc/cuda/squeeze_excite.cu):
// check the contract shared with the CPU kernels (fastblocks/squeeze_excite_mlp.h), run the
// passes over x on the current stream and the MLP between them through cuBLAS (ATen).
// Status: syntax-checked against PyTorch's headers; not yet built or run on a CUDA machine.
#include <torch/library.h>

#include <tuple>

#include "fastblocks/cuda_binding.h"
#include "fastblocks/squeeze_excite_mlp.h"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

namespace se = fastblocks::squeeze_excite;

SeShape shape_of(const at::Tensor& x, bool channels_last, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got one on ", x.device());
  (void)dtype_of(x);  // throws on dtypes the kernels are not compiled for
  SeShape s{};
  s.n = x.size(0);
  s.c = x.size(1);
  s.hw = x.size(2) * x.size(3);
  s.channels_last = channels_last;
  TORCH_CHECK(!channels_last || s.n <= 65535, op, ": channels_last batches above 65535 are not supported");
  s.split = squeeze_excite_split(s.n, s.c, s.hw, channels_last);
  return s;
}

// sum over H, W of a (* b): (N, C) in the accumulation type, partial sums added in order.
at::Tensor sum_over_hw(const at::Tensor& a, const at::Tensor& b, const SeShape& s,
                       bool product) {
  at::Tensor partial = at::empty({s.split, s.n * s.c}, a.options().dtype(se::acc_type(a)));
  if (a.numel() == 0) return partial.sum(0).view({s.n, s.c});
  FB_CUDA_CHECK(squeeze_excite_reduce(a.const_data_ptr(), b.const_data_ptr(), partial.mutable_data_ptr(),
                                      s, product, dtype_of(a), current_stream()));
  return (s.split == 1 ? partial[0] : partial.sum(0)).view({s.n, s.c});
}

std::tuple<at::Tensor, at::Tensor> squeeze_excite_forward_cuda(
    const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
    const at::Tensor& w2, const std::optional<at::Tensor>& b2, int64_t act, int64_t gate,
    bool channels_last) {
  constexpr const char* op = "squeeze_excite_forward";
  se::check_args(op, x, w1, b1, w2, b2, act, gate, channels_last);
  const SeShape s = shape_of(x, channels_last, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor pooled = sum_over_hw(x, x, s, false) / s.hw;  // a division, as eager's mean
  at::Tensor y = at::empty_like(x, x.options().memory_format(se::mem_format(channels_last)));
  if (x.numel() == 0) return {y, pooled};
  const at::Tensor scale = se::mlp_forward(pooled, w1, b1, w2, b2, act, gate).s.contiguous();
  FB_CUDA_CHECK(squeeze_excite_scale(x.const_data_ptr(), scale.const_data_ptr(), nullptr,
                                     y.mutable_data_ptr(), s, dtype_of(x), current_stream()));
  return {y, pooled};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& pooled, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    int64_t act, int64_t gate, bool channels_last) {
  constexpr const char* op = "squeeze_excite_backward";
  se::check_args(op, x, w1, b1, w2, b2, act, gate, channels_last);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous(se::mem_format(channels_last)), op,
              ": grad must have x's shape and memory format, got ", grad.sizes());
  se::check_like(grad, x, op, "grad");
  TORCH_CHECK(pooled.sizes() == at::IntArrayRef({x.size(0), x.size(1)}) &&
                  pooled.scalar_type() == se::acc_type(x) && pooled.is_contiguous() &&
                  pooled.device() == x.device(),
              op, ": pooled must be the forward's contiguous (N, C) means in ", se::acc_type(x));
  const SeShape s = shape_of(x, channels_last, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gs = sum_over_hw(grad, x, s, true);
  const se::Mlp m = se::mlp_forward(pooled, w1, b1, w2, b2, act, gate);
  auto [gp, gw1, gb1, gw2, gb2] = se::mlp_backward(gs, pooled, m, w1, w2, act, gate);
  at::Tensor gx = at::empty_like(x, x.options().memory_format(se::mem_format(channels_last)));
  if (x.numel()) {
    const at::Tensor scale = m.s.contiguous();
    const at::Tensor add = (gp / s.hw).contiguous();  // a division, as eager's pool backward
    FB_CUDA_CHECK(squeeze_excite_scale(grad.const_data_ptr(), scale.const_data_ptr(),
                                       add.const_data_ptr(), gx.mutable_data_ptr(), s, dtype_of(x),
                                       current_stream()));
  }
  return {gx, gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CUDA, m) {
  m.impl("squeeze_excite_forward", &squeeze_excite_forward_cuda);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward_cuda);
}

}  // namespace fastblocks::cuda
