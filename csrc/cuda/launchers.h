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
// depthwise_backward_weight_workspace(s) bytes of scratch (float partial sums).
int64_t depthwise_backward_weight_workspace(const DepthwiseShape& s);
cudaError_t depthwise_backward_weight(const void* grad, const void* x, void* grad_w,
                                      void* workspace, const DepthwiseShape& s, DType dtype,
                                      cudaStream_t stream);

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

}  // namespace fastblocks::cuda
