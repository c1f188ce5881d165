// Squeeze-and-excitation: the argument contract of the fastblocks_C squeeze_excite ops
// (schemas in csrc/ops.cpp) and the tiny MLP between the two passes over x, shared by the CPU
// kernels (csrc/cpu/squeeze_excite.cpp) and the CUDA bindings (csrc/cuda/squeeze_excite.cpp).
//
// The MLP works on (N, C) and (N, C_r) matrices in the accumulation type (float, double for
// fp64) through ATen's GEMM (MKL/oneDNN on CPU, cuBLAS on CUDA): at batch 256 with C = 960,
// C_r = 240 it is 2 x 59M multiply-adds, a GEMM library's job, while the passes over x are
// ours. Activation derivatives use ATen's own backward ops, so their kink conventions are
// eager's exactly.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <tuple>

#include "fastblocks/common.h"

namespace fastblocks::squeeze_excite {

// Gate codes; fastblocks/ops/squeeze_excite.py has the same numbers.
enum class Gate : int { kSigmoid = 0, kHardsigmoid = 1 };
constexpr int kNumGates = 2;

inline at::MemoryFormat mem_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " differs from x's ", x.scalar_type());
}

inline bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// x (N, C, H, W) contiguous in the format `channels_last` names, H*W >= 1; w1 (C_r, C),
// w2 (C, C_r), b1 (C_r,) and b2 (C,) or absent, contiguous, x's dtype and device. Returns C_r.
inline int64_t check_args(const char* op, const at::Tensor& x, const at::Tensor& w1,
                          const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                          const std::optional<at::Tensor>& b2, int64_t act, int64_t gate,
                          bool channels_last) {
  TORCH_CHECK(act >= 0 && act < kNumActs, op, ": unknown activation code ", act);
  TORCH_CHECK(gate >= 0 && gate < kNumGates, op, ": unknown gate code ", gate);
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-d (N, C, H, W), got ", x.dim(), "-d");
  TORCH_CHECK(x.is_contiguous(mem_format(channels_last)), op, ": x must be contiguous",
              channels_last ? " in channels_last" : " (NCHW)", " memory format");
  TORCH_CHECK(x.size(2) * x.size(3) >= 1, op, ": x must have H*W >= 1, got ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C && w1.size(0) >= 1, op,
              ": w1 must have shape (C_r, ", C, "), got ", w1.sizes());
  const int64_t R = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == R, op, ": w2 must have shape (",
              C, ", ", R, "), got ", w2.sizes());
  check_like(w1, x, op, "w1");
  check_like(w2, x, op, "w2");
  TORCH_CHECK(w1.is_contiguous() && w2.is_contiguous(), op, ": w1 and w2 must be contiguous");
  if (has(b1)) {
    TORCH_CHECK(b1->dim() == 1 && b1->size(0) == R, op, ": b1 must have shape (", R, ",), got ", b1->sizes());
    check_like(*b1, x, op, "b1");
  }
  if (has(b2)) {
    TORCH_CHECK(b2->dim() == 1 && b2->size(0) == C, op, ": b2 must have shape (", C, ",), got ", b2->sizes());
    check_like(*b2, x, op, "b2");
  }
  return R;
}

inline at::Tensor act_forward(const at::Tensor& z, int64_t act) {
  switch (static_cast<int>(act)) {
    case int(Act::kReLU): return at::relu(z);
    case int(Act::kReLU6): return at::hardtanh(z, 0.0, 6.0);
    case int(Act::kHardswish): return at::hardswish(z);
    case int(Act::kHardsigmoid): return at::hardsigmoid(z);
    case int(Act::kSiLU): return at::silu(z);
    default: return z;
  }
}

inline at::Tensor act_backward(const at::Tensor& g, const at::Tensor& z, int64_t act) {
  switch (static_cast<int>(act)) {
    case int(Act::kReLU): return at::threshold_backward(g, z, 0);
    case int(Act::kReLU6): return at::hardtanh_backward(g, z, 0.0, 6.0);
    case int(Act::kHardswish): return at::hardswish_backward(g, z);
    case int(Act::kHardsigmoid): return at::hardsigmoid_backward(g, z);
    case int(Act::kSiLU): return at::silu_backward(g, z);
    default: return g;
  }
}

// The MLP's intermediates, each (N, C_r) or (N, C) in the accumulation type.
struct Mlp {
  at::Tensor z1, h, z2, s;  // fc1 output, act(z1), fc2 output, gate(z2)
};

// t @ w^T (+ b), w converted to t's type (a copy of C x C_r elements for fp16/bf16).
inline at::Tensor fc(const at::Tensor& t, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  const at::Tensor wt = w.to(t.scalar_type()).t();
  return has(b) ? at::addmm(b->to(t.scalar_type()), t, wt) : at::mm(t, wt);
}

inline Mlp mlp_forward(const at::Tensor& pooled, const at::Tensor& w1,
                       const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                       const std::optional<at::Tensor>& b2, int64_t act, int64_t gate) {
  // the kernels' own math: no autocast (the plain eager path calls the kernels directly)
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  Mlp m;
  m.z1 = fc(pooled, w1, b1);
  m.h = act_forward(m.z1, act);
  m.z2 = fc(m.h, w2, b2);
  m.s = gate == int64_t(Gate::kSigmoid) ? at::sigmoid(m.z2) : at::hardsigmoid(m.z2);
  return m;
}

// From gs = sum over H, W of grad * x (N, C): the gradient of the pooled means (N, C, in the
// accumulation type) and of w1, b1, w2, b2 (in the weights' dtype).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_backward(
    const at::Tensor& gs, const at::Tensor& pooled, const Mlp& m, const at::Tensor& w1,
    const at::Tensor& w2, int64_t act, int64_t gate) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto acc = pooled.scalar_type();
  const at::Tensor gz2 = gate == int64_t(Gate::kSigmoid) ? at::sigmoid_backward(gs, m.s)
                                                         : at::hardsigmoid_backward(gs, m.z2);
  const at::Tensor gw2 = at::mm(gz2.t(), m.h);
  const at::Tensor gb2 = gz2.sum(0);
  const at::Tensor gz1 = act_backward(at::mm(gz2, w2.to(acc)), m.z1, act);
  const at::Tensor gw1 = at::mm(gz1.t(), pooled);
  const at::Tensor gb1 = gz1.sum(0);
  const at::Tensor gp = at::mm(gz1, w1.to(acc));
  const auto wt = w1.scalar_type();
  return {gp, gw1.to(wt), gb1.to(wt), gw2.to(wt), gb2.to(wt)};
}

}  // namespace fastblocks::squeeze_excite
