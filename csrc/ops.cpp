// Every schema of fastblocks._C, in one place. Kernels register per device in
// csrc/cpu/<family>.cpp (CPU) and csrc/cuda/<family>.cpp (CUDA). These ops are the raw kernels:
// autograd, fake kernels and argument checking live in fastblocks/ops/<family>.py, which calls
// them from the public `fastblocks::` ops. The exception is csrc/autograd/<family>.cpp: C++
// autograd nodes for plain eager training, where a Python one costs more than the kernels.
//
// Layout contract shared with the Triton launchers: 4-d inputs are read contiguous in the
// memory format named by `channels_last` (any other strides are copied once into it, never
// refused), and outputs are returned contiguous in that format. Elementwise ops run over a
// non-overlapping dense tensor in place (others are copied once) and return its strides.
#include <Python.h>
#include <torch/library.h>

namespace fastblocks::cpu {
int add_shuffle_methods(PyObject* module);  // csrc/cpu/shuffle_python.cpp
}

extern "C" {
// A plain extension module so `import fastblocks._C` loads this library and runs the
// registrations below; Python reaches the ops through torch.ops.fastblocks_C (and a few
// plain-eager fast entries through the module's own functions).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && fastblocks::cpu::add_shuffle_methods(module) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(fastblocks_C, m) {
  // activation family; `act` is a fastblocks::Act code (csrc/include/fastblocks/common.h)
  m.def("activation_forward(Tensor x, int act) -> Tensor");
  m.def("activation_backward(Tensor grad, Tensor x, int act) -> Tensor");

  // depthwise family: weight (C*m, 1, kh, kw); padding is the top/left offset and out_size
  // the output (H, W), so asymmetric "same" padding needs no extra argument. The forward
  // applies bias then `act`; the backward ops take the gradient w.r.t. the pre-activation.
  // in_size is the input's (C, H, W): grad and weight alone do not give C when m > 1.
  m.def(
      "depthwise_forward(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int[2] out_size, int act, bool channels_last) -> Tensor");
  m.def(
      "depthwise_backward_input(Tensor grad, Tensor weight, int[3] in_size, int[2] stride, "
      "int[2] padding, int[2] dilation, bool channels_last) -> Tensor");
  m.def(
      "depthwise_backward_weight(Tensor grad, Tensor x, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, bool channels_last) -> Tensor");
  // depthwise_forward with its autograd node in C++ (csrc/autograd/depthwise.cpp): the plain
  // eager training path of the cpu and cuda backends, whose backward runs the three ops above.
  m.def(
      "depthwise_train(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int[2] out_size, int act, bool channels_last) -> Tensor");

  // shuffle family: y[:, o] = act(cat(a, b)[:, src(o)] + bias[src(o)]) with ShuffleNet's
  // src(o) = (o % groups) * (C / groups) + o / groups; b and bias optional. The backward takes
  // the gradient of y (and y itself when act is relu/relu6, whose derivative it gives) and
  // returns the gradients of a (the first `split` channels) and b (the rest, maybe empty).
  m.def(
      "channel_shuffle_forward(Tensor a, Tensor? b, Tensor? bias, int groups, int act, "
      "bool channels_last) -> Tensor");
  m.def(
      "channel_shuffle_backward(Tensor grad, Tensor? y, int split, int groups, int act, "
      "bool channels_last) -> (Tensor, Tensor)");

  // squeeze_excite family: x (N, C, H, W) in the format `channels_last` names; w1 (C_r, C),
  // w2 (C, C_r); act a fastblocks::Act code for the MLP's activation, gate 0 sigmoid or 1
  // hardsigmoid. The forward also returns the (N, C) means in the accumulation type (float;
  // double for fp64), which the backward takes instead of a third pass over x.
  m.def(
      "squeeze_excite_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int act, "
      "int gate, bool channels_last) -> (Tensor, Tensor)");
  m.def(
      "squeeze_excite_backward(Tensor grad, Tensor x, Tensor pooled, Tensor w1, Tensor? b1, "
      "Tensor w2, Tensor? b2, int act, int gate, bool channels_last) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(fastblocks_C, m) {
  // conv_bn_act family, training: BatchNorm with batch statistics + activation around ATen's
  // convolution output z (NCHW or NHWC contiguous per `channels_last`). weight/bias/mean/
  // invstd are float32 (float64 for float64 z). The backward recomputes BN's output from z.
  m.def(
      "bn_act_train_forward(Tensor z, Tensor weight, Tensor bias, float eps, int act, "
      "bool channels_last) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_act_train_backward(Tensor grad, Tensor z, Tensor weight, Tensor bias, Tensor mean, "
      "Tensor invstd, int act, bool channels_last, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(fastblocks_C, m) {
  // conv_bn_act family, inference epilogue: y = act(y + bias[c]) in place over a convolution
  // output computed without its bias (ATen/cuDNN), NCHW or NHWC contiguous (other strides
  // are worked on a copy and written back). bias (C,) in y's dtype or None. CUDA only: on
  // CPU oneDNN fuses bias and activation into the convolution itself.
  m.def("bias_act_(Tensor(a!) y, Tensor? bias, int act) -> Tensor(a!)");
}

TORCH_LIBRARY_FRAGMENT(fastblocks_C, m) {
  // inverted_residual family (MobileNetV2's block, inference, BN folded): x (N, C_in, H, W)
  // float32, read as channels_last; y = w_project . act_dw(dw(act_e(w_expand . x + b_expand)) +
  // b_dw) + b_project (+ x when `residual`), returned channels_last. w_expand (C_h, C_in, 1, 1)
  // or None (expansion ratio 1), w_dw (C_h, 1, kh, kw), w_project (C_out, C_h, 1, 1); the
  // activations are fastblocks::Act codes. packed_expand / packed_project: pointwise_pack of
  // (w_expand, b_expand) / (w_project, b_project), or None to pack them in the call. CPU only
  // (csrc/cpu/inverted_residual.cpp).
  m.def(
      "inverted_residual_forward(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, "
      "Tensor? b_dw, Tensor w_project, Tensor? b_project, int[2] stride, int[2] padding, "
      "int[2] dilation, int expand_act, int dw_act, bool residual, Tensor? packed_expand=None, "
      "Tensor? packed_project=None) -> Tensor");
  // A 1x1 conv weight (N, K[, 1, 1]) float32 and its bias (N,) or None, packed for the fused
  // inverted residual's pointwise GEMM on this CPU: a 1-d tensor of roundup(N, 16) * (K + 1)
  // floats (csrc/include/fastblocks/pointwise_cpu_gemm.h).
  m.def("pointwise_pack(Tensor w, Tensor? b) -> Tensor");
}
