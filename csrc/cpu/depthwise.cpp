// CPU kernels of the depthwise family: F.conv2d(x, weight, bias, stride, padding, dilation,
// groups=C) followed by an activation, its input gradient and its weight gradient, for NCHW and
// channels_last, any kernel size, stride, dilation, top/left padding and channel multiplier.
//
// NCHW: each (n, c) plane is copied (and converted to the accumulation type) into a zero-padded
// scratch split into stride phases, P[row % sh][col % sw][row / sh][col / sw]. There every
// kernel tap reads a contiguous run at a fixed offset, so a whole output plane is one 1-d sum,
// out[f] = sum_t w_t * P[base_t + f], f running over output rows of the scratch width (the few
// columns past OW are computed and dropped): no branch, no border case, 8 vectors in registers.
// Planes of one channel for several images share a call where the gaps between them are small.
// The input gradient is the same sum per residue class (ih % sh, iw % sw) over zero-padded
// gradient planes; the weight gradient is a dot product per tap of the gradient plane (zero in
// the dropped columns) with the same runs.
// NCHW planes of up to 1024 pixels (m == 1, C >= one vector) skip the phase split: a task takes
// one image's block of L channels (L = vector lanes), transposes it into pixel vectors (16x16
// register transposes with AVX-512), runs the channels_last row kernels below and transposes the
// result back, as oneDNN does with its 16-channel blocked layout; the input and weight gradients
// likewise. For 32x960x7x7 3x3, eager time / ours went from 0.8x (0.42x in a full bench run) to
// 1.2-1.9x for the forward, 0.8-0.9x to 1.2-1.5x for the input gradient and 0.4-0.7x to
// 1.1-1.9x for the weight gradient (2-thread AMD EPYC dev box, interleaved with eager in one
// process, several processes; eager's speed varies from process to process).
// channels_last: vectors run over channels. Each task (image, channel chunk, band of rows)
// keeps zero-padded copies of the source rows it reads in a small ring, so no output pixel is
// a border case (fp32/fp64 forwards with sliding rows read the input in place instead, border
// pixels through a row of zeros). Inputs and outputs that outgrow the cache are prefetched a
// row ahead, a few lines per register block, and fp32/fp64 outputs are written past the cache
// (non-temporal stores). Rows whose column taps are consecutive source pixels use sliding blocks (up to
// 8 pixels x one vector, every source vector loaded once and multiplied by all the kernel
// columns it meets, in registers): forward rows of 3/5/7-wide kernels at stride 1 or 2, and the
// input gradient's residue classes of 2-5 or 7 taps; other rows take 4 pixels x 4 vectors.
// (Sliding the stride-2 rows took 32x240x28x28 5x5 and 32x672x14x14 5x5 stride-2 channels_last
// forwards from 1.01x to 1.14-1.19x eager's speed, in-process on the 2-thread dev box.)
// The weight gradient walks whole rows over all channels, in a fixed number of row chunks;
// dilation-1 kernel rows 3, 5 or 7 wide at stride 1 or 2 keep a block of gradient vectors in
// registers and load each source vector once for all its taps (3x3: the three kernel rows
// together, 9 independent sums). Multiplier m > 1, and C below one vector, go through the NCHW
// kernels and a layout copy (rare in real networks).
//
// Vectors are GCC vector extensions compiled three times (AVX-512, AVX2+FMA, SSE2) in
// `#pragma GCC target` regions (one translation unit each) and picked once at run time, so the binary runs on any x86-64;
// FASTBLOCKS_CPU_ISA=avx2|sse2 forces a narrower one (tests use it to cover all three).
// fp16/bf16 accumulate in float, fp32 in float, fp64 in double; in channels_last the forward
// and input gradient widen fp16/bf16 rows as they copy them into the ring and narrow each output
// row once, in vector registers (the weight gradient still works on float copies of grad and
// x); NCHW widens each plane or channel block and narrows each output plane (widen_n/narrow_n). Weight-gradient
// sums run 16-64 products per lane in the accumulation type, then add up in double; every
// output element is produced by one task in a fixed order, so results do not depend on the
// number of threads or on which thread ran a task.
// With inf/NaN in x, the phase-split NCHW weight-gradient kernel (m > 1 or C < one vector, in
// either layout) multiplies the zero columns of its padded gradient planes by x, which makes
// NaN of taps that eager keeps finite; a channel whose sums come out non-finite is therefore
// summed again directly over its valid pixels (weight_grad_channel_direct).
// Geometries whose scratch above would outgrow the tensors (huge strides, paddings, dilations)
// take the scratch-free kernels of depthwise_direct.cpp instead (direct::preferred).
// Inputs in any strides are first brought once into the layout `channels_last` names
// (depthwise_args.h: in_format), so expanded or size-1-strided gradients are never refused.
//
// Where each part lives (headers under csrc/include/fastblocks/):
//   depthwise.cpp (this file)        the ATen ops: argument checks (depthwise_args.h, shared with
//                                    CUDA), output allocation, the choice of path, registration
//   depthwise_forward.cpp            the forward's three paths     } entry points:
//   depthwise_backward_input.cpp     the input gradient's three    } depthwise_cpu_passes.h
//   depthwise_backward_weight.cpp    the weight gradient's three   }
//   depthwise_isa.cpp                ISA detection, kernels<T>()
//   depthwise_isa_{avx512,avx2,sse2}.cpp  the vector kernels compiled per ISA
//                                    (depthwise_cpu_isa_table.h)
//   depthwise_cpu_simd.h             vector types, lane shuffles, the activation epilogue
//   depthwise_cpu_kernels.h          the kernels' argument structs and the Kernels<T> table
//   depthwise_cpu_{nchw,row,wgrad}_kernels.h  the kernel bodies (NCHW, channels_last rows,
//                                    channels_last weight gradient)
//   depthwise_cpu_host.h             thread split, aligned scratch, dtype conversions
//   depthwise_cpu_phase_plan.h       the NCHW phase-split scratch layout
//   depthwise_cpu_row_ring.h         channels_last tasks, ring of padded rows, prefetch, streaming
//   depthwise_cpu_channel_blocks.h   small NCHW planes as blocks of L channels
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "fastblocks/depthwise_args.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_passes.h"
#include "fastblocks/depthwise_direct.h"

