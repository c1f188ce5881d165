// The argument contract of the fastblocks_C depthwise ops (schemas in csrc/ops.cpp), checked
// once for every device: the CPU kernels (csrc/cpu/depthwise.cpp) and the CUDA bindings
// (csrc/cuda/depthwise.cpp) call these and get the geometry back. Device checks (a CUDA
// tensor, a dtype the kernels are built for) stay with each device. Messages name the op and
// the argument.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>

#include "fastblocks/common.h"
#include "fastblocks/depthwise_shape.h"

namespace fastblocks::depthwise {

inline at::MemoryFormat mem_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline std::pair<int64_t, int64_t> pair_arg(at::IntArrayRef v, const char* op, const char* name) {
  TORCH_CHECK(v.size() == 2, op, ": ", name, " must have 2 elements, got ", v.size());
  return {v[0], v[1]};
}

inline void set_conv_args(DepthwiseShape& s, const char* op, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation) {
  std::tie(s.stride_h, s.stride_w) = pair_arg(stride, op, "stride");
  std::tie(s.pad_h, s.pad_w) = pair_arg(padding, op, "padding");
  std::tie(s.dil_h, s.dil_w) = pair_arg(dilation, op, "dilation");
  TORCH_CHECK(s.stride_h >= 1 && s.stride_w >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(s.pad_h >= 0 && s.pad_w >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(s.dil_h >= 1 && s.dil_w >= 1, op, ": dilation must be >= 1, got ", dilation);
}

// 4-d and contiguous in the memory format `channels_last` names.
inline void check_layout(const at::Tensor& t, const char* op, const char* name, bool channels_last) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-d (N, C, H, W), got ", t.dim(), "-d");
  TORCH_CHECK(t.is_contiguous(mem_format(channels_last)), op, ": ", name, " must be contiguous",
              channels_last ? " in channels_last" : " (NCHW)", " memory format since channels_last=",
              channels_last ? "True" : "False");
}

// What every entry point does first with its 4-d tensors (x, grad): t itself when contiguous
// in the memory format `channels_last` names (is_contiguous already ignores the strides of
// size-1 dimensions and of empty tensors), else one copy into it: an expanded gradient, or a
// layout the caller did not normalise. Never a rejection (issue 12).
inline at::Tensor in_format(const at::Tensor& t, const char* op, const char* name, bool channels_last) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-d (N, C, H, W), got ", t.dim(), "-d");
  return t.contiguous(mem_format(channels_last));
}

// weight and bias, read as plain arrays: contiguous (an expanded bias is copied once).
inline std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->contiguous();
}

// Every index a kernel forms, out * stride - pad + tap * dilation, stays inside int64 when each
// term is below 2^62 (PyTorch's own convolutions cap padding there too). Past that: an error,
// never a wrapped index.
inline void check_index_range(const DepthwiseShape& s, const char* op) {
  constexpr int64_t lim = int64_t(1) << 62;
  const auto below = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    return !__builtin_mul_overflow(a, b, &r) && r < lim;
  };
  TORCH_CHECK(s.pad_h < lim && s.pad_w < lim, op, ": padding must be below 2^62, got (", s.pad_h,
              ", ", s.pad_w, ")");
  TORCH_CHECK(below(s.kh - 1, s.dil_h) && below(s.kw - 1, s.dil_w), op,
              ": dilation x (kernel size - 1) must be below 2^62, got dilation (", s.dil_h, ", ",
              s.dil_w, ")");
  TORCH_CHECK(below(std::max<int64_t>(s.oh - 1, 0), s.stride_h) &&
                  below(std::max<int64_t>(s.ow - 1, 0), s.stride_w) && s.h < lim && s.w < lim,
              op, ": stride x (output size - 1) must be below 2^62, got stride (", s.stride_h,
              ", ", s.stride_w, ")");
}

// The same convolution with the arguments that cannot matter reset: a stride along an axis
// with one output, a dilation along an axis with one tap. (A stride of 2^31 for a 1x1 output
// then costs nothing anywhere, and the CUDA kernels' int32 checks see 1.)
inline void drop_unused_geometry(DepthwiseShape& s) {
  if (s.oh <= 1) s.stride_h = 1;
  if (s.ow <= 1) s.stride_w = 1;
  if (s.kh == 1) s.dil_h = 1;
  if (s.kw == 1) s.dil_w = 1;
}

inline void finish_geometry(DepthwiseShape& s, const char* op) {
  drop_unused_geometry(s);
  check_index_range(s, op);
}

// Same device and dtype as `ref`.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " differs from the ", ref_name, " dtype ", ref.scalar_type());
}

