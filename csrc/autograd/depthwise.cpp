// fastblocks_C::depthwise_train: the depthwise forward with its autograd in C++, for plain
// eager training on the cpu and cuda backends (fastblocks/ops/depthwise.py decides when).
//
// Why in C++: a Python autograd.Function around the kernels costs ~100 µs per forward +
// backward on the 2-core dev box (its Python bodies, the engine's calls back into Python),
// which outweighs the kernels of a batch-1 MobileNet layer (a 480x14x14 3x3 layer's forward,
// input-gradient and weight-gradient kernels take ~60 µs each there). This node costs what
// eager's ConvolutionBackward does.
//
// The policy is the one fastblocks/ops/depthwise.py documents for the registered op: relu and
// relu6 stay fused and their backward reads the output; hardswish, hardsigmoid and silu run as
// a separate activation pass over the saved pre-activation (as eager stores it) rather than
// recomputing it with a second convolution in backward. The kernels are reached through the
// dispatcher, so this file is device-independent: CPU and CUDA tensors use the kernels
// registered for their device.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include "fastblocks/common.h"

namespace fastblocks::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> kernel(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor forward_kernel(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& b, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation,
                          at::IntArrayRef out_size, int64_t act, bool cl) {
  static const auto op = kernel<at::Tensor(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
      at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, bool)>(
      "fastblocks_C::depthwise_forward");
  return op.call(x, w, b, stride, padding, dilation, out_size, act, cl);
}

at::Tensor activation_forward(const at::Tensor& x, int64_t act) {
  static const auto op =
      kernel<at::Tensor(const at::Tensor&, int64_t)>("fastblocks_C::activation_forward");
  return op.call(x, act);
}

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& x, int64_t act) {
  static const auto op = kernel<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>(
      "fastblocks_C::activation_backward");
  return op.call(grad, x, act);
}

at::Tensor backward_input(const at::Tensor& grad, const at::Tensor& w, at::IntArrayRef in_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool cl) {
  static const auto op = kernel<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                           bool)>("fastblocks_C::depthwise_backward_input");
  return op.call(grad, w, in_size, stride, padding, dilation, cl);
}

at::Tensor backward_weight(const at::Tensor& grad, const at::Tensor& x,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool cl) {
  static const auto op = kernel<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                           bool)>("fastblocks_C::depthwise_backward_weight");
  return op.call(grad, x, kernel_size, stride, padding, dilation, cl);
}

// Activations whose derivative the output gives exactly: y > 0 iff z > 0 and 0 < y < 6 iff
// 0 < z < 6, with ATen's kinks (threshold_backward, hardtanh_backward).
bool backward_reads_output(int64_t act) {
  return act == int64_t(Act::kNone) || act == int64_t(Act::kReLU) || act == int64_t(Act::kReLU6);
}

struct DepthwiseTrain : public torch::autograd::Function<DepthwiseTrain> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& b, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> dilation,
                            std::vector<int64_t> out_size, int64_t act, bool cl) {
    at::Tensor y, saved;
    if (backward_reads_output(act)) {
      y = forward_kernel(x, w, b, stride, padding, dilation, out_size, act, cl);
      saved = y;
    } else {
      saved = forward_kernel(x, w, b, stride, padding, dilation, out_size, 0, cl);
      y = activation_forward(saved, act);
    }
    ctx->save_for_backward({x, w, act == 0 ? at::Tensor() : saved});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["act"] = act;
    ctx->saved_data["cl"] = cl;
    ctx->saved_data["has_bias"] = b.has_value() && b->defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &act_input = saved[2];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t act = ctx->saved_data["act"].toInt();
    const bool cl = ctx->saved_data["cl"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();

    at::Tensor grad = grads[0].contiguous(cl ? at::MemoryFormat::ChannelsLast
                                             : at::MemoryFormat::Contiguous);
    if (act != 0) grad = activation_backward(grad, act_input, act);
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = backward_input(grad, w, {x.size(1), x.size(2), x.size(3)}, stride, padding, dilation,
                          cl);
    }
    if (ctx->needs_input_grad(1)) {
      gw = backward_weight(grad, x, {w.size(2), w.size(3)}, stride, padding, dilation, cl);
    }
    if (has_bias && ctx->needs_input_grad(2)) {
      const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      gb = grad.sum({0, 2, 3}, false, acc).to(grad.scalar_type());
    }
    variable_list result{gx, gw, gb};
    if (at::GradMode::is_enabled()) {
      // create_graph: these gradients have no derivative of their own. Make a second
      // backward through them raise, as Python's once_differentiable does, rather than
      // treat them as constants.
      torch::autograd::DelayedError error(
          "fastblocks depthwise_conv2d has no second derivative (double backward)", 3);
      result = error.apply(std::move(result));
    }
    // one entry per forward argument; the non-tensor ones get none
    result.resize(9);
    return result;
  }
};

at::Tensor depthwise_train(const at::Tensor& x, const at::Tensor& w,
                           const std::optional<at::Tensor>& b, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation,
                           at::IntArrayRef out_size, int64_t act, bool channels_last) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "depthwise_train: unknown activation code ", act);
  return DepthwiseTrain::apply(x, w, b, stride.vec(), padding.vec(), dilation.vec(),
                               out_size.vec(), act, channels_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CompositeImplicitAutograd, m) {
  m.impl("depthwise_train", &depthwise_train);
}

}  // namespace fastblocks::autograd
