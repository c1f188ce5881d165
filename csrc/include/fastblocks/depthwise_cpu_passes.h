// The three passes of the depthwise CPU kernels as the ATen binding (csrc/cpu/depthwise.cpp)
// calls them, one file each: csrc/cpu/depthwise_forward.cpp, depthwise_backward_input.cpp,
// depthwise_backward_weight.cpp. The binding has checked the arguments
// (fastblocks/depthwise_args.h), allocated the output, and chosen the layout path; each entry
// point dispatches on the dtype (fp32, fp64, fp16, bf16) and writes every element of its output.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "fastblocks/depthwise_shape.h"

namespace fastblocks::cpu::dw {

// The geometry of fastblocks/depthwise_shape.h under the short names the kernels' index
// arithmetic reads best in: N images of C channels, multiplier M, H x W in, OH x OW out, KH x KW
// taps, stride (sh, sw), top/left padding (ph, pw), dilation (dh, dw).
struct Geom {
  int64_t N, C, M, H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  int64_t OC() const { return C * M; }
  int64_t taps() const { return KH * KW; }
};

inline Geom geom_of(const DepthwiseShape& s) {
  return Geom{s.n, s.c, s.mult, s.h, s.w, s.oh, s.ow, s.kh, s.kw,
              s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w};
}

// channels_last: x, y (grad, gx) channels_last-contiguous, M == 1, C at least one vector of the
// accumulation type (the binding's nhwc_native). NCHW: contiguous, any geometry. bias may be
// null; weight and bias contiguous; act an activation code (fastblocks/common.h).
void forward_channels_last(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                           const Geom& g, int act, at::Tensor& y);
void forward_nchw(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                  const Geom& g, int act, at::Tensor& y);

void backward_input_channels_last(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                                  at::Tensor& gx);
void backward_input_nchw(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                         at::Tensor& gx);

// gw: contiguous (OC, 1, KH, KW) in x's dtype.
void backward_weight_channels_last(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                                   at::Tensor& gw);
void backward_weight_nchw(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                          at::Tensor& gw);

}  // namespace fastblocks::cpu::dw
