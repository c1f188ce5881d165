// ATen-side argument checks of the shuffle family's kernels (csrc/ops.cpp schemas), shared by
// the CPU kernels and the CUDA bindings: what layouts are read in place, and the ShuffleShape
// the kernels take. fastblocks/ops/shuffle.py (_reads_in_place) mirrors outer_stride.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "fastblocks/common.h"
#include "fastblocks/shuffle_shape.h"

namespace fastblocks::shuffle {

inline at::MemoryFormat mem_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The batch stride (NCHW) or pixel stride (NHWC) of an input the kernels read in place: a
// tensor contiguous in the format, or a channel slice of one (strides of size-1 dims are
// free, as in PyTorch's contiguity rules).
// Whether the kernels read 4-d `t` in place; its outer stride in `outer` if so.
inline bool reads_in_place(const at::Tensor& t, bool channels_last, int64_t* outer_out = nullptr) {
  const int64_t n = t.size(0), c = t.size(1), h = t.size(2), w = t.size(3);
  bool ok;
  int64_t outer;
  if (t.numel() == 0) {  // never read; any strides do
    ok = true, outer = channels_last ? c : c * h * w;
  } else if (!channels_last) {
    outer = n > 1 ? t.stride(0) : c * h * w;
    ok = (w <= 1 || t.stride(3) == 1) && (h <= 1 || t.stride(2) == w) &&
         (c <= 1 || t.stride(1) == h * w) && outer >= c * h * w;
  } else {
    outer = w > 1 ? t.stride(3) : h > 1 ? t.stride(2) : n > 1 ? t.stride(0) : c;
    ok = (c <= 1 || t.stride(1) == 1) && (w <= 1 || t.stride(3) == outer) &&
         (h <= 1 || t.stride(2) == w * outer) && (n <= 1 || t.stride(0) == h * w * outer) &&
         outer >= c;
  }
  if (outer_out != nullptr) *outer_out = outer;
  return ok;
}

inline int64_t outer_stride(const at::Tensor& t, bool channels_last, const char* what) {
  TORCH_CHECK(t.dim() == 4, "channel_shuffle: ", what, " must be 4-d");
  int64_t outer;
  const bool ok = reads_in_place(t, channels_last, &outer);
  TORCH_CHECK(ok, "channel_shuffle: ", what, " must be ", channels_last ? "channels_last" : "NCHW",
              "-contiguous or a channel slice of such a tensor");
  return outer;
}

// (batch, channel, pixel) element strides from an outer stride
inline void strides_of(int64_t outer, int64_t hw, bool channels_last, int64_t& sn, int64_t& sc,
                       int64_t& sp) {
  if (channels_last) {
    sn = hw * outer, sc = 1, sp = outer;
  } else {
    sn = outer, sc = hw, sp = 1;
  }
}

// Checks the forward's arguments; the shape of the shuffled output.
inline ShuffleShape forward_shape(const at::Tensor& a, const std::optional<at::Tensor>& b,
                                  const std::optional<at::Tensor>& bias, int64_t groups,
                                  int64_t act, bool channels_last) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
  ShuffleShape s{};
  s.channels_last = channels_last;
  s.n = a.size(0);
  s.hw = a.dim() == 4 ? a.size(2) * a.size(3) : 0;
  s.split = a.dim() == 4 ? a.size(1) : 0;
  strides_of(outer_stride(a, channels_last, "a"), s.hw, channels_last, s.sn0, s.sc0, s.sp0);
  int64_t cb = 0;
  if (b.has_value() && b->defined()) {
    const int64_t outer_b = outer_stride(*b, channels_last, "b");
    TORCH_CHECK(b->size(0) == a.size(0) && b->size(2) == a.size(2) && b->size(3) == a.size(3) &&
                    b->scalar_type() == a.scalar_type() && b->device() == a.device(),
                "channel_shuffle: a and b must share batch, height, width, dtype and device");
    cb = b->size(1);
    strides_of(outer_b, s.hw, channels_last, s.sn1, s.sc1, s.sp1);
  }
  s.c = s.split + cb;
  TORCH_CHECK(groups > 0 && s.c % groups == 0, "channel_shuffle: groups must divide the channels");
  s.groups = groups;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.c && bias->is_contiguous() &&
                    bias->scalar_type() == a.scalar_type() && bias->device() == a.device(),
                "channel_shuffle: bias must be contiguous (C,) of the input's dtype and device");
  }
  return s;
}

// Checks the backward's arguments (grad and y contiguous in the format); the shape of the
// gradient, with the two outputs' strides filled in.
inline ShuffleShape backward_shape(const at::Tensor& grad, const std::optional<at::Tensor>& y,
                                   int64_t split, int64_t groups, int64_t act,
                                   bool channels_last) {
  TORCH_CHECK(act == int(Act::kNone) || act == int(Act::kReLU) || act == int(Act::kReLU6),
              "channel_shuffle_backward: act must be none, relu or relu6 (read from the output)");
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous(mem_format(channels_last)),
              "channel_shuffle_backward: grad must be 4-d and contiguous in the format");
  ShuffleShape s{};
  s.channels_last = channels_last;
  s.n = grad.size(0), s.c = grad.size(1), s.hw = grad.size(2) * grad.size(3);
  TORCH_CHECK(groups > 0 && s.c % groups == 0, "channel_shuffle: groups must divide the channels");
  TORCH_CHECK(split >= 0 && split <= s.c, "channel_shuffle_backward: split out of range");
  s.groups = groups, s.split = split;
  if (act != 0) {
    TORCH_CHECK(y.has_value() && y->defined() && y->sizes() == grad.sizes() &&
                    y->strides() == grad.strides() && y->scalar_type() == grad.scalar_type() &&
                    y->device() == grad.device(),
                "channel_shuffle_backward: y must match grad (needed for act)");
  }
  strides_of(channels_last ? split : split * s.hw, s.hw, channels_last, s.sn0, s.sc0, s.sp0);
  strides_of(channels_last ? s.c - split : (s.c - split) * s.hw, s.hw, channels_last, s.sn1,
             s.sc1, s.sp1);
  return s;
}

}  // namespace fastblocks::shuffle
