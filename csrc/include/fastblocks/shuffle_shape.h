// The geometry of one channel shuffle (of one tensor or of the concatenation of two), as the
// kernels of every device take it. Plain C++ with no torch or CUDA header: nvcc compiles the
// CUDA launchers against it, and the ATen-side checks (shuffle_args.h) fill it.
#pragma once
#include <cstdint>

namespace fastblocks {

struct ShuffleShape {
  int64_t n, c, hw;       // the shuffled tensor (N, C, H*W)
  int64_t split;          // channels [0, split) are the first tensor's, the rest the second's
  int64_t groups;         // output channel o reads channel (o % groups) * (c / groups) + o / groups
  // Element strides of the two split tensors (batch, channel, pixel): NCHW (sn, hw, 1) or NHWC
  // (hw * sp, 1, sp). In the forward they describe the inputs (possibly channel slices of
  // wider tensors), in the backward the two freshly allocated gradients.
  int64_t sn0, sc0, sp0, sn1, sc1, sp1;
  bool channels_last;
};

}  // namespace fastblocks
