// fastblocks._C.shuffle_eager(a, b, groups, act, own): act(channel_shuffle(cat(a, b), groups)),
// act none, relu or relu6 (channel_shuffle, concat_shuffle, grouped_conv2d's epilogue), for plain
// eager code on CPU tensors, inference and training, called straight from Python (no
// torch.ops call, no Python tensor checks, a C++ autograd node). Returns None whenever
// anything but that case applies; the caller then takes its general path
// (fastblocks/ops/shuffle.py), which raises the errors.
//
// Why: a batch-1 ShuffleNet shuffle is a 50-400 KB memcpy taking 2-12 us, and ATen's
// channel_shuffle costs ~1.5 us more per call. Reaching our kernel through torch.ops costs
// ~3 us, checking the arguments in Python another 1-2 us, and a Python autograd.Function
// 15-30 us per forward + backward (2-core AMD EPYC VM, torch 2.13, 1 thread): under the auto
// backend fastblocks.ops.channel_shuffle ran at 0.81-0.94x eager on every batch-1 NCHW tensor
// of bench/ (shufflenet set) although it called ATen itself there, concat_shuffle at
// 0.62-0.96x on batch-1 maps, and training through our kernels at 0.66-0.91x. This entry
// costs what ATen's own call does, so the kernels' time decides.
//
// "Plain eager" as fastblocks/ops/_fastpath.py defines it, checked here in C++: exact
// torch.Tensor inputs (no subclass such as FakeTensor), dense CPU tensors with no functorch,
// functionalization, Python, conjugate or negative bit keys, no torch-function or dispatch
// mode, no torch.jit.trace recording. The caller checks it is not being traced by Dynamo
// (which cannot trace a C function) and that the auto or cpu backend is selected.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <torch/autograd.h>

#include <optional>
#include <tuple>

#include "fastblocks/common.h"
#include "fastblocks/shuffle_args.h"

