// The geometry of one depthwise convolution, as the kernels of every device take it. Plain C++
// with no torch or CUDA header: nvcc compiles the CUDA launchers against it, and the ATen-side
// argument checks (depthwise_args.h) fill it.
#pragma once
#include <cstdint>

namespace fastblocks {

struct DepthwiseShape {
  int64_t n, c, h, w;     // input
  int64_t mult;           // channel multiplier: output channel oc reads input channel oc / mult
  int64_t oh, ow;         // output spatial size
  int64_t kh, kw;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;  // pad: the top/left offset
  bool channels_last;
  int64_t out_channels() const { return c * mult; }
};

}  // namespace fastblocks
