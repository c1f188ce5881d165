// The ABI between the CUDA kernels (*.cu, compiled by nvcc with CUDA headers only) and their
// torch bindings (*.cpp, built only where PyTorch has CUDA). Raw pointers, sizes, a dtype
// code and the stream to launch on; each launcher returns the launch's cudaError_t.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastblocks/common.h"
#include "fastblocks/depthwise_shape.h"
#include "fastblocks/shuffle_shape.h"

namespace fastblocks::cuda {

// y[i] = act(x[i]) for i < n.
cudaError_t activation_forward(const void* x, void* y, int64_t n, int act, DType dtype,
                               cudaStream_t stream);
// gx[i] = act'(x[i]) * g[i] for i < n; gx may alias g.
cudaError_t activation_backward(const void* g, const void* x, void* gx, int64_t n, int act,
                                DType dtype, cudaStream_t stream);

// Depthwise 2-d convolution. Tensors are contiguous NCHW, or NHWC when channels_last.
// Input (N, C, H, W), weight (C*mult, 1, KH, KW), output (N, C*mult, OH, OW); pad_* are the
// top/left offsets. bias may be null. Accumulation in float (double for fp64).

cudaError_t depthwise_forward(const void* x, const void* weight, const void* bias, void* y,
                              const DepthwiseShape& s, int act, DType dtype, cudaStream_t stream);
// grad_x from grad (the gradient w.r.t. the pre-activation output).
cudaError_t depthwise_backward_input(const void* grad, const void* weight, void* grad_x,
                                     const DepthwiseShape& s, DType dtype, cudaStream_t stream);
// grad_weight (C*mult, 1, KH, KW) in dtype; `workspace` holds at least
// depthwise_backward_weight_workspace(s) bytes of scratch (partial sums in float, double for
// fp64; the size is a function of the shape alone, so it can be allocated before the launch).
int64_t depthwise_backward_weight_workspace(const DepthwiseShape& s);
cudaError_t depthwise_backward_weight(const void* grad, const void* x, void* grad_w,
                                      void* workspace, const DepthwiseShape& s, DType dtype,
                                      cudaStream_t stream);
// The depthwise kernels index strides, paddings, dilated kernel spans and channels in int32:
// the launchers return cudaErrorInvalidValue past these limits, and the binding checks them
// first to say which argument is too large. Needs dil_h, dil_w >= 1.
inline bool depthwise_fits_int32(const DepthwiseShape& s) {
  constexpr int64_t lim = 2147483647;
  return s.stride_h <= lim && s.stride_w <= lim && s.pad_h >= -lim && s.pad_h <= lim &&
         s.pad_w >= -lim && s.pad_w <= lim && s.kh * s.kw <= lim && s.kh <= lim / s.dil_h &&
         s.kw <= lim / s.dil_w && s.c * s.mult <= lim;
}

// Channel shuffle of a (channels [0, s.split)) and b (the rest; null when s.split == s.c) into
// y (N, C, H, W) contiguous in the format: y[:, o] = act(cat[:, src(o)] + bias[src(o)]),
// src(o) = (o % groups) * (C / groups) + o / groups. bias may be null.
cudaError_t channel_shuffle_forward(const void* a, const void* b, const void* bias, void* y,
                                    const ShuffleShape& s, int act, DType dtype,
                                    cudaStream_t stream);
// The inverse: ga/gb (strides in s) from grad (N, C, H, W) contiguous in the format, times
// relu/relu6's derivative read from y (act 1/2; y null when act is 0).
cudaError_t channel_shuffle_backward(const void* grad, const void* y, void* ga, void* gb,
                                     const ShuffleShape& s, int act, DType dtype,
                                     cudaStream_t stream);

// Squeeze-and-excitation: the passes over x (csrc/cuda/squeeze_excite.cu); the MLP runs in
// the binding. x (and grad) are contiguous NCHW, or NHWC when channels_last.
struct SeShape {
  int64_t n, c, hw;    // x is (n, c, H, W) with H*W = hw
  int64_t split;       // reductions split H*W into this many ranges (squeeze_excite_split)
  bool channels_last;
};
// How many H*W ranges a reduction over this shape should use (enough blocks to fill the GPU).
int64_t squeeze_excite_split(int64_t n, int64_t c, int64_t hw, bool channels_last);
// out[k * n*c + i*c + j] = sum over range k of H*W of a[i, j] (* b[i, j] when product), in the
// accumulation type (float; double for fp64); out holds split * n * c elements.
cudaError_t squeeze_excite_reduce(const void* a, const void* b, void* out, const SeShape& s,
                                  bool product, DType dtype, cudaStream_t stream);
// out = a * scale[i, j] (+ add[i, j] unless add is null); scale and add are (n, c) in the
// accumulation type; out may alias a.
cudaError_t squeeze_excite_scale(const void* a, const void* scale, const void* add, void* out,
                                 const SeShape& s, DType dtype, cudaStream_t stream);

// conv_bn_act: BatchNorm with batch statistics + activation around a convolution output z
// (csrc/cuda/conv_bn_act.cu), and the inference epilogue. z (and grad, y, grad_z) are
// contiguous NCHW, or NHWC when channels_last; weight, bias, mean, invstd, grad_weight and
// grad_bias are (C,) in the accumulation type (float; double for fp64).
struct BnShape {
  int64_t n, c, hw;    // z is (n, c, H, W) with H*W = hw; n * hw > 0
  int64_t split;       // each channel's n * hw values are reduced in this many ranges (1..65535)
  bool channels_last;
};
// How many ranges a channel's reduction should use (enough blocks to fill the GPU).
int64_t bn_act_split(int64_t n, int64_t c, int64_t hw, bool channels_last);
// Scratch bytes the two training launchers need (partial sums and per-channel coefficients).
int64_t bn_act_workspace_bytes(const BnShape& s, DType dtype);
// y = act(BN(z)) with the batch's mean and biased variance: writes y, mean and
// invstd = 1 / sqrt(var + eps).
cudaError_t bn_act_train_forward(const void* z, const void* weight, const void* bias, void* y,
                                 void* mean, void* invstd, void* workspace, const BnShape& s,
                                 double eps, int act, DType dtype, cudaStream_t stream);
// The backward of bn_act_train_forward from the forward's mean and invstd, BN's output
// recomputed from z; grad is w.r.t. y. grad_z may be null (then only the (C,) gradients).
cudaError_t bn_act_train_backward(const void* grad, const void* z, const void* weight,
                                  const void* bias, const void* mean, const void* invstd,
                                  void* grad_z, void* grad_weight, void* grad_bias,
                                  void* workspace, const BnShape& s, int act, DType dtype,
                                  cudaStream_t stream);
// In place: y = act(y + bias[c]) over y (n, c, H, W), H*W = hw; bias (c,) in dtype, or null.
cudaError_t bias_act_forward(void* y, const void* bias, int64_t n, int64_t c, int64_t hw,
                             bool channels_last, int act, DType dtype, cudaStream_t stream);

}  // namespace fastblocks::cuda