namespace fastblocks::cpu {
namespace {

using depthwise::mem_format;

// channels_last runs natively for m == 1 and at least one vector of channels; other shapes go
// through the NCHW kernels and a layout copy.
bool nhwc_native(const dw::Geom& g, at::ScalarType dtype) {
  const int64_t lanes = dtype == at::kDouble ? dw::kernels<double>().lanes : dw::kernels<float>().lanes;
  return g.M == 1 && g.C >= lanes;
}

at::Tensor depthwise_forward(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             at::IntArrayRef out_size, int64_t act, bool channels_last) {
  constexpr const char* op = "depthwise_forward";
  const at::Tensor x = depthwise::in_format(x_in, op, "x", channels_last);
  const at::Tensor weight = weight_in.contiguous();
  const std::optional<at::Tensor> bias = depthwise::contiguous_opt(bias_in);
  const DepthwiseShape shape = depthwise::forward_shape(x, weight, bias, stride, padding, dilation,
                                                        out_size, act, channels_last);
  const dw::Geom g = dw::geom_of(shape);
  const at::Tensor* b = bias.has_value() ? &*bias : nullptr;
  at::Tensor y = at::empty({g.N, g.OC(), g.OH, g.OW}, x.options().memory_format(mem_format(channels_last)));
  if (y.numel() == 0) return y;
  const int a = static_cast<int>(act);
  if (direct::preferred(shape)) {
    direct::forward(x, weight, b, shape, a, y);
    return y;
  }
  if (channels_last && nhwc_native(g, x.scalar_type())) {
    dw::forward_channels_last(x, weight, b, g, a, y);
    return y;
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor yc = channels_last ? at::empty({g.N, g.OC(), g.OH, g.OW}, x.options()) : y;
  dw::forward_nchw(xc, weight, b, g, a, yc);
  if (!yc.is_same(y)) y.copy_(yc);
  return y;
}

// in_size is (H, W), meaning multiplier 1 (C = grad channels), or (C, H, W): grad and weight alone
// cannot tell C from m.
at::Tensor depthwise_backward_input(const at::Tensor& grad_in, const at::Tensor& weight_in,
                                    at::IntArrayRef in_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                    bool channels_last) {
  constexpr const char* op = "depthwise_backward_input";
  const at::Tensor grad = depthwise::in_format(grad_in, op, "grad", channels_last);
  const at::Tensor weight = weight_in.contiguous();
  const DepthwiseShape shape = depthwise::backward_input_shape(grad, weight, in_size, stride, padding,
                                                               dilation, channels_last);
  const dw::Geom g = dw::geom_of(shape);
  at::Tensor gx = at::empty({g.N, g.C, g.H, g.W}, grad.options().memory_format(mem_format(channels_last)));
  if (gx.numel() == 0) return gx;
  if (g.OH == 0 || g.OW == 0) return gx.zero_();
  if (direct::preferred(shape)) {
    direct::backward_input(grad, weight, shape, gx);
    return gx;
  }
  if (channels_last && nhwc_native(g, grad.scalar_type())) {
    dw::backward_input_channels_last(grad, weight, g, gx);
    return gx;
  }
  const at::Tensor gc = grad.contiguous();
  at::Tensor gxc = channels_last ? at::empty({g.N, g.C, g.H, g.W}, grad.options()) : gx;
  dw::backward_input_nchw(gc, weight, g, gxc);
  if (!gxc.is_same(gx)) gx.copy_(gxc);
  return gx;
}

at::Tensor depthwise_backward_weight(const at::Tensor& grad_in, const at::Tensor& x_in,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     bool channels_last) {
  constexpr const char* op = "depthwise_backward_weight";
  const at::Tensor grad = depthwise::in_format(grad_in, op, "grad", channels_last);
  const at::Tensor x = depthwise::in_format(x_in, op, "x", channels_last);
  const DepthwiseShape shape = depthwise::backward_weight_shape(grad, x, kernel_size, stride, padding,
                                                                dilation, channels_last);
  const dw::Geom g = dw::geom_of(shape);
  const int64_t OC = g.OC();
  at::Tensor gw = at::zeros({OC, 1, g.KH, g.KW}, x.options());
  if (g.N == 0 || g.OH == 0 || g.OW == 0 || g.H == 0 || g.W == 0) return gw;
  if (direct::preferred(shape)) {
    direct::backward_weight(grad, x, shape, gw);
    return gw;
  }
  if (channels_last && nhwc_native(g, x.scalar_type())) {
    dw::backward_weight_channels_last(grad, x, g, gw);
    return gw;
  }
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
  dw::backward_weight_nchw(gc, xc, g, gw);
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("depthwise_forward", &depthwise_forward);
  m.impl("depthwise_backward_input", &depthwise_backward_input);
  m.impl("depthwise_backward_weight", &depthwise_backward_weight);
}

}  // namespace fastblocks::cpu
