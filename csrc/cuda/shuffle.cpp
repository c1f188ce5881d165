// Torch bindings of the shuffle CUDA launchers (csrc/cuda/shuffle.cu): check the contract of
// the fastblocks_C schemas (fastblocks/shuffle_args.h, shared with the CPU kernels), allocate
// the outputs in the requested memory format, launch on the current stream.
// Status: syntax-checked against PyTorch's headers; not yet built or run on a CUDA machine.
#include <torch/library.h>

#include <tuple>

#include "fastblocks/cuda_binding.h"
#include "fastblocks/shuffle_args.h"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

const void* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr() : nullptr;
}

at::Tensor channel_shuffle_forward_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b,
                                        const std::optional<at::Tensor>& bias, int64_t groups,
                                        int64_t act, bool channels_last) {
  TORCH_CHECK(a.is_cuda(), "channel_shuffle_forward: a must be a CUDA tensor");
  const ShuffleShape s = shuffle::forward_shape(a, b, bias, groups, act, channels_last);
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor y = at::empty({s.n, s.c, a.size(2), a.size(3)},
                           a.options().memory_format(shuffle::mem_format(channels_last)));
  if (y.numel() == 0) return y;
  FB_CUDA_CHECK(channel_shuffle_forward(a.const_data_ptr(), data_or_null(b), data_or_null(bias),
                                        y.mutable_data_ptr(), s, static_cast<int>(act),
                                        dtype_of(a), current_stream()));
  return y;
}

std::tuple<at::Tensor, at::Tensor> channel_shuffle_backward_cuda(
    const at::Tensor& grad, const std::optional<at::Tensor>& y, int64_t split, int64_t groups,
    int64_t act, bool channels_last) {
  TORCH_CHECK(grad.is_cuda(), "channel_shuffle_backward: grad must be a CUDA tensor");
  const ShuffleShape s = shuffle::backward_shape(grad, y, split, groups, act, channels_last);
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto options = grad.options().memory_format(shuffle::mem_format(channels_last));
  at::Tensor ga = at::empty({s.n, split, grad.size(2), grad.size(3)}, options);
  at::Tensor gb = at::empty({s.n, s.c - split, grad.size(2), grad.size(3)}, options);
  if (grad.numel() == 0) return {ga, gb};
  FB_CUDA_CHECK(channel_shuffle_backward(grad.const_data_ptr(), act ? data_or_null(y) : nullptr,
                                         ga.mutable_data_ptr(), gb.mutable_data_ptr(), s,
                                         static_cast<int>(act), dtype_of(grad), current_stream()));
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CUDA, m) {
  m.impl("channel_shuffle_forward", &channel_shuffle_forward_cuda);
  m.impl("channel_shuffle_backward", &channel_shuffle_backward_cuda);
}

}  // namespace fastblocks::cuda