// (OC, 1, KH, KW), contiguous, like `ref`; sets the kernel size.
inline void check_weight(DepthwiseShape& s, const at::Tensor& w, const char* op, const at::Tensor& ref,
                         const char* ref_name) {
  const int64_t OC = s.out_channels();
  TORCH_CHECK(w.dim() == 4 && w.size(1) == 1 && w.size(0) == OC, op,
              ": weight must have shape (", OC, ", 1, KH, KW), got ", w.sizes());
  TORCH_CHECK(w.size(2) >= 1 && w.size(3) >= 1, op, ": kernel size must be >= 1, got ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), op, ": weight must be contiguous");
  check_like(w, ref, op, "weight", ref_name);
  s.kh = w.size(2);
  s.kw = w.size(3);
}

// The output side of the backward ops, from grad: its channels (a multiple of the s.c input
// channels: the multiplier) and spatial size.
inline void set_from_grad(DepthwiseShape& s, const at::Tensor& grad, const char* op) {
  const int64_t OC = grad.size(1);
  TORCH_CHECK(s.c >= 1 && OC >= s.c && OC % s.c == 0, op, ": grad has ", OC,
              " channels, not a multiple of the ", s.c, " input channels");
  s.mult = OC / s.c;
  s.oh = grad.size(2);
  s.ow = grad.size(3);
}

inline DepthwiseShape forward_shape(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    at::IntArrayRef out_size, int64_t act, bool channels_last) {
  constexpr const char* op = "depthwise_forward";
  TORCH_CHECK(act >= 0 && act < kNumActs, op, ": unknown activation code ", act);
  check_layout(x, op, "x", channels_last);
  DepthwiseShape s{};
  s.n = x.size(0);
  s.c = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  s.channels_last = channels_last;
  TORCH_CHECK(s.c >= 1, op, ": x must have at least one channel");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) >= s.c && weight.size(0) % s.c == 0, op,
              ": weight must have shape (C*m, 1, KH, KW) with C = ", s.c, ", got ", weight.sizes());
  s.mult = weight.size(0) / s.c;
  check_weight(s, weight, op, x, "input");
  set_conv_args(s, op, stride, padding, dilation);
  std::tie(s.oh, s.ow) = pair_arg(out_size, op, "out_size");
  TORCH_CHECK(s.oh >= 0 && s.ow >= 0, op, ": out_size must be >= 0, got ", out_size);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.out_channels(), op,
                ": bias must have shape (", s.out_channels(), ",), got ", bias->sizes());
    TORCH_CHECK(bias->is_contiguous(), op, ": bias must be contiguous");
    check_like(*bias, x, op, "bias", "input");
  }
  finish_geometry(s, op);
  return s;
}

// in_size is the input's (C, H, W): grad and weight alone cannot tell C from the multiplier.
// (H, W) is also accepted and means multiplier 1.
inline DepthwiseShape backward_input_shape(const at::Tensor& grad, const at::Tensor& weight,
                                           at::IntArrayRef in_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           bool channels_last) {
  constexpr const char* op = "depthwise_backward_input";
  check_layout(grad, op, "grad", channels_last);
  DepthwiseShape s{};
  s.n = grad.size(0);
  s.channels_last = channels_last;
  TORCH_CHECK(in_size.size() == 2 || in_size.size() == 3, op,
              ": in_size must be (H, W) or (C, H, W), got ", in_size);
  s.c = in_size.size() == 3 ? in_size[0] : grad.size(1);
  s.h = in_size[in_size.size() - 2];
  s.w = in_size[in_size.size() - 1];
  TORCH_CHECK(s.h >= 0 && s.w >= 0, op, ": in_size must be >= 0, got ", in_size);
  set_from_grad(s, grad, op);
  check_weight(s, weight, op, grad, "grad");
  set_conv_args(s, op, stride, padding, dilation);
  finish_geometry(s, op);
  return s;
}

inline DepthwiseShape backward_weight_shape(const at::Tensor& grad, const at::Tensor& x,
                                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            bool channels_last) {
  constexpr const char* op = "depthwise_backward_weight";
  check_layout(grad, op, "grad", channels_last);
  check_layout(x, op, "x", channels_last);
  check_like(grad, x, op, "grad", "x");
  DepthwiseShape s{};
  s.n = x.size(0);
  s.c = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  s.channels_last = channels_last;
  TORCH_CHECK(grad.size(0) == s.n, op, ": grad batch ", grad.size(0), " differs from x batch ", s.n);
  set_from_grad(s, grad, op);
  std::tie(s.kh, s.kw) = pair_arg(kernel_size, op, "kernel_size");
  TORCH_CHECK(s.kh >= 1 && s.kw >= 1, op, ": kernel_size must be >= 1, got ", kernel_size);
  set_conv_args(s, op, stride, padding, dilation);
  finish_geometry(s, op);
  return s;
}

}  // namespace fastblocks::depthwise
