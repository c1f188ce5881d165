// Depthwise kernels without scratch memory (csrc/cpu/depthwise_direct.cpp), for geometries
// where the fast CPU kernels' scratch would outgrow the tensors: huge strides, paddings or
// dilations (issue 12). CPU only.
#pragma once
#include <ATen/ATen.h>

#include "fastblocks/depthwise_shape.h"

namespace fastblocks::cpu::direct {

// Whether `s` goes to these kernels: the fast kernels hold zero-padded copies of the region
// one output plane reads, about ((OH-1)*sh + (KH-1)*dh + 1 + sh) x (likewise W) elements per
// plane (phase planes, rings of padded rows, gradient slots). Kept below 16x an input plane
// plus an output plane, plus 64K elements (always enough for real layers: that region is
// about the padded input), the scratch is bounded by the tensors whatever the geometry.
// FASTBLOCKS_CPU_DEPTHWISE_DIRECT=1 makes it true for every geometry (tests).
bool preferred(const DepthwiseShape& s);

// Sizes and geometry from fastblocks/depthwise_args.h (indices below 2^62). Tensors in any
// strides; y and gx are written through their own strides, gw is contiguous (OC, 1, KH, KW).
// Every sum runs over the taps that land inside the input only: time O(outputs x taps + inputs).
void forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
             const DepthwiseShape& s, int act, at::Tensor& y);
void backward_input(const at::Tensor& grad, const at::Tensor& weight, const DepthwiseShape& s,
                    at::Tensor& gx);
void backward_weight(const at::Tensor& grad, const at::Tensor& x, const DepthwiseShape& s,
                     at::Tensor& gw);

}  // namespace fastblocks::cpu::direct
