// Torch bindings of the depthwise CUDA launchers (csrc/cuda/depthwise_*.cu): check the contract of
// the fastblocks_C schemas (csrc/ops.cpp; fastblocks/depthwise_args.h, shared with the CPU
// kernels), allocate the outputs in the requested memory format, launch on the current stream.
// Status: syntax-checked against PyTorch's headers; not yet built or run on a CUDA machine.
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "fastblocks/cuda_binding.h"
#include "fastblocks/depthwise_args.h"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

// The shared contract (fastblocks/depthwise_args.h) plus what only CUDA needs: a CUDA tensor
// of a dtype the kernels are compiled for.
void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
  (void)dtype_of(t);  // throws on dtypes the kernels are not compiled for
}

// The CUDA launchers index strides, paddings, dilated kernel spans and channels in int32 (and
// return cudaErrorInvalidValue past it, launchers.h: depthwise_fits_int32): say so clearly
// instead. Strides along one-output axes and dilations along one-tap axes are already reset to
// 1 (depthwise_args.h), so a 2^31 stride onto a 1x1 output runs.
void check_int32_geometry(const DepthwiseShape& s, const char* op) {
  TORCH_CHECK(depthwise_fits_int32(s), op,
              " (cuda): stride, padding, dilation x kernel size and channels must stay below "
              "2^31 for the CUDA kernels, got stride (", s.stride_h, ", ", s.stride_w,
              "), padding (", s.pad_h, ", ", s.pad_w, "), dilation (", s.dil_h, ", ", s.dil_w,
              "); the cpu and torch backends take any geometry");
}

// Layouts and geometry as on CPU (fastblocks/depthwise_args.h): tensors in any strides are
// brought once into the named memory format; unused strides/dilations are reset to 1.
at::Tensor depthwise_forward_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                  const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  at::IntArrayRef out_size, int64_t act, bool channels_last) {
  check_cuda(x_in, "depthwise_forward", "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = depthwise::in_format(x_in, "depthwise_forward", "x", channels_last);
  const at::Tensor weight = weight_in.contiguous();
  const std::optional<at::Tensor> bias = depthwise::contiguous_opt(bias_in);
  const DepthwiseShape s =
      depthwise::forward_shape(x, weight, bias, stride, padding, dilation, out_size, act, channels_last);
  check_int32_geometry(s, "depthwise_forward");
  const int64_t OC = s.out_channels();
  const void* bias_ptr = bias.has_value() ? bias->const_data_ptr() : nullptr;
  at::Tensor y = at::empty({s.n, OC, s.oh, s.ow}, x.options().memory_format(depthwise::mem_format(channels_last)));
  if (y.numel() == 0) return y;
  FB_CUDA_CHECK(depthwise_forward(x.const_data_ptr(), weight.const_data_ptr(), bias_ptr,
                                  y.mutable_data_ptr(), s, static_cast<int>(act), dtype_of(x),
                                  current_stream()));
  return y;
}

// in_size is the input's (C, H, W) (grad and weight alone cannot tell C from m); (H, W) is also
// accepted and means multiplier 1, as in the CPU binding.
at::Tensor depthwise_backward_input_cuda(const at::Tensor& grad_in, const at::Tensor& weight_in,
                                         at::IntArrayRef in_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                         bool channels_last) {
  check_cuda(grad_in, "depthwise_backward_input", "grad");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = depthwise::in_format(grad_in, "depthwise_backward_input", "grad", channels_last);
  const at::Tensor weight = weight_in.contiguous();
  const DepthwiseShape s = depthwise::backward_input_shape(grad, weight, in_size, stride, padding,
                                                           dilation, channels_last);
  check_int32_geometry(s, "depthwise_backward_input");
  at::Tensor gx =
      at::empty({s.n, s.c, s.h, s.w}, grad.options().memory_format(depthwise::mem_format(channels_last)));
  if (gx.numel() == 0) return gx;
  if (grad.numel() == 0) return gx.zero_();  // OH or OW is 0: no tap lands anywhere
  FB_CUDA_CHECK(depthwise_backward_input(grad.const_data_ptr(), weight.const_data_ptr(),
                                         gx.mutable_data_ptr(), s, dtype_of(grad),
                                         current_stream()));
  return gx;
}

at::Tensor depthwise_backward_weight_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                          at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          bool channels_last) {
  check_cuda(x_in, "depthwise_backward_weight", "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad = depthwise::in_format(grad_in, "depthwise_backward_weight", "grad", channels_last);
  const at::Tensor x = depthwise::in_format(x_in, "depthwise_backward_weight", "x", channels_last);
  const DepthwiseShape s = depthwise::backward_weight_shape(grad, x, kernel_size, stride, padding,
                                                            dilation, channels_last);
  check_int32_geometry(s, "depthwise_backward_weight");
  const int64_t OC = s.out_channels();
  at::Tensor gw = at::empty({OC, 1, s.kh, s.kw}, x.options());
  // Scratch for the deterministic two-pass reduction; 0 bytes when there is nothing to reduce
  // (the launcher then zero-fills gw on the stream).
  const int64_t ws_bytes = depthwise_backward_weight_workspace(s);
  at::Tensor ws = at::empty({std::max<int64_t>(ws_bytes, 1)}, x.options().dtype(at::kByte));
  FB_CUDA_CHECK(depthwise_backward_weight(grad.const_data_ptr(), x.const_data_ptr(),
                                          gw.mutable_data_ptr(), ws.mutable_data_ptr(), s,
                                          dtype_of(x), current_stream()));
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CUDA, m) {
  m.impl("depthwise_forward", &depthwise_forward_cuda);
  m.impl("depthwise_backward_input", &depthwise_backward_input_cuda);
  m.impl("depthwise_backward_weight", &depthwise_backward_weight_cuda);
}

}  // namespace fastblocks::cuda