namespace fastblocks::cpu {

// csrc/cpu/shuffle.cpp
at::Tensor channel_shuffle_forward(const at::Tensor& a, const std::optional<at::Tensor>& b,
                                   const std::optional<at::Tensor>& bias, int64_t groups,
                                   int64_t act, bool channels_last);
std::tuple<at::Tensor, at::Tensor> channel_shuffle_backward(const at::Tensor& grad,
                                                            const std::optional<at::Tensor>& y,
                                                            int64_t split, int64_t groups,
                                                            int64_t act, bool channels_last);

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// act(channel_shuffle(cat(a, b), groups)) with its backward (act' read from the saved output,
// then the inverse shuffle, split back) in C++; without b, channel_shuffle of a alone.
struct ShuffleFunction : public torch::autograd::Function<ShuffleFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a,
                            const std::optional<at::Tensor>& b, int64_t groups, int64_t act,
                            bool cl) {
    ctx->saved_data["args"] = std::vector<int64_t>{a.size(1), groups, act, cl, b.has_value()};
    at::Tensor y = channel_shuffle_forward(a, b, std::nullopt, groups, act, cl);
    if (act != 0) ctx->save_for_backward({y});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto args = ctx->saved_data["args"].toIntVector();
    const int64_t split = args[0], groups = args[1], act = args[2];
    const bool cl = args[3] != 0, has_b = args[4] != 0;
    const at::Tensor y = act != 0 ? ctx->get_saved_variables()[0] : at::Tensor();
    at::Tensor g = grads[0];
    at::Tensor ga, gb;
    if (at::GradMode::is_enabled()) {
      // create_graph: ATen's differentiable ops (act' from the output, then the inverse
      // shuffle: the backward of a permutation is a permutation), so second derivatives stay
      // exact
      if (act == int64_t(Act::kReLU)) g = at::threshold_backward(g, y, 0);
      if (act == int64_t(Act::kReLU6)) g = at::hardtanh_backward(g, y, 0, 6);
      const at::Tensor gx = at::channel_shuffle(g, g.size(1) / groups);
      ga = gx.narrow(1, 0, split);
      gb = gx.narrow(1, split, g.size(1) - split);
    } else {
      const auto fmt = shuffle::mem_format(cl);
      std::tie(ga, gb) = channel_shuffle_backward(
          g.contiguous(fmt), act != 0 ? std::optional<at::Tensor>(y.contiguous(fmt)) : std::nullopt,
          split, groups, act, cl);
    }
    return {ga, has_b ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The keys a plain dense CPU tensor carries (an inference tensor has fewer).
const c10::DispatchKeySet kPlainKeys =
    c10::DispatchKeySet(c10::DispatchKey::CPU) |
    c10::getAutogradRelatedKeySetFromBackend(c10::BackendComponent::CPUBit) |
    c10::getAutocastRelatedKeySetFromBackend(c10::BackendComponent::CPUBit);

const at::Tensor* plain_cpu_tensor(PyObject* obj) {
  if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(obj);
  // (operator- keeps the backend bits: drop CPU's, has(CPU) checks it)
  if (!t.defined() ||
      !(t.key_set() - kPlainKeys).remove_backend(c10::BackendComponent::CPUBit).empty() ||
      !t.key_set().has(c10::DispatchKey::CPU) || t.layout() != at::kStrided || t.dim() != 4)
    return nullptr;
  const auto dt = t.scalar_type();
  if (dt != at::kFloat && dt != at::kHalf && dt != at::kBFloat16 && dt != at::kDouble)
    return nullptr;
  return &t;
}

// fastblocks/ops/shuffle.py _suggests_channels_last: ATen's suggest_memory_format rule, with a
// tensor contiguous in both formats counted as NCHW.
bool suggests_channels_last(const at::Tensor& t) {
  if (t.is_contiguous()) return false;
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) ||
         t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// ATen's CPU channel_shuffle on channels_last transposes each pixel's (groups, C / groups)
// block with fbgemm's SIMD transpose; where that is fast (fastblocks/ops/shuffle.py
// _fbgemm_transposes_fast, measured there) the auto backend leaves the shuffle to ATen.
bool fbgemm_transposes_fast(int64_t rows, int64_t cols) {
  return rows == 2 || cols == 2 || (rows % 8 == 0 && cols % 8 == 0);
}

// The auto backend's choice for a plain shuffle (no b, no activation), as measured in
// fastblocks/ops/shuffle.py (CPU policy): ATen's channel_shuffle for channels_last blocks
// fbgemm transposes fast, and for NCHW training from 2^18 elements (batch-32 ShuffleNet
// maps: both copy whole planes there, and ours ran 0.74-1.32x ATen's with its autograd,
// paired medians at load 7-8, no consistent winner);
// our kernels otherwise (NCHW inference, where both are a memcpy of H*W runs and this entry
// costs less than ATen's call; batch-1 NCHW training, where ATen's autograd costs more).
bool aten_serves(const at::Tensor& a, int64_t groups, bool cl, bool train) {
  if (cl) return fbgemm_transposes_fast(groups, a.size(1) / groups);
  return train && a.numel() >= (int64_t(1) << 18);
}

PyObject* shuffle_eager(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "shuffle_eager(a, b, groups, act, own) takes 5 arguments");
    return nullptr;
  }
  if (c10::impl::TorchDispatchModeTLS::any_modes_set() || at::impl::torch_function_mode_enabled() ||
      torch::jit::tracer::isTracing())
    Py_RETURN_NONE;
  const at::Tensor* a = plain_cpu_tensor(args[0]);
  const at::Tensor* b = args[1] == Py_None ? nullptr : plain_cpu_tensor(args[1]);
  if (a == nullptr || (args[1] != Py_None && b == nullptr) || !PyLong_CheckExact(args[2]) ||
      !PyLong_CheckExact(args[3]))
    Py_RETURN_NONE;
  const long groups = PyLong_AsLong(args[2]);
  const long act = PyLong_AsLong(args[3]);
  const bool own = args[4] == Py_True;
  if (PyErr_Occurred()) {  // an int beyond long
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  // activations whose derivative the output does not give take the Python path
  if (groups <= 0 || (act != int(Act::kNone) && act != int(Act::kReLU) && act != int(Act::kReLU6)))
    Py_RETURN_NONE;
  const bool train = at::GradMode::is_enabled() && (a->requires_grad() || (b && b->requires_grad()));
  const int64_t c = a->size(1) + (b ? b->size(1) : 0);
  if (c % groups) Py_RETURN_NONE;
  if (b && (b->scalar_type() != a->scalar_type() || b->size(0) != a->size(0) ||
            b->size(2) != a->size(2) || b->size(3) != a->size(3)))
    Py_RETURN_NONE;
  const bool cl = suggests_channels_last(*a) && (b == nullptr || suggests_channels_last(*b));
  if (!shuffle::reads_in_place(*a, cl) || (b && !shuffle::reads_in_place(*b, cl)))
    Py_RETURN_NONE;
  try {
    at::Tensor y;
    {
      // a batch-32 shuffle takes 0.1-1 ms: let other Python threads run meanwhile
      PyThreadState* state = PyEval_SaveThread();
      try {
        if (!own && b == nullptr && act == 0 && aten_serves(*a, groups, cl, train)) {
          y = at::channel_shuffle(*a, groups);  // with ATen's autograd when training
        } else if (train) {
          y = ShuffleFunction::apply(*a, b ? std::optional<at::Tensor>(*b) : std::nullopt, groups,
                                     act, cl);
        } else {
          y = channel_shuffle_forward(*a, b ? std::optional<at::Tensor>(*b) : std::nullopt,
                                      std::nullopt, groups, act, cl);
        }
      } catch (...) {
        PyEval_RestoreThread(state);
        throw;
      }
      PyEval_RestoreThread(state);
    }
    return THPVariable_Wrap(std::move(y));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyMethodDef kMethods[] = {
    {"shuffle_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(shuffle_eager)),
     METH_FASTCALL,
     "shuffle_eager(a, b, groups, act, own) -> Tensor | None: act(channel_shuffle(cat(a, b), "
     "groups)) for plain eager code on CPU tensors (b may be None; act 0, relu or relu6; own: "
     "always our kernels, else the auto policy); None where the Python path must run."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Called by PyInit__C (csrc/ops.cpp).
int add_shuffle_methods(PyObject* module) { return PyModule_AddFunctions(module, kMethods); }

}  // namespace fastblocks::cpu
